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
from .notification import Notification, http_chunk
from .transport import drain, expire_if_due, pump, shut_later, wait_time

log = logging.getLogger(__name__)

KEEPALIVE = b": keepalive\n\n"
RETRY_MS = 2000

HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def event_stream(hub: Hub, sub: Subscriber, heartbeat: float, sock: socket.socket | None,
                 replay: Sequence[Notification] = (), floor: str | None = None,
                 chunked: bool = True) -> Iterator[bytes]:
    """The SSE body for one subscriber: ``replay`` first, then live notifications past ``floor``.

    Under gunicorn (``sock`` given) the first yield makes gunicorn send the headers;
    after that the stream is written straight to the socket, framed as the chunks
    gunicorn would have made (``chunked``, for HTTP/1.1), so the hub can write to an
    idle stream directly like to a WebSocket. Unsubscribes when the stream ends for any
    reason (the caller also closes it through ``ClosingIterator`` in case the body is
    never started).
    """
    running = [True]
    sub.on_cut = lambda: shut_later(sock, lambda: running[0])
    try:
        yield b"retry: %d\n\n" % RETRY_MS + b"".join(n.sse_chunk for n in replay)
        if sock is None:  # not gunicorn: yield everything
            yield from _yielding(sub, heartbeat, floor)
            return
        sub.wire = "sse_chunked" if chunked else "sse_chunk"
        try:
            pump(sub, sock, heartbeat, http_chunk(KEEPALIVE) if chunked else KEEPALIVE, floor)
        except OSError as exc:
            log.debug("sse write failed: %s", exc)
            return
        log.debug("sse stream closed by server: %s", sub.close_reason)
    finally:
        running[0] = False
        hub.unsubscribe(sub)


def _yielding(sub: Subscriber, heartbeat: float, floor: str | None) -> Iterator[bytes]:
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
