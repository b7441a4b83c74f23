"""Server-Sent Events: one session per stream, its body run by the request's greenlet (or thread).

The first chunk (``retry`` and the replay) always goes through the WSGI server, which
sends the headers with it. After that, on gunicorn's worker socket with HTTP/1.1 GET in
a gevent worker, the stream is written straight to the socket, framed as the chunks
gunicorn would make, so the hub can write to an idle stream directly as to a WebSocket.
Everywhere else (HTTP/1.0, another server, OS threads) the same loop's output is simply
yielded to the server. A keepalive comment goes out when idle (a closed client is only
noticed at the next write).
"""
from __future__ import annotations

import logging
from typing import Callable, Iterator, Sequence

from ..core.notification import Notification, http_chunk
from .socket_writer import SocketWriter

log = logging.getLogger(__name__)

KEEPALIVE = b": keepalive\n\n"
RETRY_MS = 2000

HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def writes_direct(environ: dict, writer: SocketWriter) -> bool:
    """Chunks may go straight to the socket: gunicorn's own, HTTP/1.1, GET, one thread."""
    return (writer.runtime.direct_writes and environ.get("gunicorn.socket") is not None
            and environ.get("SERVER_PROTOCOL") == "HTTP/1.1" and environ.get("REQUEST_METHOD") == "GET")


class SSESession:
    """One event stream: ``body()`` is the WSGI response body."""

    __slots__ = ("writer", "direct", "sock")

    def __init__(self, writer: SocketWriter, environ: dict) -> None:
        self.writer = writer
        self.direct = writes_direct(environ, writer)
        writer.wire = "sse_chunked" if self.direct else "sse_chunk"
        self.sock = environ.get("gunicorn.socket") or environ.get("werkzeug.socket")
        if self.sock is not None:
            writer.attach(self.sock, direct=self.direct)  # also lets a stuck write be cut

    def body(self, heartbeat: float, replay: Sequence[Notification] = (), floor: str | None = None,
             on_end: Callable[[], None] | None = None) -> Iterator[bytes]:
        """``replay`` first, then live notifications past ``floor``; ``on_end`` runs however it ends."""
        writer = self.writer
        try:
            yield b"retry: %d\n\n" % RETRY_MS + b"".join(n.sse_chunk for n in replay)
            if not self.direct:
                yield from writer.batches(heartbeat, KEEPALIVE, floor)
                return
            try:
                writer.pump(self.sock.sendall, heartbeat, http_chunk(KEEPALIVE), floor)
            except OSError as exc:
                log.debug("sse write failed: %s", exc)
                return
            log.debug("sse stream closed by server: %s", writer.close_reason)
        finally:
            writer.detach()
            if on_end is not None:
                on_end()
