"""Inputs and situations found by review: each once answered badly, now answered right."""
from __future__ import annotations

import socket
import threading
import time

import pytest
import requests
import websocket

from clients import SSEClient, StreamClosed, WSClient, post_notify, publish, sync_subscribers


@pytest.fixture(scope="module")
def server(server_factory):
    return server_factory(workers=1)


@pytest.mark.parametrize("raw", [b'{"title":"x","data":{"v":1e400}}', b'{"title":"\\ud800"}', b'{"title":"x","data":{"v":NaN}}'])
def test_values_json_cannot_carry_are_refused_and_never_reach_history(server, raw):
    r = post_notify(server.url, raw=raw)
    assert r.status == 400 and isinstance(r.error, str)
    body = requests.get(server.url + "/notifications", timeout=5).json()  # history stays valid JSON
    assert all(n["title"] != "x" or "data" not in n for n in body["notifications"])


def test_odd_digits_in_limit_and_ids_are_400_not_500(server):
    for params in ({"limit": "²"}, {"since": "١٧٩٥٦٩٥٠٠٣٠٣٨-000000"}):
        r = requests.get(server.url + "/notifications", params=params, timeout=5)
        assert r.status_code == 400 and "error" in r.json()


def test_routing_errors_are_json(server):
    for method, path, status in [("GET", "/notify", 405), ("POST", "/events", 405), ("GET", "/nowhere", 404)]:
        r = requests.request(method, server.url + path, timeout=5)
        assert r.status_code == status and isinstance(r.json()["error"], str)


@pytest.mark.parametrize("headers", [{}, {"Sec-WebSocket-Key": "abc", "Sec-WebSocket-Version": "8"}])
def test_a_malformed_websocket_handshake_gets_a_json_400(server, headers):
    r = requests.get(server.url + "/ws", timeout=5,
                     headers={"Upgrade": "websocket", "Connection": "Upgrade", **headers})
    assert r.status_code == 400 and "handshake" in r.json()["error"]


def test_websocket_resumes_from_the_last_event_id_header(server, closing):
    ids = [publish(server.url, title=f"n{i}") for i in range(3)]
    ws = closing(WSClient(server.url, headers=[f"Last-Event-ID: {ids[0]}"]))
    assert [m["id"] for m in ws.notifications(2)] == ids[1:]


def test_a_flooding_websocket_client_is_cut_and_the_worker_stays_responsive(server, closing):
    flooder = closing(WSClient(server.url))
    stop = threading.Event()

    def flood():
        try:
            while not stop.is_set():
                flooder.send_text('{"action": "subscribe", "topic": "a"}')
        except Exception:
            pass  # the server closed it

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    try:
        time.sleep(0.5)
        worst = 0.0
        for _ in range(10):
            t0 = time.monotonic()
            assert requests.get(server.url + "/healthz", timeout=10).status_code == 200
            worst = max(worst, time.monotonic() - t0)
            time.sleep(0.1)
        assert worst < 1.0, f"/healthz took {worst:.2f}s during the flood"
    finally:
        stop.set()
        thread.join(timeout=10)
    # It was either cut (1008: too many messages waiting) or kept up with: never a stuck worker.
    try:
        while True:
            reply = flooder.recv_json(2)
            assert reply == {"ack": "subscribe", "topic": "a"}
    except StreamClosed as closed:
        assert closed.code in (1008, None)
    except TimeoutError:
        pass


def test_redis_down_when_the_worker_starts_loses_nothing_once_it_is_back(notifier_server, redis_server, closing):
    redis_server.stop()
    server = notifier_server(workers=1, redis=redis_server, wait=False)
    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(server.url + "/healthz", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, "server did not come up"
        time.sleep(0.1)
    sse = closing(SSEClient(server.url))
    assert sse.status == 200
    redis_server.start()
    ids = []
    deadline = time.monotonic() + 20
    while len(ids) < 3:
        assert time.monotonic() < deadline, "publishing did not come back"
        r = post_notify(server.url, {"title": f"after {len(ids)}"})
        if r.status == 202:
            ids.append(r.body["id"])
        else:
            time.sleep(0.1)
    assert [m["id"] for m in sse.notifications(3, timeout=15)] == ids


def test_a_hundred_subscriptions_sent_at_once_are_all_answered(server, closing):
    """notifier.js subscribes to every topic at once: up to NOTIFIER_MAX_TOPICS in one read."""
    client = closing(WSClient(server.url))
    frames = [websocket.ABNF.create_frame(f'{{"action": "subscribe", "topic": "t{i}"}}', websocket.ABNF.OPCODE_TEXT)
              for i in range(100)]
    client.ws.sock.sendall(b"".join(f.format() for f in frames))
    replies = [client.recv_json(5) for _ in range(100)]
    assert all("error" not in r for r in replies), replies[:3]
    nid = publish(server.url, title="to t99", topic="t99")
    assert client.next_notification(5)["id"] == nid
