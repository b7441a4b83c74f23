"""Starting and stopping gunicorn."""

from __future__ import annotations

import signal
import subprocess
import time

from clients import SSEClient, WSClient, publish, sync_subscribers


def test_several_workers_without_redis_refuse_to_start(notifier_server):
    server = notifier_server(workers=2, wait=False)
    try:
        code = server.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"gunicorn still running 30s after start:\n{server.log_tail()}") from None
    assert code != 0, f"gunicorn exited with 0:\n{server.log_tail()}"
    log = server.log.read_text(errors="replace")
    assert "REDIS_URL" in log, f"the refusal must name REDIS_URL:\n{log[-3000:]}"


def test_one_worker_without_redis_starts(notifier_server):
    server = notifier_server(workers=1)
    assert server.proc.poll() is None


def test_sigterm_closes_websockets_with_1001_and_ends_sse_streams(notifier_server, closing):
    server = notifier_server(workers=1)
    ws = closing(WSClient(server.url))
    sse = closing(SSEClient(server.url))
    sync_subscribers(server.url, [ws, sse])
    nid = publish(server.url, title="before shutdown")
    assert ws.next_notification(5)["id"] == nid
    assert sse.next_notification(5)["id"] == nid

    t0 = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    msgs, code = ws.drain_until_closed(timeout=10)
    assert code == 1001, f"WebSocket closed with {code}, expected 1001 (going away)"
    sse.drain_until_closed(timeout=10)
    assert sse.closed
    took = time.monotonic() - t0
    # well inside gunicorn's graceful_timeout: notifier closes its connections itself
    assert took < 5, f"connections were closed {took:.1f}s after SIGTERM"
    ws.close()
    sse.close()  # as a browser would, once its stream ended
    code = server.proc.wait(timeout=15)
    assert code == 0, f"gunicorn exited with {code} after SIGTERM:\n{server.log_tail()}"
