"""A stalled subscriber is cut off; everyone else keeps getting notifications promptly."""

from __future__ import annotations

import multiprocessing
import time

import pytest
import requests

from clients import SSEClient, WSClient, publish, sync_subscribers, wait_until

QUEUE_SIZE = 8
COUNT = 300
MESSAGE = "x" * 32 * 1024   # 32 KB per notification: ~10 MB in all, far beyond socket buffers
MAX_LATENCY = 2.0           # seconds from publish to arrival at a reading client
PUBLISH_INTERVAL = 0.005    # at most 200 publishes a second
TINY_RCVBUF = 4096


@pytest.fixture
def server(notifier_server):
    return notifier_server(workers=1, env={"NOTIFIER_QUEUE_SIZE": QUEUE_SIZE})


class Reader:
    """Reads notifications as fast as they come, in a forked process of its own (so
    the publishing loop and the other reader do not take its CPU time through the
    GIL), and records when each arrived (CLOCK_MONOTONIC is shared by processes)."""

    def __init__(self, client, count):
        self.client, self.count = client, count
        self.arrivals: dict[str, float] = {}
        self.error: str | None = None
        ctx = multiprocessing.get_context("fork")
        self._recv, send = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=self._run, args=(send,), daemon=True)

    def _run(self, send):
        arrivals, error = [], None
        try:
            deadline = time.monotonic() + 60
            while len(arrivals) < self.count:
                msg = self.client.next_notification(max(deadline - time.monotonic(), 0.01))
                arrivals.append((msg["id"], time.monotonic()))
        except BaseException as exc:  # reported by the test
            error = repr(exc)
        send.send((arrivals, error))
        send.close()

    def start(self):
        self._proc.start()

    def join(self, timeout):
        """Collect the results; fails if the reader has not finished within ``timeout``."""
        if not self._recv.poll(timeout):
            self._proc.kill()
            self._proc.join(5)
            raise AssertionError(f"reader did not finish within {timeout}s")
        arrivals, self.error = self._recv.recv()
        self.arrivals = dict(arrivals)
        self._proc.join(5)


def test_slow_client_is_cut_without_delaying_others(server, closing):
    normal_ws = closing(WSClient(server.url))
    normal_sse = closing(SSEClient(server.url))
    stalled_ws = closing(WSClient(server.url, rcvbuf=TINY_RCVBUF))
    stalled_sse = closing(SSEClient(server.url, rcvbuf=TINY_RCVBUF))
    sync_subscribers(server.url, [normal_ws, normal_sse, stalled_ws, stalled_sse])
    # from here on the stalled clients read nothing until the publishing is over

    readers = [Reader(normal_ws, COUNT), Reader(normal_sse, COUNT)]
    for r in readers:
        r.start()

    published: dict[str, float] = {}
    order = []
    t_start = time.monotonic()
    with requests.Session() as session:
        for i in range(COUNT):
            # paced (at most one publish per PUBLISH_INTERVAL) like a busy real publisher
            time.sleep(max(0.0, t_start + i * PUBLISH_INTERVAL - time.monotonic()))
            t0 = time.monotonic()
            r = session.post(server.url + "/notify", json={"title": f"n{i}", "message": MESSAGE}, timeout=10)
            assert r.status_code == 202, r.text
            published[r.json()["id"]] = t0
            order.append(r.json()["id"])
    publish_time = time.monotonic() - t_start
    for r in readers:
        r.join(timeout=30)

    for name, r in zip(("websocket", "sse"), readers):
        assert r.error is None, f"{name} reader: {r.error} after {len(r.arrivals)} of {COUNT}"
        assert list(r.arrivals) == order, f"{name} reader got notifications out of order or missing"
        latencies = {nid: r.arrivals[nid] - published[nid] for nid in order}
        worst = max(latencies.values())
        print(f"{name}: worst publish->arrival latency {worst * 1000:.0f} ms")
        assert worst < MAX_LATENCY, (f"{name}: worst publish->arrival latency {worst:.2f}s "
                                     f"(publishing {COUNT} took {publish_time:.1f}s)")

    # The stalled clients now read again: they must hit the end of their stream
    # soon, having been dropped long before getting everything.
    ws_msgs, code = stalled_ws.drain_until_closed(timeout=15)
    ws_ids = [m["id"] for m in ws_msgs if m.get("type") != "test.sync"]
    assert code in (1013, None), f"stalled WebSocket closed with {code}, expected 1013 (or a cut socket)"
    assert len(ws_ids) < COUNT, "the stalled WebSocket got everything: it was never cut"
    assert ws_ids == order[:len(ws_ids)], "what the stalled WebSocket did get must be a prefix, in order"

    sse_msgs = stalled_sse.drain_until_closed(timeout=15)
    sse_ids = [m["id"] for m in sse_msgs if m.get("type") != "test.sync"]
    assert len(sse_ids) < COUNT, "the stalled SSE stream got everything: it was never cut"
    assert sse_ids == order[:len(sse_ids)], "what the stalled SSE client did get must be a prefix, in order"

    print(f"publishing {COUNT} took {publish_time:.2f}s; stalled WS got {len(ws_ids)} then close code "
          f"{code}; stalled SSE got {len(sse_ids)}")

    # The server lets go of both connections: the WebSocket right after its close (or
    # cut), the SSE connection once the client drops it (after a clean end of stream
    # gunicorn may keep an HTTP connection for its keep-alive time).
    wait_until(lambda: stalled_ws.local_port not in server.worker_of_ports(),
               timeout=5, message="the worker closing its socket to the stalled WebSocket")
    stalled_sse.close()
    wait_until(lambda: stalled_sse.local_port not in server.worker_of_ports(),
               timeout=5, message="the worker closing its socket to the stalled SSE client")


