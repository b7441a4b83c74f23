"""WebSocket: moves a subscriber's queue onto a flask-sock connection, with one greenlet.

simple-websocket would start a reader greenlet per connection; for notifier's /ws it
starts none (``ReaderThread``): the writer greenlet also reads, when an I/O watcher on
the socket says there is something to read, so one greenlet handles notifications,
client actions and pings. Notifications are written as frames built once per worker
(``ws_frame``), many at a time, or straight from the hub's flush while the writer idles.
"""
from __future__ import annotations

import json
import logging
import socket
import threading
from typing import Any, Callable, Sequence

import gevent
from flask import g, has_request_context
from simple_websocket import ConnectionClosed
from wsproto.utilities import LocalProtocolError

from .hub import POLICY, Hub, Subscriber
from .notification import Notification, ws_text_frame
from .transport import os_socket, pump, shut_later

log = logging.getLogger(__name__)

PING = b"\x89\x00"
CLOSE_WRITE_TIMEOUT = 1.0
RECEIVE_BYTES = 4096

OnMessage = Callable[[Subscriber, Any], dict]


MAX_PENDING_MESSAGES = 128
"""Messages in one read (RECEIVE_BYTES) past which the client counts as flooding (1008).
The socket is read again only once everything read before is answered, so this bounds
what waits; 100 topic subscriptions sent at once (NOTIFIER_MAX_TOPICS) stay below it."""
MESSAGES_PER_WAKE = 16


class _NoThread:
    """What simple-websocket starts as its reader for notifier's /ws: nothing."""

    name = "notifier-ws"

    def start(self) -> None:
        pass

    def join(self, timeout: float | None = None) -> None:
        pass


NO_THREAD = _NoThread()


class _NoEvent:
    """simple-websocket's wake-up event, unused: the writer reads and answers itself."""

    def set(self) -> None:
        pass

    def clear(self) -> None:
        pass


NO_EVENT = _NoEvent()


class ReaderThread:
    """simple-websocket's ``thread_class``: no reader for notifier's /ws, the usual one elsewhere.

    Put in ``SOCK_SERVER_OPTIONS`` before each notifier /ws handshake; a host app's own
    flask-sock routes keep their reader (``base``, or ``threading.Thread`` as simple-websocket uses).
    """

    def __init__(self, base: Any = None) -> None:
        self.base = base

    def __call__(self, target: Callable[[], None]) -> Any:
        if has_request_context() and g.get("notifier_ws"):
            return NO_THREAD
        return (self.base or threading.Thread)(target=target)


def install_reader(options: dict) -> None:
    """Make flask-sock's ``SOCK_SERVER_OPTIONS`` start no reader greenlet for notifier's /ws."""
    base = options.get("thread_class")
    if not isinstance(base, ReaderThread):
        options["thread_class"] = ReaderThread(base)


class LingeringSocket:
    """The connection's socket, closed the polite way: stop sending, read what is left, close.

    simple-websocket closes right after sending a close frame (1009 for a message too
    big); with the rest of that message still unread, the kernel answers with a reset
    and the client never sees the close frame.
    """

    LINGER_SECONDS = 2.0
    LINGER_BYTES = 8 * 1024 * 1024

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        # While not None, what simple-websocket sends (pongs, close replies, 1009) is
        # kept here, so the writer sends it after what it has drained, never inside a
        # frame whose rest is still queued.
        self.outbox: list[bytes] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def send(self, data: bytes) -> int:
        if self.outbox is not None:
            self.outbox.append(data)
        else:
            self._sock.sendall(data)  # simple-websocket does not retry a partial send
        return len(data)

    def close(self) -> None:
        sock = self._sock
        try:
            sock.shutdown(socket.SHUT_WR)
            with gevent.Timeout(self.LINGER_SECONDS, False):
                drained = 0
                while drained < self.LINGER_BYTES:
                    data = sock.recv(65536)
                    if not data:
                        break
                    drained += len(data)
        except OSError:
            pass
        finally:
            sock.close()


def json_frame(obj: dict) -> bytes:
    return ws_text_frame(json.dumps(obj, separators=(",", ":")).encode())


def serve(ws: Any, hub: Hub, sub: Subscriber, heartbeat: float, on_message: OnMessage,
          replay: Sequence[Notification] = (), floor: str | None = None) -> None:
    """Run one WebSocket subscriber until it or the server closes; always cleans up.

    ``replay`` (missed notifications, at resume) goes first; live ones up to ``floor``
    are skipped as already sent.
    """
    sock: socket.socket = ws.sock
    ws.sock = lingering = LingeringSocket(sock)  # closed the polite way in finish()
    ws.event = NO_EVENT
    raw = os_socket(sock)
    running = [True]
    sub.on_cut = lambda: shut_later(sock, lambda: running[0])
    watcher = gevent.get_hub().loop.io(raw.fileno(), 1)
    readable = [False]

    def on_readable() -> None:  # a loop callback: note it, wake the writer
        watcher.stop()
        readable[0] = True
        sub.wake()

    def replies() -> tuple[list[bytes], bool]:
        """Read what the client sent (if anything) and answer it: (frames to send, client gone)."""
        out: list[bytes] = []
        if readable[0]:
            readable[0] = False
            lingering.outbox = out
            try:
                data = raw.recv(RECEIVE_BYTES)
                if not data:
                    return out, True
                ws.ws.receive_data(data)
                ws.connected = ws._handle_events()  # answers pings and closes, fills input_buffer
            except BlockingIOError:
                pass
            except (OSError, LocalProtocolError):
                ws.connected = False
                return out, True
            finally:
                lingering.outbox = None
            if not ws.connected:
                log.debug("websocket closed by client (%s)", ws.close_reason)
                return out, True
            if len(ws.input_buffer) > MAX_PENDING_MESSAGES:
                ws.input_buffer.clear()
                sub.close(POLICY, "too many messages")
                return out, False
        out.extend(json_frame(on_message(sub, ws.input_buffer.pop(0)))
                   for _ in range(min(len(ws.input_buffer), MESSAGES_PER_WAKE)))
        if ws.input_buffer:  # more to answer: come back after others had their turn
            sub.wake()
        elif not readable[0]:
            watcher.start(on_readable)
        return out, False

    try:
        if replay:
            sock.sendall(b"".join(n.ws_frame for n in replay))
        sub.wire = "ws_frame"
        watcher.start(on_readable)
        pump(sub, sock, heartbeat, PING, floor, replies)
        if sub.closed:
            close(ws, sub.close_code or 1000, sub.close_reason)
    except (OSError, ConnectionClosed) as exc:
        log.debug("websocket write failed: %s", exc)
    finally:
        running[0] = False
        watcher.close()
        hub.unsubscribe(sub)
        finish(ws)


def close(ws: Any, code: int, reason: str) -> None:
    """Send a close frame with ``code`` without ever blocking on a stalled client."""
    try:
        with gevent.Timeout(CLOSE_WRITE_TIMEOUT, False):
            ws.close(reason=code, message=reason)
    except (OSError, ConnectionClosed, LocalProtocolError):
        pass  # gone, or closing already (a 1009 was sent)


def finish(ws: Any) -> None:
    """Give the peer a moment to answer the close, then close the socket."""
    ws.connected = False
    ws.sock.close()
