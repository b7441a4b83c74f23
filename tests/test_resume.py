"""Never lose a notification: resume from a last event id, on both transports and brokers."""
from __future__ import annotations

import signal
import threading
import time

import pytest
import requests
import websocket

from clients import SSEClient, StreamClosed, WSClient, publish, sync_subscribers

RESET = "notifier.reset"


def connect(server, transport: str, last_id: str | None = None, topics=()):
    """A subscriber resuming after ``last_id`` the way each transport's clients do it."""
    if transport == "ws":
        return WSClient(server.url, topics=topics, last_event_id=last_id)
    if transport == "sse-header":  # what a browser's EventSource sends on reconnect
        return SSEClient(server.url, topics=topics, headers={"Last-Event-ID": last_id} if last_id else None)
    return SSEClient(server.url, topics=topics, last_event_id=last_id)


@pytest.fixture(params=["memory", "redis"])
def server(request, notifier_server, tmp_path):
    if request.param == "memory":
        yield notifier_server(workers=1)
        return
    from conftest import RedisServer

    redis = RedisServer(tmp_path / "redis")
    redis.start()
    try:
        yield notifier_server(workers=2, redis=redis)
    finally:
        redis.stop()


@pytest.mark.parametrize("transport", ["ws", "sse-header", "sse-query"])
def test_resume_gets_exactly_the_missed_notifications_in_order_then_live(server, transport, closing):
    first = closing(connect(server, transport))
    sync_subscribers(server.url, [first])
    seen = [publish(server.url, title=f"n{i}") for i in range(1, 6)]
    assert [m["id"] for m in first.notifications(5)] == seen
    first.close()

    missed = [publish(server.url, title=f"n{i}") for i in range(6, 11)]
    again = closing(connect(server, transport, last_id=seen[-1]))
    got = again.notifications(5)
    assert [m["id"] for m in got] == missed
    assert [m["title"] for m in got] == [f"n{i}" for i in range(6, 11)]

    live = publish(server.url, title="n11")
    assert again.next_notification(5)["id"] == live  # no duplicate of 6..10 before it


@pytest.mark.parametrize("transport", ["ws", "sse-query"])
def test_an_id_not_in_history_gets_a_reset_then_what_history_holds_after_it_then_live(server, transport, closing):
    kept = publish(server.url, title="something in history")
    client = closing(connect(server, transport, last_id="0000000000001-000000"))
    reset = client.next_notification(5)
    assert reset["type"] == RESET
    assert reset["data"] == {"last_event_id": "0000000000001-000000"}
    assert reset["id"] == "0000000000001-000000"  # the resume point, just before what follows
    replayed = [n["id"] for n in client.notifications(len(history_ids(server)), timeout=10)]
    assert kept in replayed and replayed == sorted(replayed)
    live = publish(server.url, title="after the reset")
    assert client.next_notification(5)["id"] == live


def history_ids(server) -> list[str]:
    return [n["id"] for n in requests.get(server.url + "/notifications?limit=1000", timeout=5).json()["notifications"]]


def test_resume_replays_only_what_the_connection_is_entitled_to(server, closing):
    mine = publish(server.url, title="start")
    published = {
        "orders": publish(server.url, title="o", topic="orders"),
        "news": publish(server.url, title="n", topic="news"),
        "alice": publish(server.url, title="a", user_id="alice"),
        "all": publish(server.url, title="b"),
    }
    client = closing(connect(server, "ws", last_id=mine, topics=["orders"]))
    got = [m["id"] for m in client.notifications(2)]
    assert got == [published["orders"], published["all"]]
    sentinel = publish(server.url, title="sentinel")
    assert client.next_notification(5)["id"] == sentinel


@pytest.mark.parametrize("last_id", ["42", "x", "1700000000000-0", "9999999999999-999999", "ü" * 300])
def test_any_id_that_cannot_be_resumed_gets_a_reset_and_the_stream_goes_on(server, closing, last_id):
    """Malformed, another id format, ahead of history: never a 4xx, which a browser's
    EventSource takes as the end for good."""
    ws = closing(WSClient(server.url, last_event_id=last_id))
    sse = closing(SSEClient(server.url, headers={"Last-Event-ID": last_id.encode("utf-8").decode("latin-1")}))
    assert sse.status == 200
    for client in (ws, sse):
        reset = client.next_notification(5)
        assert reset["type"] == RESET and len(reset["data"]["last_event_id"]) <= 256
    live = publish(server.url, title="after the reset")
    for client in (ws, sse):
        assert client.next_notification(5)["id"] == live
    assert requests.get(server.url + "/notifications?since=42", timeout=5).status_code == 400  # polling keeps it