def test_a_client_that_reads_slowly_but_keeps_up_is_not_cut(server, closing):
    ws = closing(WSClient(server.url))
    sync_subscribers(server.url, [ws])
    ids = []
    for i in range(3 * QUEUE_SIZE):
        ids.append(publish(server.url, title=f"n{i}"))
        if i % 4 == 3:
            got = ws.notifications(4, timeout=5)
            assert [m["id"] for m in got] == ids[-4:]
            time.sleep(0.05)
    with pytest.raises(TimeoutError):
        ws.next_notification(0.3)  # nothing extra, and not closed (that would raise StreamClosed)


def test_after_being_cut_a_client_can_reconnect(server, closing):
    stalled = closing(WSClient(server.url, rcvbuf=TINY_RCVBUF))
    sync_subscribers(server.url, [stalled])
    count = 150
    for i in range(count):
        publish(server.url, title=f"n{i}", message=MESSAGE)
    msgs, code = stalled.drain_until_closed(timeout=15)
    assert stalled.closed and code in (1013, None), code
    assert len(msgs) < count
    again = closing(WSClient(server.url))
    sync_subscribers(server.url, [again])
    nid = publish(server.url, title="welcome back")
    assert again.next_notification(5)["id"] == nid


def test_a_client_that_never_reads_again_is_let_go_by_the_server(server, closing):
    """Its socket buffers stay full, so nothing more can be written to it: the server
    must still free the connection (not keep a writer blocked on it forever)."""
    stalled_ws = closing(WSClient(server.url, rcvbuf=TINY_RCVBUF))
    stalled_sse = closing(SSEClient(server.url, rcvbuf=TINY_RCVBUF))
    sync_subscribers(server.url, [stalled_ws, stalled_sse])
    count = 200  # ~6.4 MB each: more than the kernel buffers between server and client hold
    with requests.Session() as session:
        for i in range(count):
            r = session.post(server.url + "/notify", json={"title": f"n{i}", "message": MESSAGE}, timeout=10)
            assert r.status_code == 202, r.text

    # still not reading: the worker lets go of both connections by itself
    t0 = time.monotonic()
    wait_until(lambda: not {stalled_ws.local_port, stalled_sse.local_port} & set(server.worker_of_ports()),
               timeout=15, message="the worker releasing the connections of clients that never read")
    print(f"released {time.monotonic() - t0:.1f}s after the last publish")

    # and when they finally read, they find the end after a partial stream
    ws_msgs, code = stalled_ws.drain_until_closed(timeout=10)
    assert code in (1013, None) and len(ws_msgs) < count
    assert len(stalled_sse.drain_until_closed(timeout=10)) < count
    assert requests.get(server.url + "/healthz", timeout=5).status_code == 200
