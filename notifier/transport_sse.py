"""Server-Sent Events: moves a subscriber's queue onto a streaming HTTP response.

The response body is a generator run by the request's greenlet. It drains the whole
queue into one write when several notifications are waiting, and sends a keepalive
comment when idle (a closed client is only noticed at the next write).
"""
from __future__ import annotations

import logging
import socket
from typing import Iterator, Sequence

from gevent.queue import Empty

from .hub import Hub, Subscriber
from .notification import Notification
from .transport import drain, expire_if_due, shut_later, wait_time

log = logging.getLogger(__name__)

KEEPALIVE = b": keepalive\n\n"
RETRY_MS = 2000

HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def event_stream(hub: Hub, sub: Subscriber, heartbeat: float, sock: socket.socket | None,
                 replay: Sequence[Notification] = (), floor: str | None = None) -> Iterator[bytes]:
    """The SSE body for one subscriber: ``replay`` first, then live notifications past ``floor``.

    Unsubscribes when the stream ends for any reason (the caller also closes it through
    ``ClosingIterator`` in case the body is never started).
    """
    running = [True]
    sub.on_cut = lambda: shut_later(sock, lambda: running[0])
    try:
        yield b"retry: %d\n\n" % RETRY_MS + b"".join(n.sse_chunk for n in replay)
        queue = sub.queue
        while not sub.closed:
            try:
                item = queue.get(timeout=wait_time(sub, heartbeat))
            except Empty:
                if not expire_if_due(sub):
                    yield KEEPALIVE
                continue
            chunks, floor = drain(queue, item, "sse_chunk", floor)
            if chunks:
                yield b"".join(chunks)
        log.debug("sse stream closed by server: %s", sub.close_reason)
    finally:
        running[0] = False
        hub.unsubscribe(sub)