def test_history_is_capped_by_size_and_by_ttl(notifier_server, closing):
    server = notifier_server(workers=1, env={"NOTIFIER_HISTORY_SIZE": 5, "NOTIFIER_HISTORY_TTL": 1})
    ids = [publish(server.url, title=f"n{i}") for i in range(10)]
    trimmed = closing(connect(server, "ws", last_id=ids[2]))
    assert trimmed.next_notification(5)["type"] == RESET
    kept = closing(connect(server, "ws", last_id=ids[6]))
    assert [m["id"] for m in kept.notifications(3)] == ids[7:]
    time.sleep(1.2)
    expired = closing(connect(server, "sse-query", last_id=ids[9]))
    assert expired.next_notification(5)["type"] == RESET


def test_notifications_endpoint_pages_through_history_with_the_same_rules(server):
    start = publish(server.url, title="start")
    ids = [publish(server.url, title=f"n{i}", **({"topic": "orders"} if i % 2 else {})) for i in range(6)]
    broadcast_ids = ids[0::2]

    def get(**params):
        r = requests.get(server.url + "/notifications", params=params, timeout=5)
        assert r.status_code == 200, r.text
        return r.json()

    page = get(since=start, limit=2)
    assert page["reset"] is False and page["more"] is True
    first_batch = [n["id"] for n in page["notifications"]]
    rest = get(since=ids[-1])
    assert rest == {"notifications": [], "reset": False, "more": False}
    everything = get(since=start, limit=1000)["notifications"]
    assert [n["id"] for n in everything][-3:] == broadcast_ids
    assert first_batch == [n["id"] for n in everything][:2]
    with_topic = [n["id"] for n in get(since=ids[0], topic="orders")["notifications"]]
    assert with_topic == ids[1:]
    latest = get(limit=2)["notifications"]
    assert [n["id"] for n in latest] == broadcast_ids[-2:]
    assert get(since="0000000000001-000000")["reset"] is True
    for bad in ({"limit": "0"}, {"limit": "x"}, {"limit": "1001"}, {"since": "nope"}, {"topic": "a b"}):
        r = requests.get(server.url + "/notifications", params=bad, timeout=5)
        assert r.status_code == 400 and isinstance(r.json()["error"], str), (bad, r.text)
    r = requests.get(server.url + "/notifications", params={"topic": "private-ops"}, timeout=5)
    assert r.status_code == 403


def test_handover_between_replay_and_live_has_no_gap_and_no_duplicate(notifier_server, redis_server, closing):
    """Publish continuously while clients connect with resume points."""
    server = notifier_server(workers=2, redis=redis_server)
    total = 300
    ids: list[str] = []
    done = threading.Event()

    def publisher():
        with requests.Session() as s:
            for i in range(total):
                r = s.post(server.url + "/notify", json={"title": f"n{i}"}, timeout=10)
                assert r.status_code == 202, r.text
                ids.append(r.json()["id"])
                time.sleep(0.004)
        done.set()

    thread = threading.Thread(target=publisher, daemon=True)
    thread.start()
    clients = []
    for k in range(12):
        while len(ids) < 20 + k * 15:
            assert thread.is_alive() or done.is_set()
            time.sleep(0.005)
        resume_from = ids[-10]  # a little behind the head: replay and live overlap
        transport = ["ws", "sse-query", "sse-header"][k % 3]
        clients.append((resume_from, transport, closing(connect(server, transport, last_id=resume_from))))
    thread.join(timeout=60)
    assert done.is_set(), "publisher did not finish"
    for resume_from, transport, client in clients:
        expected = ids[ids.index(resume_from) + 1:]
        got = [m["id"] for m in client.notifications(len(expected), timeout=20)]
        assert got == expected, f"{transport} from {resume_from}: gap or duplicate at the hand-over"
        with pytest.raises(TimeoutError):
            client.next_notification(0.3)  # and nothing after the last one


def test_redis_restarted_empty_makes_resuming_clients_reset(notifier_server, redis_server, closing):
    server = notifier_server(workers=1, redis=redis_server)
    client = closing(connect(server, "ws"))
    sync_subscribers(server.url, [client])
    last = publish(server.url, title="before")
    assert client.next_notification(5)["id"] == last
    redis_server.stop()
    redis_server.start()  # no persistence: history is gone
    # The worker's follower finds its place gone and asks every connection to resume (1012).
    _, code = client.drain_until_closed(timeout=15)
    assert code == 1012
    accepted = [publish(server.url, title=f"after the restart {i}") for i in range(5)]  # before it reconnects
    again = closing(connect(server, "ws", last_id=last))
    reset = again.next_notification(10)
    assert reset["type"] == RESET
    # everything accepted after the restart, in order, once — nothing skipped by the reset
    assert [n["id"] for n in again.notifications(5, timeout=10)] == accepted
    live = publish(server.url, title="live")
    assert again.next_notification(5)["id"] == live


