"""Disconnecting a user: POST /disconnect ends every connection of that user on every worker
(WebSocket 4001, SSE a last ``notifier.disconnect`` event without an id), leaves everyone
else alone, is for publishers only, and is never kept in history: a later resume is not
disconnected again. The Python client stops instead of reconnecting."""
from __future__ import annotations

import threading
import time

import jwt
import pytest
import requests

from clients import SSEClient, StreamClosed, WSClient, connect_until_spread, post_notify, publish, \
    sync_subscribers, unix_request

SECRET = "test-secret-that-is-long-enough-for-hs256"
KEY = "publisher-key-1"


def token(sub: str) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")


@pytest.fixture(scope="module", params=["memory", "redis-2-workers"])
def server(request, server_factory, redis_factory):
    env = {"NOTIFIER_SECRET": SECRET}
    if request.param == "memory":
        return server_factory(workers=1, env=env)
    return server_factory(workers=2, redis=redis_factory(), env=env)


def open_client(server, i: int, user: str | None, last_event_id: str | None = None):
    params = {"token": token(user)} if user else {}
    if last_event_id:
        params["last_event_id"] = last_event_id
    return WSClient(server.url, **params) if i % 2 == 0 else SSEClient(server.url, **params)


def assert_disconnected(client) -> None:
    if isinstance(client, WSClient):
        _, code = client.drain_until_closed(timeout=10)
        assert code == 4001, f"WebSocket closed with {code}"
        return
    while True:  # notifications still on their way may come first
        event = client.next_event(10)
        if event.event == "notifier.disconnect":
            break
        assert event.id is not None, f"unexpected event {event.event}"
    assert event.id is None, "a disconnect must not move the resume point"
    assert event.json["type"] == "notifier.disconnect" and event.json["message"]
    with pytest.raises(StreamClosed):
        client.next_event(10)


def test_disconnect_ends_every_connection_of_the_user_on_every_worker_and_no_others(server, closing):
    alice = connect_until_spread(server, lambda i: closing(open_client(server, i, "alice"))) \
        if server.workers > 1 else [closing(open_client(server, i, "alice")) for i in range(2)]
    others = [closing(open_client(server, i, user)) for i, user in enumerate(["bob", "bob", None, None])]
    sync_subscribers(server.url, alice + others)
    before = publish(server.url, user_id="alice", title="before")
    for c in alice:
        assert c.next_notification(10)["id"] == before

    started = time.monotonic()
    r = post_notify(server.url, {"user_id": "alice"}, path="/disconnect")
    assert (r.status, r.body) == (202, {}), r.text
    for c in alice:
        assert_disconnected(c)
    print(f"{len(alice)} connections of alice ended in {time.monotonic() - started:.3f}s")

    after = publish(server.url, title="everyone else carries on")
    for c in others:
        assert c.next_notification(10)["id"] == after

    # Not kept: resuming from before it replays the notifications, not the disconnect.
    again = [closing(open_client(server, i, "alice", last_event_id=before)) for i in range(2)]
    for c in again:
        assert c.next_notification(10)["id"] == after
    live = publish(server.url, user_id="alice", title="logged in again")
    for c in again:
        assert c.next_notification(10)["id"] == live
    history = requests.get(server.url + "/notifications", params={"token": token("alice")}, timeout=5).json()
    assert "notifier.disconnect" not in {n["type"] for n in history["notifications"]}


def test_disconnect_of_a_user_with_no_connections_is_accepted_and_harmless(server, closing):
    anyone = closing(open_client(server, 0, None))
    sync_subscribers(server.url, [anyone])
    assert post_notify(server.url, {"user_id": 42}, path="/disconnect").status == 202  # an int id, as publish takes
    live = publish(server.url, title="after")
    assert anyone.next_notification(10)["id"] == live


