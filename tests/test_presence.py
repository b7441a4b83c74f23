"""Who is online: presence per topic and per user across workers (Redis) and in one worker
(in-process), join/leave once per user, the WebSocket presence action, expiry after a
SIGKILLed worker, a rebuild after Redis restarted empty, and publisher-only access."""
from __future__ import annotations

import os
import signal
import time

import jwt
import pytest
import requests

from clients import SSEClient, WSClient, connect_until_spread, publish, sync_subscribers, wait_until

SECRET = "test-secret-that-is-long-enough-for-hs256"
TTL = 3
ENV = {"NOTIFIER_SECRET": SECRET, "NOTIFIER_PRESENCE_TTL": TTL, "NOTIFIER_PRESENCE_EVENTS": "room:*,lobby"}


def token(sub: str, topics=()) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")


@pytest.fixture(scope="module", params=["memory", "redis-2-workers"])
def server(request, server_factory, redis_factory):
    if request.param == "memory":
        return server_factory(workers=1, env=ENV)
    return server_factory(workers=2, redis=redis_factory(), env=ENV)


def client(server, i: int, user: str | None, topics):
    params = {"token": token(user)} if user else {}
    return WSClient(server.url, topics=topics, **params) if i % 2 == 0 else SSEClient(server.url, topics=topics,
                                                                                       **params)