def test_a_connection_resumed_after_redis_came_back_is_not_closed_by_the_gap(notifier_server, redis_server,
                                                                               closing):
    """A worker's follower finds the lost history only when its backoff ends. A client that
    resumed on that worker meanwhile read history as it is now: the gap closes only the
    connections attached before the follower lost Redis. (With 2 workers, each finds the
    gap on its own, and a client closed by one that resumed on the other was closed twice.)"""
    server = notifier_server(workers=1, redis=redis_server)
    old = closing(connect(server, "ws"))
    sync_subscribers(server.url, [old])
    last = publish(server.url, title="before")
    assert old.next_notification(5)["id"] == last
    for _attempt in range(3):  # a slow resume can miss the window; bounded retries
        seen = server.log.read_text().count("retrying in 1.0s")
        redis_server.stop()
        deadline = time.monotonic() + 20
        while server.log.read_text().count("retrying in 1.0s") == seen:  # it now looks again in 1 s
            assert time.monotonic() < deadline, "the follower never backed off to 1 s"
            time.sleep(0.02)
        backed_off = time.monotonic()
        redis_server.start()  # empty: history is gone
        new = closing(connect(server, "ws", last_id=last))
        assert new.next_notification(10)["type"] == RESET
        if time.monotonic() - backed_off < 0.8:  # resumed before the follower looked again
            break
        new.close()
    else:
        pytest.fail("could not resume within the follower's backoff in 3 attempts")
    _, code = old.drain_until_closed(timeout=15)  # the gap, found after the resume
    assert code == 1012
    for i in range(2):  # the resumed one carries on, before and after the gap was handled
        live = publish(server.url, title=f"live {i}")
        assert new.next_notification(5)["id"] == live


def test_redis_restarted_with_its_data_resumes_without_reset(notifier_server, redis_factory, closing):
    redis = redis_factory(persist=True)
    server = notifier_server(workers=1, redis=redis)
    client = closing(connect(server, "sse-query"))
    sync_subscribers(server.url, [client])
    seen = publish(server.url, title="before")
    assert client.next_notification(5)["id"] == seen
    redis.stop()
    redis.start()
    deadline = time.monotonic() + 20
    after = None
    while after is None:
        assert time.monotonic() < deadline, "publishing did not come back after Redis restarted"
        r = requests.post(server.url + "/notify", json={"title": "after"}, timeout=5)
        after = r.json()["id"] if r.status_code == 202 else time.sleep(0.1)
    assert after > seen  # ids continue
    assert client.next_notification(10)["id"] == after  # the same connection, no reset
    again = closing(connect(server, "ws", last_id=seen))
    assert again.next_notification(5)["id"] == after


def test_after_sigterm_clients_resume_on_another_server_without_loss(notifier_server, redis_server, closing):
    a = notifier_server(workers=1, redis=redis_server)
    b = notifier_server(workers=1, redis=redis_server)
    ws, sse = closing(connect(a, "ws")), closing(connect(a, "sse-query"))
    sync_subscribers(a.url, [ws, sse])
    seen = publish(a.url, title="seen")
    last = {c: c.next_notification(5)["id"] for c in (ws, sse)}
    assert set(last.values()) == {seen}
    a.proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    _, code = ws.drain_until_closed(timeout=10)
    sse.drain_until_closed(timeout=10)
    closed_in = time.monotonic() - t0
    assert code == 1001 and closed_in < 5
    missed = [publish(b.url, title=f"while away {i}") for i in range(3)]
    for transport in ("ws", "sse-header"):
        again = closing(connect(b, transport, last_id=seen))
        assert [m["id"] for m in again.notifications(3)] == missed
    print(f"connections closed {closed_in * 1000:.0f} ms after SIGTERM")


def test_a_cut_slow_client_gets_everything_on_resume(notifier_server, closing):
    server = notifier_server(workers=1, env={"NOTIFIER_QUEUE_SIZE": 8})
    slow = closing(WSClient(server.url, rcvbuf=4096))
    sync_subscribers(server.url, [slow])
    ids = [publish(server.url, title=f"n{i}", message="x" * 32768) for i in range(200)]
    got, code = slow.drain_until_closed(timeout=20)
    got = [m["id"] for m in got if m.get("type") != "test.sync"]
    assert code in (1013, None) and len(got) < len(ids)
    assert got == ids[: len(got)]
    again = closing(WSClient(server.url, last_event_id=got[-1] if got else None))
    rest = [m["id"] for m in again.notifications(len(ids) - len(got), timeout=30)]
    assert got + rest == ids