@pytest.mark.parametrize("body, mentions", [
    ({}, "user_id"),
    ({"user_id": "a", "title": "x"}, "user_id"),
    ([{"user_id": "a"}], "user_id"),
    ({"user_id": ""}, "1-128"),
    ({"user_id": ["a"]}, "string"),
    ({"user_id": True}, "string"),
])
def test_a_bad_body_is_a_400_with_a_json_error(server, body, mentions):
    r = post_notify(server.url, body, path="/disconnect")
    assert r.status == 400, r.text
    assert mentions in r.error


def test_a_body_that_is_not_json_is_refused(server):
    assert post_notify(server.url, raw=b"{nope", path="/disconnect").status == 400
    assert post_notify(server.url, raw=b'{"user_id": "a"}', content_type="text/plain", path="/disconnect").status == 415


@pytest.fixture(scope="module")
def keyed_server(short_tmp, server_factory):
    sock = short_tmp / "disconnect.sock"
    srv = server_factory(workers=1, bind=[f"unix:{sock}"], env={"NOTIFIER_API_KEYS": KEY, "NOTIFIER_SECRET": SECRET})
    srv.sock = str(sock)
    return srv


def test_only_publishers_may_disconnect(keyed_server, short_tmp, server_factory, closing):
    alice = closing(WSClient(keyed_server.url, token=token("alice")))
    sync_subscribers(keyed_server.url, [alice], headers={"Authorization": f"Bearer {KEY}"})
    assert post_notify(keyed_server.url, {"user_id": "alice"}, path="/disconnect").status == 401
    assert post_notify(keyed_server.url, {"user_id": "alice"}, path="/disconnect",
                       headers={"Authorization": "Bearer wrong"}).status == 403
    with pytest.raises(TimeoutError):
        alice.next_notification(0.5)  # still open
    r = post_notify(keyed_server.url, {"user_id": "alice"}, path="/disconnect", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status == 202, r.text
    assert alice.drain_until_closed(timeout=10)[1] == 4001
    # Without keys, only a loopback peer publishes: the unix socket stands in for any other peer.
    sock = short_tmp / "open-disconnect.sock"
    open_server = server_factory(workers=1, bind=[f"unix:{sock}"])
    r = unix_request(str(sock), "POST", "/disconnect", {"user_id": "alice"})
    assert r.status == 403, r.text


def test_the_python_client_stops_after_a_disconnect_instead_of_reconnecting(server):
    from notifier.client import subscribe

    got: list[dict] = []
    sub = subscribe(server.url, token=token("carol"), read_timeout=20, max_backoff=0.2)

    def follow():
        for notification in sub:
            got.append(notification)

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 15
        while not got:  # connected and following: a notification came through
            assert time.monotonic() < deadline, "the client never got a notification"
            publish(server.url, user_id="carol", title="hello")
            time.sleep(0.2)
        assert post_notify(server.url, {"user_id": "carol"}, path="/disconnect").status == 202
        reader.join(timeout=15)
        assert not reader.is_alive(), "the subscription did not end after the disconnect"
        assert got[-1]["type"] == "notifier.disconnect" and sub.reconnects == 0
    finally:
        sub.close()


def test_the_python_client_disconnects_and_asks_presence_over_http(server, closing):
    from notifier.client import ClientError, disconnect
    from notifier.client import presence as ask

    dave = [closing(open_client(server, i, "dave", last_event_id=None)) for i in range(2)]
    sync_subscribers(server.url, dave)
    deadline = time.monotonic() + 5
    while ask(user="dave", url=server.url)["connections"] != 2:
        assert time.monotonic() < deadline, ask(user="dave", url=server.url)
        time.sleep(0.05)
    assert ask("nothing-here", url=server.url) == {"topic": "nothing-here", "users": [], "connections": 0}
    disconnect("dave", url=server.url)
    for c in dave:
        assert_disconnected(c)
    with pytest.raises(ClientError) as bad:
        disconnect("", url=server.url)
    assert bad.value.status == 400
