"""One worker, no Redis (the embedded in-process broker): the subscriber contract."""

from __future__ import annotations

import json
import re
import select
import socket
import time

import pytest
import requests
import websocket

from clients import SSEClient, WSClient, publish, sync_subscribers

HEARTBEAT = 1


@pytest.fixture(scope="module")
def server(server_factory):
    return server_factory(workers=1, env={"NOTIFIER_HEARTBEAT": HEARTBEAT})


def assert_next_is(client, expected_id, timeout=5.0):
    msg = client.next_notification(timeout)
    assert msg["id"] == expected_id, f"expected notification {expected_id}, got {msg!r}"
    return msg


# -- operations -----------------------------------------------------------------------------

def test_healthz_reports_ok_and_worker_pid(server):
    r = requests.get(server.url + "/healthz", timeout=5)
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert body["pid"] in server.worker_pids()


def test_readyz_is_200_with_the_in_process_broker(server):
    r = requests.get(server.url + "/readyz", timeout=5)
    assert r.status_code == 200


# -- broadcast ------------------------------------------------------------------------------

def test_broadcast_reaches_websocket_and_sse_subscribers(server, closing):
    ws = closing(WSClient(server.url))
    sse = closing(SSEClient(server.url))
    assert sse.status == 200
    sync_subscribers(server.url, [ws, sse])

    nid = publish(server.url, title="Hello", message="world", data={"n": 1})
    for client in (ws, sse):
        msg = assert_next_is(client, nid)
        assert msg["type"] == "notification"
        assert msg["title"] == "Hello"
        assert msg["message"] == "world"
        assert msg["data"] == {"n": 1}
        assert "user_id" not in msg and "topic" not in msg
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|\+00:00)", msg["ts"]), msg["ts"]


def test_notifications_arrive_in_publish_order_with_increasing_ids(server, closing):
    ws = closing(WSClient(server.url))
    sse = closing(SSEClient(server.url))
    sync_subscribers(server.url, [ws, sse])
    # more than 10, so a non-fixed-width id ("...-10" < "...-9") would show
    ids = [publish(server.url, title=f"n{i}") for i in range(25)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), f"ids do not sort in publish order: {ids}"
    for client in (ws, sse):
        got = client.notifications(len(ids), timeout=10)
        assert [m["id"] for m in got] == ids
        assert [m["title"] for m in got] == [f"n{i}" for i in range(25)]


# -- topics ---------------------------------------------------------------------------------

def test_topic_notification_reaches_only_its_subscribers(server, closing):
    ws_in = closing(WSClient(server.url, topics=["orders"]))
    sse_in = closing(SSEClient(server.url, topics=["orders", "other"]))
    ws_out = closing(WSClient(server.url, topics=["other"]))
    sse_out = closing(SSEClient(server.url))
    everyone = [ws_in, sse_in, ws_out, sse_out]
    sync_subscribers(server.url, everyone)

    topic_id = publish(server.url, topic="orders", title="order 1")
    sentinel = publish(server.url, title="after")  # a broadcast everyone gets next

    for client in (ws_in, sse_in):
        msg = assert_next_is(client, topic_id)
        assert msg["topic"] == "orders"
        assert_next_is(client, sentinel)
    for client in (ws_out, sse_out):
        # anything but the sentinel first means the topic notification leaked
        assert_next_is(client, sentinel)


def test_websocket_subscribe_and_unsubscribe_actions_are_acknowledged(server, closing):
    ws = closing(WSClient(server.url))
    sync_subscribers(server.url, [ws])

    ws.send_json({"action": "subscribe", "topic": "news"})
    assert ws.recv_json(5) == {"ack": "subscribe", "topic": "news"}
    nid = publish(server.url, topic="news", title="subscribed")
    assert assert_next_is(ws, nid)["topic"] == "news"

    ws.send_json({"action": "unsubscribe", "topic": "news"})
    assert ws.recv_json(5) == {"ack": "unsubscribe", "topic": "news"}
    publish(server.url, topic="news", title="after unsubscribe")
    sentinel = publish(server.url, title="sentinel")
    assert_next_is(ws, sentinel)


def test_sse_subscription_by_query_topic_is_independent_per_connection(server, closing):
    a = closing(SSEClient(server.url, topics=["a"]))
    b = closing(SSEClient(server.url, topics=["b"]))
    sync_subscribers(server.url, [a, b])
    id_a = publish(server.url, topic="a", title="for a")
    id_b = publish(server.url, topic="b", title="for b")
    assert_next_is(a, id_a)
    assert_next_is(b, id_b)


@pytest.mark.parametrize("bad", [
    "not json at all",
    "[1, 2]",
    '"subscribe"',
    '{"action": "dance", "topic": "x"}',
    '{"action": "subscribe"}',
    '{"action": "subscribe", "topic": 5}',
    '{"action": "subscribe", "topic": "bad topic!"}',
])
def test_invalid_websocket_message_gets_an_error_and_the_connection_keeps_working(server, closing, bad):
    ws = closing(WSClient(server.url))
    sync_subscribers(server.url, [ws])
    ws.send_text(bad)
    reply = ws.recv_json(5)
    assert set(reply) == {"error"} and isinstance(reply["error"], str) and reply["error"], reply

    # still subscribed to broadcasts, and still taking actions
    nid = publish(server.url, title="still here")
    assert_next_is(ws, nid)
    ws.send_json({"action": "subscribe", "topic": "later"})
    assert ws.recv_json(5) == {"ack": "subscribe", "topic": "later"}


def test_private_topic_is_refused_before_any_stream_starts(server, closing):
    r = requests.get(server.url + "/events", params={"topic": "private-ops"}, timeout=5, stream=True)
    try:
        assert r.status_code == 403
        assert "text/event-stream" not in r.headers.get("Content-Type", "")
        assert isinstance(r.json().get("error"), str)
    finally:
        r.close()

    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        closing(WSClient(server.url, topics=["private-ops"]))
    assert info.value.status_code == 403


