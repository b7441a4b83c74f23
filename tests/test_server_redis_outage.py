"""Redis goes away and comes back while gunicorn keeps running.

Two ways back: Redis restarts with its data (an RDB saved at shutdown), or
restarts empty (history lost). Either way publishing fails fast and loudly while
it is down, and subscribers get what is published once it is back.
"""

from __future__ import annotations

import time

import pytest
import requests

from clients import SSEClient, StreamClosed, WSClient, post_notify, publish, sync_subscribers

WORKERS = 2
PUBLISH_BOUND = 5.0  # seconds a publish may take to answer 503 while Redis is down
PROBE_TYPE = "test.probe"


def readyz(server):
    r = requests.get(server.url + "/readyz", timeout=10)
    return r.status_code, r


@pytest.fixture
def started(request, redis_factory, notifier_server, closing):
    """(server, redis, ws, sse, before): 2 workers on Redis, two subscribers that saw ``before``."""
    redis = redis_factory(persist=request.param == "redis-keeps-data")
    try:
        server = notifier_server(workers=WORKERS, redis=redis)
        ws = closing(WSClient(server.url))
        sse = closing(SSEClient(server.url))
        sync_subscribers(server.url, [ws, sse])
        before = publish(server.url, title="before outage")
        for c in (ws, sse):
            assert c.next_notification(5)["id"] == before
        yield server, redis, ws, sse, before
        closing.close_all()  # clients first: an open idle connection delays a worker's exit
        server.stop()
    finally:
        redis.stop()


def go_through_outage(server, redis):
    """Stop Redis, check the server refuses honestly and fast, start Redis again, wait for ready."""
    redis.stop()
    timings = []
    for i in range(2 * WORKERS + 2):  # enough requests to reach every worker in practice
        t0 = time.monotonic()
        r = post_notify(server.url, {"title": f"during outage {i}"}, timeout=PUBLISH_BOUND + 10)
        elapsed = time.monotonic() - t0
        timings.append(round(elapsed, 2))
        assert r.status == 503, f"publish while Redis is down: {r.status} {r.text!r} (a 202 would be a lie)"
        assert isinstance(r.error, str) and r.error, r.text
        assert elapsed < PUBLISH_BOUND, f"503 took {elapsed:.1f}s (all: {timings})"
    print(f"503 answer times while Redis is down: {timings}")

    for _ in range(2 * WORKERS):
        status, r = readyz(server)
        assert status == 503, f"/readyz while Redis is down: {status} {r.text!r}"
        assert isinstance(r.json().get("error"), str)
    # liveness is not readiness: the process still serves
    assert requests.get(server.url + "/healthz", timeout=5).status_code == 200

    redis.start()  # same port
    deadline = time.monotonic() + 30
    consecutive = 0
    while consecutive < 2 * WORKERS:
        assert time.monotonic() < deadline, "/readyz did not return to 200 within 30s of Redis coming back"
        status, _ = readyz(server)
        consecutive = consecutive + 1 if status == 200 else 0
        time.sleep(0.1)


def publish_retrying(server, timeout=30.0, **fields) -> str:
    """Publish, retrying 503s (a publish may race the reconnect), bounded."""
    deadline = time.monotonic() + timeout
    while True:
        r = post_notify(server.url, fields)
        if r.status == 202:
            return r.body["id"]
        assert r.status == 503, f"unexpected {r.status} {r.text!r}"
        assert time.monotonic() < deadline, f"publish still refused {timeout}s after Redis came back"
        time.sleep(0.2)


@pytest.mark.parametrize("started", ["redis-keeps-data"], indirect=True)
def test_publish_fails_fast_during_outage_and_live_connections_carry_on(started):
    server, redis, ws, sse, before = started
    pids_before = server.worker_pids()
    go_through_outage(server, redis)

    after = [publish_retrying(server, title="after outage 0")]
    after += [publish(server.url, title=f"after outage {i}") for i in range(1, 5)]
    for c in (ws, sse):
        got = c.notifications(len(after), timeout=20)
        assert [m["id"] for m in got] == after, f"{type(c).__name__} got {[m['id'] for m in got]}"
        assert [m["title"] for m in got] == [f"after outage {i}" for i in range(5)]
    assert server.worker_pids() == pids_before, "workers were restarted"
    assert all(a > before for a in after), f"ids after the outage sort before {before}: {after}"


@pytest.mark.parametrize("started", ["redis-comes-back-empty"], indirect=True)
def test_subscribers_get_notifications_again_after_redis_comes_back_empty(started, closing):
    """History is gone: a live connection may carry on, or be closed to resume (1012 /
    end of stream); resuming from its last id then starts with ``notifier.reset``.
    Either way the subscriber gets what is published after Redis is back."""
    server, redis, ws, sse, before = started
    pids_before = server.worker_pids()
    go_through_outage(server, redis)

    clients = {"ws": ws, "sse": sse}
    last_seen = {"ws": before, "sse": before}
    reconnected = {}

    def reconnect(kind):
        if kind == "ws":
            c = closing(WSClient(server.url, last_event_id=last_seen[kind]))
        else:
            c = closing(SSEClient(server.url, headers={"Last-Event-ID": last_seen[kind]}))
        first = c.next_notification(5, skip_sync=False)
        assert first["type"] == "notifier.reset", f"resume after lost history must start with a reset: {first}"
        clients[kind] = c
        reconnected[kind] = True

    # probe until each subscriber (reconnecting when told to) gets a fresh notification
    pending = set(clients)
    deadline = time.monotonic() + 30
    while pending:
        assert time.monotonic() < deadline, f"{sorted(pending)} got nothing published after the outage"
        probe = publish_retrying(server, type=PROBE_TYPE, title="probe")
        for kind in sorted(pending):
            try:
                while True:
                    msg = clients[kind].next_notification(0.5)
                    last_seen[kind] = msg["id"]
                    if msg["id"] == probe:
                        pending.discard(kind)
                        break
            except TimeoutError:
                pass
            except StreamClosed as closed:
                assert kind == "sse" or closed.code == 1012, f"WebSocket closed with {closed.code}"
                assert kind not in reconnected, f"{kind} was closed again after reconnecting"
                reconnect(kind)
    print(f"reconnected after the outage: {sorted(reconnected) or 'none'}")

    after = [publish(server.url, title=f"after outage {i}") for i in range(5)]
    for kind, c in clients.items():
        got = []
        while len(got) < len(after):
            msg = c.next_notification(10)
            if msg["type"] != PROBE_TYPE:  # a probe may still be on its way
                got.append(msg["id"])
        assert got == after, f"{kind} got {got}"
    assert server.worker_pids() == pids_before, "workers were restarted"
    assert all(a > before for a in after), f"ids after the outage sort before {before}: {after}"