def presence(server, **params) -> dict:
    r = requests.get(server.url + "/presence", params=params, timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


def settles(server, expected: dict, timeout: float = 2.0, **params) -> None:
    """GET /presence answers ``expected`` (as a subset) within ``timeout`` seconds."""
    wait_until(lambda: expected.items() <= presence(server, **params).items(), timeout,
               message=f"presence {params} == {expected} (last: {presence(server, **params)})")


def presence_events(ws: WSClient, until_title: str, timeout: float = 10.0) -> list[tuple[str, str]]:
    """(type, user) of the join/leave messages before the notification titled ``until_title``."""
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        msg = ws.recv_json(max(deadline - time.monotonic(), 0.001))
        if msg.get("title") == until_title:
            return seen
        if msg.get("type") in ("notifier.join", "notifier.leave"):
            assert "id" not in msg, "a presence event must carry no id"
            seen.append((msg["type"], msg["data"]["user_id"]))


def test_users_and_connections_are_right_across_workers_and_fresh_after_a_close(server, closing):
    if server.workers > 1:
        alice = connect_until_spread(server, lambda i: closing(client(server, i, "alice", ["room:1"])), limit=60)
    else:
        alice = [closing(client(server, i, "alice", ["room:1"])) for i in range(2)]
    others = [closing(client(server, 0, "bob", ["room:1", "news"])), closing(client(server, 1, None, ["room:1"])),
              closing(client(server, 0, None, ["news"])), closing(client(server, 1, "dave", ["news"]))]
    sync_subscribers(server.url, alice + others)
    # anonymous connections count on event topics (room:*), not on others (news)
    settles(server, {"users": ["alice", "bob"], "connections": len(alice) + 2}, topic="room:1")
    settles(server, {"users": ["bob", "dave"], "connections": 2}, topic="news")
    settles(server, {"online": True, "connections": len(alice)}, user_id="alice")
    assert presence(server, user_id="nobody") == {"user_id": "nobody", "online": False, "connections": 0}
    assert presence(server, topic="room:1", limit=1)["users"] == ["alice"]

    for c in alice[1:]:
        c.close()
    settles(server, {"users": ["alice", "bob"], "connections": 3}, timeout=1.5, topic="room:1")
    alice[0].close()
    started = time.monotonic()
    settles(server, {"users": ["bob"], "connections": 2}, timeout=1.5, topic="room:1")
    settles(server, {"online": False, "connections": 0}, timeout=1.5, user_id="alice")
    print(f"presence fresh {time.monotonic() - started:.3f}s after the last close")


def test_join_and_leave_go_once_per_user_and_not_for_a_second_tab(server, closing):
    watcher = closing(WSClient(server.url, topics=["room:2"]))  # anonymous: no events of its own
    sync_subscribers(server.url, [watcher])

    def mark(title: str) -> list[tuple[str, str]]:
        time.sleep(0.3)  # presence changes go out within ~20 ms; the marker comes after them
        publish(server.url, topic="room:2", title=title)
        return presence_events(watcher, title)

    first = closing(client(server, 0, "alice", ["room:2"]))
    sync_subscribers(server.url, [first])
    assert mark("after the first tab") == [("notifier.join", "alice")]
    second = closing(client(server, 1, "alice", ["room:2"]))
    sync_subscribers(server.url, [second])
    assert mark("after the second tab") == []
    first.close()
    assert mark("after closing the first tab") == []
    second.close()
    assert mark("after closing the second tab") == [("notifier.leave", "alice")]
    # not kept: history holds the markers and nothing of presence
    history = requests.get(server.url + "/notifications", params={"topic": "room:2"}, timeout=5).json()
    assert not {n["type"] for n in history["notifications"]} & {"notifier.join", "notifier.leave"}


def test_a_topic_without_events_sends_none(server, closing):
    watcher = closing(WSClient(server.url, topics=["quiet"]))
    sync_subscribers(server.url, [watcher])
    alice = closing(client(server, 0, "alice", ["quiet"]))
    sync_subscribers(server.url, [alice])
    alice.close()
    time.sleep(0.3)
    publish(server.url, topic="quiet", title="marker")
    assert presence_events(watcher, "marker") == []


def test_the_websocket_presence_action_answers_with_the_current_users(server, closing):
    alice = closing(WSClient(server.url, topics=["room:3", "news"], token=token("alice")))
    bob = closing(client(server, 1, "bob", ["room:3"]))
    sync_subscribers(server.url, [alice, bob])
    settles(server, {"users": ["alice", "bob"]}, topic="room:3")
    alice.send_json({"action": "presence", "topic": "room:3"})
    answer = alice.recv_json(5)
    while "ack" not in answer and "error" not in answer:  # a presence event may come first
        answer = alice.recv_json(5)
    assert answer == {"ack": "presence", "topic": "room:3", "users": ["alice", "bob"], "connections": 2}
    for topic, says in [("room:4", "not subscribed"), ("news", "NOTIFIER_PRESENCE_EVENTS")]:
        alice.send_json({"action": "presence", "topic": topic})
        answer = alice.recv_json(5)
        while "ack" not in answer and "error" not in answer:
            answer = alice.recv_json(5)
        assert says in answer.get("error", ""), answer


@pytest.mark.parametrize("query", [{}, {"topic": "a", "user_id": "b"}, {"topic": "bad topic"},
                                   {"topic": "a", "limit": "0"}, {"topic": "a", "limit": "x"}, {"topic": "a", "limit": "²"},
                                   {"user_id": ""}])
def test_a_bad_query_is_a_400(server, query):
    r = requests.get(server.url + "/presence", params=query, timeout=5)
    assert r.status_code == 400 and r.json()["error"], r.text


def test_presence_is_for_publishers_only(server_factory):
    keyed = server_factory(workers=1, env={**ENV, "NOTIFIER_API_KEYS": "k1"})
    assert requests.get(keyed.url + "/presence", params={"topic": "a"}, timeout=5).status_code == 401
    r = requests.get(keyed.url + "/presence", params={"topic": "a"}, headers={"Authorization": "Bearer nope"},
                     timeout=5)
    assert r.status_code == 403
    r = requests.get(keyed.url + "/presence", params={"topic": "a"}, headers={"Authorization": "Bearer k1"},
                     timeout=5)
    assert r.json() == {"topic": "a", "users": [], "connections": 0}


def test_python_api_presence_and_online(server_factory, redis_factory, closing):
    app = server_factory(app="tests.apps.presence_app:app", workers=2, redis=redis_factory(), env=ENV)
    alice = connect_until_spread(app, lambda i: closing(client(app, i, "alice", ["room:9"])), limit=60)
    sync_subscribers(app.url, alice)

    def asked():
        return (requests.get(app.url + "/who/room:9", timeout=5).json(),
                requests.get(app.url + "/online/alice", timeout=5).json())

    wait_until(lambda: asked() == ({"topic": "room:9", "users": ["alice"], "connections": len(alice)},
                                   {"connections": len(alice)}), 2.0, message=f"python api: {asked()}")


def test_a_sigkilled_workers_users_leave_within_the_ttl(notifier_server, redis_server, closing):
    server = notifier_server(workers=2, redis=redis_server, env=ENV)
    clients = connect_until_spread(server, lambda i: closing(client(server, i, f"user{i}", ["room:5"])), limit=60)
    sync_subscribers(server.url, clients)
    owners = server.worker_of_ports()
    victim = owners[clients[0].local_port]
    gone = sorted(f"user{i}" for i, c in enumerate(clients) if owners.get(c.local_port) == victim)
    kept = sorted(f"user{i}" for i, c in enumerate(clients) if owners.get(c.local_port) != victim)
    watchers = connect_until_spread(server, lambda i: closing(WSClient(server.url, topics=["room:5"])), limit=60)
    watcher = next(w for w in watchers if server.worker_of_ports().get(w.local_port) != victim)
    sync_subscribers(server.url, watchers)
    settles(server, {"users": sorted(gone + kept)}, topic="room:5")
    os.kill(victim, signal.SIGKILL)
    started = time.monotonic()
    settles(server, {"users": kept}, timeout=TTL + 1.5, topic="room:5")
    print(f"a SIGKILLed worker's users left presence {time.monotonic() - started:.2f}s after (TTL {TTL}s)")
    time.sleep(TTL / 3 + 0.5)  # the sweep that sends their leaves runs every third of the TTL
    publish(server.url, topic="room:5", title="after the kill")
    left = [user for kind, user in presence_events(watcher, "after the kill") if kind == "notifier.leave"]
    assert sorted(left) == gone


def test_presence_comes_back_within_a_ttl_after_redis_restarted_empty(notifier_server, redis_server, closing):
    """Redis lost everything; the connection lives on (nothing was published, so there is
    no history to lose and no reason to close it), and the worker's refresh puts it back."""
    server = notifier_server(workers=1, redis=redis_server, env=ENV)
    alice = closing(WSClient(server.url, topics=["plain"], token=token("alice")))  # no events: nothing in the stream
    settles(server, {"users": ["alice"]}, topic="plain")
    redis_server.stop()
    redis_server.start()
    assert presence(server, topic="plain")["users"] == []
    started = time.monotonic()
    settles(server, {"users": ["alice"], "connections": 1}, timeout=TTL + 1, topic="plain")
    settles(server, {"online": True, "connections": 1}, timeout=1, user_id="alice")
    print(f"presence rebuilt {time.monotonic() - started:.2f}s after Redis came back (TTL {TTL}s)")
    live = publish(server.url, user_id="alice", title="still connected")
    assert alice.next_notification(5)["id"] == live
