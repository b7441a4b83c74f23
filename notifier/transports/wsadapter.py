"""Every simple-websocket and wsproto internal notifier relies on, in this one module.

Pinned (pyproject) to the versions ``tests/test_wsadapter.py`` checks: simple-websocket
1.1.x (and the wsproto it brings). That test fails if the library changes under what
is used here:
- ``Server(environ, thread_class=..., event_class=..., max_message_size=...)`` (public):
  with ``no_thread`` it starts no reader, so in a gevent worker the connection's one
  greenlet reads, when an I/O watcher says so (``read_available``);
- ``ws.ws.receive_data``, ``ws._handle_events()``, ``ws.input_buffer``, ``ws.connected``,
  ``ws.close_reason`` (internals) to feed it what that greenlet read;
- ``ws.environ`` and wsproto's ``ws.ws.handshake`` are used only by the handshake, and
  ``ws.ws.connection`` after it (``release_handshake``);
- the socket is taken from ``environ["gunicorn.socket"]`` / ``["werkzeug.socket"]``, so
  putting ``LingeringSocket`` there makes every write of the library go through it.

Under OS threads the library's own reader thread reads (public ``receive(timeout=0)``),
and ``WakeEvent`` (its ``event_class``) wakes the connection's writer.
"""
from __future__ import annotations

import socket
import threading
import time
from typing import Any, Callable, Iterator

from simple_websocket import ConnectionClosed, Server
from flask import Response  # flask.Response: Flask would otherwise recast it (and lose __call__)
from wsproto.utilities import LocalProtocolError

SOCKET_KEYS = ("gunicorn.socket", "werkzeug.socket")
RECEIVE_BYTES = 4096
CLOSE_WRITE_TIMEOUT = 1.0

Errors = (OSError, ConnectionClosed, LocalProtocolError)
"""What a read, write or close on a WebSocket raises when the peer is gone or broke the protocol."""


class _NoThread:
    """The reader simple-websocket starts when the connection's own greenlet reads: nothing."""

    name = "notifier-ws"

    def start(self) -> None:
        pass

    def join(self, timeout: float | None = None) -> None:
        pass


NO_THREAD = _NoThread()


def no_thread(target: Callable[[], None]) -> _NoThread:
    """simple-websocket's ``thread_class`` for an own reader: one shared do-nothing object."""
    return NO_THREAD


class _NoEvent:
    """simple-websocket's wake-up event, unused when the connection's own greenlet reads."""

    def set(self) -> None:
        pass

    def clear(self) -> None:
        pass


NO_EVENT = _NoEvent()


class WakeEvent(threading.Event):
    """simple-websocket's ``event_class``: also wakes the writer when a message arrived, and
    stops the reader thread (flood) when more than ``limit`` messages wait unanswered."""

    wake: Callable[[], None] | None = None
    ws: Any = None
    limit = 0
    flooded: Callable[[], None] | None = None

    def set(self) -> None:
        super().set()
        ws = self.ws
        if ws is not None and len(ws.input_buffer) > self.limit:
            ws.input_buffer.clear()
            try:  # the reader's next recv ends it: nothing more piles up
                ws.sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass
            if self.flooded is not None:
                self.flooded()
        if self.wake is not None:
            self.wake()


class LingeringSocket:
    """The connection's socket as simple-websocket sees it.

    Closed the polite way (stop sending, read what is left, close): simple-websocket
    closes right after a close frame (1009 for a message too big), and with the rest of
    that message unread the kernel would answer with a reset, losing the close frame.
    While ``outbox`` is a list, what the library sends (pongs, close replies, 1009) is
    kept there, so the writer sends it after what it drained, never inside a frame; with
    a library reader thread, ``lock`` keeps its writes and the writer's apart.
    """

    LINGER_SECONDS = 2.0
    LINGER_BYTES = 8 * 1024 * 1024

    __slots__ = ("sock", "outbox", "lock")

    def __init__(self, sock: socket.socket, lock: Any = None) -> None:
        self.sock = sock
        self.outbox: list[bytes] | None = None
        self.lock = lock

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)

    def send(self, data: bytes) -> int:
        if self.outbox is not None:
            self.outbox.append(data)
        else:
            self.sendall(data)  # simple-websocket does not retry a partial send
        return len(data)

    def sendall(self, data: bytes) -> None:
        if self.lock is None:
            self.sock.sendall(data)
        else:
            with self.lock:
                self.sock.sendall(data)

    def close(self) -> None:
        sock = self.sock
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(self.LINGER_SECONDS)
            deadline, drained = time.monotonic() + self.LINGER_SECONDS, 0
            while drained < self.LINGER_BYTES and time.monotonic() < deadline:
                data = sock.recv(65536)
                if not data:
                    break
                drained += len(data)
        except OSError:
            pass
        finally:
            try:  # wakes a reader thread still blocked in recv (a silent client)
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