def test_websocket_subscribe_action_to_private_topic_is_refused(server, closing):
    ws = closing(WSClient(server.url))
    sync_subscribers(server.url, [ws])
    ws.send_json({"action": "subscribe", "topic": "private-ops"})
    reply = ws.recv_json(5)
    assert "error" in reply and "ack" not in reply, reply
    publish(server.url, topic="private-ops", title="secret")
    sentinel = publish(server.url, title="sentinel")
    assert_next_is(ws, sentinel)


# -- SSE framing and heartbeats -------------------------------------------------------------

def test_sse_response_headers_and_retry_first(server, closing):
    sse = closing(SSEClient(server.url))
    assert sse.status == 200
    assert sse.headers["content-type"].split(";")[0].strip() == "text/event-stream"
    assert "no-cache" in sse.headers.get("cache-control", "")
    assert sse.headers.get("x-accel-buffering") == "no"
    first = sse.wait_first_line(5)
    assert re.fullmatch(r"retry: ?\d+", first), f"stream must start with retry:, got {first!r}"
    assert sse.retry is not None and sse.retry > 0


def test_sse_frame_is_id_event_data(server, closing):
    sse = closing(SSEClient(server.url))
    sync_subscribers(server.url, [sse])
    start = len(sse.lines)
    nid = publish(server.url, type="order.shipped", title="Shipped")
    ev = sse.next_event(5)
    assert ev.id == nid and ev.event == "order.shipped"
    assert ev.json["id"] == nid and ev.json["type"] == "order.shipped"
    # the frame, line by line: id, event, one data line, blank line
    frame = [line for line in sse.lines[start:] if not line.startswith(":")]
    assert frame[:4] == [f"id: {nid}", "event: order.shipped", f"data: {ev.data}", ""], frame


def test_sse_sends_keepalive_comments_every_heartbeat(server, closing):
    sse = closing(SSEClient(server.url))
    sse.wait_first_line(5)
    sse.wait_comment("keepalive", timeout=HEARTBEAT * 3 + 1)
    sse.wait_comment("keepalive", timeout=HEARTBEAT * 3 + 1)


def test_websocket_gets_pings_every_heartbeat(server, closing):
    ws = closing(WSClient(server.url))
    ws.wait_ping(timeout=HEARTBEAT * 3 + 1)
    ws.wait_ping(timeout=HEARTBEAT * 3 + 1)


def test_closed_subscribers_do_not_break_delivery_to_others(server, closing):
    gone = [WSClient(server.url) for _ in range(3)] + [SSEClient(server.url) for _ in range(3)]
    stay_ws = closing(WSClient(server.url))
    stay_sse = closing(SSEClient(server.url))
    sync_subscribers(server.url, gone + [stay_ws, stay_sse])
    for c in gone:
        c.close()
    ids = [publish(server.url, title=f"x{i}") for i in range(5)]
    for c in (stay_ws, stay_sse):
        assert [m["id"] for m in c.notifications(5, timeout=10)] == ids


def test_wire_json_never_carries_a_character_that_splits_lines(server):
    """U+2028, U+2029 and U+0085 (and the control characters JSON escapes anyway) go out as
    \\uXXXX escapes: a client that splits lines like str.splitlines() reads one line each."""
    tricky = "a\u2028b\u2029c\u0085d\x0be\x0cf\x1cg\x1dh\x1ei"
    host, port = server.url.rsplit("/", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        raw = b""
        while b"retry:" not in raw:
            raw += sock.recv(65536)
        notification_id = publish(server.url, title=tricky, message="m", data={"k": tricky})
        while notification_id.encode() not in raw or raw.count(b"\n\n") < 2:
            raw += sock.recv(65536)
    data = next(line for line in raw.decode("utf-8").split("\n") if line.startswith("data: "))
    assert len(data.splitlines()) == 1
    assert not any(ch in data for ch in "\u2028\u2029\u0085\x0b\x0c\x1c\x1d\x1e")
    body = json.loads(data[len("data: "):])
    assert body["title"] == tricky and body["data"] == {"k": tricky}
    history = requests.get(server.url + "/notifications", timeout=5).text
    assert len(history.splitlines()) == 1


def test_keepalives_after_a_broadcast_are_spread_not_all_at_once(server):
    """A broadcast wakes every connection at once; their next keepalives must not then fall
    in the same instant (10,000 of them together stall a worker): the idle wait is jittered."""
    socks = []
    try:
        for _ in range(20):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            s.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
            socks.append(s)
        nid = publish(server.url, title="wake everyone")
        for s in socks:  # read up to the broadcast: from here each connection is idle
            buf = b""
            while nid.encode() not in buf:
                chunk = s.recv(65536)
                assert chunk, "stream ended"
                buf += chunk
        woke = time.monotonic()
        arrived: dict[socket.socket, float] = {}
        deadline = woke + HEARTBEAT * 3
        while len(arrived) < len(socks) and time.monotonic() < deadline:
            ready, _, _ = select.select([s for s in socks if s not in arrived], [], [], 0.5)
            for s in ready:
                if b"keepalive" in s.recv(65536):
                    arrived[s] = time.monotonic() - woke
        assert len(arrived) == len(socks), f"{len(socks) - len(arrived)} got no keepalive in {HEARTBEAT * 3}s"
        times = sorted(arrived.values())
        assert times[-1] <= HEARTBEAT + 0.5
        assert times[-1] - times[0] >= 0.05, f"keepalives all within {times[-1] - times[0]:.3f}s: {times}"
    finally:
        for s in socks:
            s.close()
