"""Server-Sent Events: one session per stream, its body run by the request's greenlet (or thread).

The first chunk (``retry`` and the replay) always goes through the WSGI server, which
sends the headers with it. After that, on gunicorn's worker socket with HTTP/1.1 GET in
a gevent worker, the stream is written straight to the socket, framed as the chunks
gunicorn would make, so the hub can write to an idle stream directly as to a WebSocket;
where its hooks allow it, the stream then leaves the request's greenlet for a fresh one
of its own (``handoff``), which also ends the chunked body. Everywhere else (HTTP/1.0,
another server, OS threads) the same loop's output is simply yielded to the server. A
keepalive comment goes out when idle (a closed client is only noticed at the next write).
"""
from __future__ import annotations

import logging
import socket
from typing import Any, Callable, Iterator, Sequence

from flask import Response
from werkzeug.wsgi import ClosingIterator

from ..core.closing import NORMAL
from ..core.notification import Notification, http_chunk
from ..runtime import Runtime
from . import handoff
from .socket_writer import SocketWriter, os_socket

log = logging.getLogger(__name__)

KEEPALIVE = b": keepalive\n\n"
RETRY_MS = 2000
LAST_CHUNK = b"0\r\n\r\n"

HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def writes_direct(environ: dict, writer: SocketWriter) -> bool:
    """Chunks may go straight to the socket: gunicorn's own, HTTP/1.1, GET, one thread."""
    return (writer.runtime.direct_writes and environ.get("gunicorn.socket") is not None
            and environ.get("SERVER_PROTOCOL") == "HTTP/1.1" and environ.get("REQUEST_METHOD") == "GET")


def opening(replay: Sequence[Notification]) -> bytes:
    """The first chunk: the reconnect delay, then what a resuming client missed."""
    return b"retry: %d\n\n" % RETRY_MS + b"".join(n.sse_chunk for n in replay)


class SSESession:
    """One event stream: ``body()`` is the WSGI response body (``EventStream`` wraps it)."""

    __slots__ = ("writer", "direct", "sock", "watcher")

    def __init__(self, writer: SocketWriter, environ: dict) -> None:
        self.writer = writer
        self.watcher: Any = None
        self.direct = writes_direct(environ, writer)
        writer.wire = "sse_chunked" if self.direct else "sse_chunk"
        self.sock = environ.get("gunicorn.socket") or environ.get("werkzeug.socket")
        if self.sock is not None:
            writer.attach(self.sock, direct=self.direct)  # also lets a stuck write be cut

    def watch_close(self) -> None:
        """Notice the client closing at once, not at the next write (a keepalive, seconds
        away): for a connection presence counts, which must drop it within a second."""
        if not self.direct or self.sock is None:
            return
        watcher = self.writer.runtime.watch_readable(os_socket(self.sock).fileno())
        if watcher is not None:
            self.watcher = watcher
            watcher.start(self._on_readable)

    def _on_readable(self) -> None:  # a loop callback: an event-stream client sends nothing but its close
        self.watcher.stop()
        try:
            gone = os_socket(self.sock).recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            gone = False
        except OSError:
            gone = True
        if gone:
            self.writer.close(NORMAL, "client gone")

    def _unwatch(self) -> None:
        if self.watcher is not None:
            self.watcher.close()
            self.watcher = None

    def body(self, heartbeat: float, replay: Sequence[Notification] = (), floor: str | None = None,
             on_end: Callable[[], None] | None = None) -> Iterator[bytes]:
        """``replay`` first, then live notifications past ``floor``; ``on_end`` runs however it ends."""
        writer = self.writer
        try:
            yield opening(replay)
            if not self.direct:
                yield from writer.batches(heartbeat, KEEPALIVE, floor)
                return
            self._pump(heartbeat, floor)
        finally:
            self._unwatch()
            writer.detach()
            if on_end is not None:
                on_end()

    def hand_over(self) -> None:
        """Take the socket from gunicorn's socket object (``handoff``): ``serve`` carries on."""
        self.sock = handoff.take(self.sock)
        self.writer.attach(self.sock)

    def serve(self, heartbeat: float, floor: str | None, on_end: Callable[[], None]) -> None:
        """The stream after its first chunk, handed over: it ends the chunked body itself and
        closes the socket (a client reconnects for more; gunicorn would have kept it alive)."""
        try:
            if self._pump(heartbeat, floor):
                self.sock.sendall(LAST_CHUNK)
        except OSError:
            pass
        except Exception:  # no server above to log it
            log.exception("event stream failed")
        finally:
            self._unwatch()
            self.writer.detach()
            on_end()
            self.sock.close()

    def _pump(self, heartbeat: float, floor: str | None) -> bool:
        """Write straight to the socket until closed; False if the client has gone."""
        writer = self.writer
        try:
            writer.pump(self.sock.sendall, heartbeat, http_chunk(KEEPALIVE), floor)
        except OSError as exc:
            log.debug("sse write failed: %s", exc)
            return False
        log.debug("sse stream closed by server: %s", writer.close_reason)
        return True


class EventStream(Response):
    """An event stream's response. Its body goes through the server, released even if never
    started; or, with a ``runtime`` that may take it (``handoff.possible``), only the first
    chunk does, the stream carries on from a greenlet of its own and gunicorn is told the
    request was handled."""

    def __init__(self, session: SSESession, heartbeat: float, replay: Sequence[Notification], floor: str | None,
                 on_end: Callable[[], None], headers: dict[str, str], runtime: Runtime | None = None,
                 started: float = 0.0) -> None:
        body = ClosingIterator(session.body(heartbeat, replay, floor, on_end), [on_end])
        super().__init__(body, mimetype="text/event-stream", headers=headers, direct_passthrough=True)
        self.hand_over: tuple[Any, ...] | None = None
        if runtime is not None and session.direct:
            self.hand_over = (session, heartbeat, opening(replay), floor, on_end, runtime, started)

    def __call__(self, environ: dict, start_response: Callable[..., Any]) -> Any:
        if self.hand_over is None:
            return super().__call__(environ, start_response)
        body, status, headers = self.get_wsgi_response(environ)
        write = start_response(status, headers)
        server_response = handoff.server_response(write)
        if server_response is None:  # not gunicorn's chunked response after all: it writes the body
            return body
        session, heartbeat, first, floor, on_end, runtime, started = self.hand_over
        self.hand_over = None
        try:
            write(first)  # the headers go with it
            session.hand_over()
        except BaseException:
            session.writer.detach()
            on_end()
            raise
        handoff.log_access(server_response, environ, started)
        runtime.start_connection(session.serve, heartbeat, floor, on_end)
        raise StopIteration  # gunicorn: handled, close (the socket it closes is empty)