def accept(environ: dict, max_message_size: int, own_reader: bool) -> tuple[Server, LingeringSocket]:
    """The WebSocket handshake on this request's socket; never offers permessage-deflate.

    ``own_reader``: the caller reads (``read_available``); else the library's thread does.
    """
    key = next(k for k in SOCKET_KEYS if k in environ)
    lingering = environ[key] = LingeringSocket(environ[key], None if own_reader else threading.Lock())
    # permessage-deflate costs ~170 KB and 2x CPU per connection: never agree to it.
    environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)
    if own_reader:
        options: dict[str, Any] = {"thread_class": no_thread, "event_class": lambda: NO_EVENT}
    else:
        options = {"event_class": WakeEvent}
    ws = Server(environ, max_message_size=max_message_size, receive_bytes=RECEIVE_BYTES, **options)
    release_handshake(ws)
    return ws, lingering


class _Done:
    """wsproto's handshake once it is over: its ``events()`` only ever yields nothing more."""

    @staticmethod
    def events() -> Iterator[Any]:
        return iter(())


DONE = _Done()


def release_handshake(ws: Server) -> None:
    """Drop what only the handshake needed: the request's environ (and through it gunicorn's
    request) and wsproto's handshake with its h11 connection, ~4 KB an idle connection
    would keep. Once accepted, wsproto reads and writes through ``ws.ws.connection``."""
    ws.environ = None
    if ws.ws.connection is not None:
        ws.ws.handshake = DONE


def can_accept(environ: dict) -> bool:
    """True when this server hands the request's socket over (gunicorn, Werkzeug)."""
    return any(k in environ for k in SOCKET_KEYS)


def on_message(ws: Server, wake: Callable[[], None], limit: int, flooded: Callable[[], None]) -> None:
    """With the library's reader thread: call ``wake`` whenever a message or close arrives,
    and ``flooded`` (once the reader has stopped) when more than ``limit`` wait unanswered."""
    event = ws.event
    event.limit, event.flooded, event.ws = limit, flooded, ws
    event.wake = wake


def read_available(ws: Server, lingering: LingeringSocket, raw: Any) -> tuple[list[bytes], bool]:
    """Read what the client sent, once, without blocking: (the library's replies, client gone).

    Messages go to ``ws.input_buffer``; pings and closes are answered into the list
    returned, to be written after what the writer has drained.
    """
    out: list[bytes] = []
    lingering.outbox = out
    try:
        data = raw.recv(RECEIVE_BYTES)
        if not data:
            return out, True
        ws.ws.receive_data(data)
        ws.connected = ws._handle_events()
    except BlockingIOError:
        pass
    except (OSError, LocalProtocolError):
        ws.connected = False
    finally:
        lingering.outbox = None
    return out, not ws.connected


def pending(ws: Server) -> int:
    """How many received messages nobody has taken yet."""
    return len(ws.input_buffer)


def take_messages(ws: Server, most: int) -> list[Any]:
    """Up to ``most`` received messages, oldest first, without waiting.

    One ``pop`` at a time: the library's reader thread may append meanwhile.
    """
    buffer, taken = ws.input_buffer, []
    while buffer and len(taken) < most:
        taken.append(buffer.pop(0))
    return taken


def drop_messages(ws: Server) -> None:
    ws.input_buffer.clear()


def close(ws: Server, code: int, reason: str) -> None:
    """Send a close frame with ``code`` without ever blocking long on a stalled client."""
    try:
        ws.sock.settimeout(CLOSE_WRITE_TIMEOUT)
        ws.close(reason=code, message=reason)
    except Errors:
        pass  # gone, or closing already (a 1009 was sent)


def finish(ws: Server) -> None:
    """Give the peer a moment to answer the close, then close the socket."""
    ws.connected = False
    ws.sock.close()


class Finished(Response):
    """What the view returns after the connection ended: nothing more goes on the wire.

    As flask-sock does it: gunicorn is told the request is handled by ``StopIteration``
    (it then closes the connection); Werkzeug gets an empty response it cannot write.
    """

    def __init__(self, ws: Server) -> None:
        super().__init__()
        self.mode = ws.mode

    def __call__(self, environ: dict, start_response: Callable) -> Any:
        if self.mode == "gunicorn":
            raise StopIteration()
        return super().__call__(environ, start_response)
