"""WebSocket: moves a subscriber's queue onto a flask-sock connection.

flask-sock (simple-websocket) already runs a reader greenlet per connection; instead of
a third greenlet for client messages, the reader's wake-up event is pointed at the
subscriber's queue, so one writer greenlet handles notifications, client actions and
pings. Notifications are written as frames built once per worker (``ws_frame``), many
at a time, with ``sendall``.
"""
from __future__ import annotations

import json
import logging
import socket
from typing import Any, Callable, Sequence

import gevent
from gevent.queue import Full
from simple_websocket import ConnectionClosed

from .hub import POLICY, WAKE, Hub, Subscriber
from .notification import Notification, ws_text_frame
from .transport import pump, shut_later, shutdown

log = logging.getLogger(__name__)

PING = b"\x89\x00"
CLOSE_WRITE_TIMEOUT = 1.0
CLOSE_WAIT = 2.0

OnMessage = Callable[[Subscriber, Any], dict]


MAX_PENDING_MESSAGES = 64
"""Client messages waiting to be answered before the client counts as flooding (1008)."""
MESSAGES_PER_WAKE = 16


class QueueWake:
    """Stands in for simple-websocket's ``event``: its ``set()`` wakes our writer instead.

    simple-websocket's reader calls it once per message and does not yield while data
    keeps arriving, so it yields here, and cuts a client whose messages pile up.
    """

    def __init__(self, sub: Subscriber, ws: Any) -> None:
        self.sub, self.ws = sub, ws

    def set(self) -> None:
        if len(self.ws.input_buffer) > MAX_PENDING_MESSAGES:
            self.ws.input_buffer.clear()
            self.sub.close(POLICY, "too many messages")
        else:
            try:
                self.sub.queue.put_nowait(WAKE)
            except Full:
                pass  # the writer is awake already
        gevent.sleep(0)

    def clear(self) -> None:
        pass

    def is_set(self) -> bool:
        return False

    def wait(self, timeout: float | None = None) -> bool:
        return False


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

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

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
    ws.sock = LingeringSocket(sock)  # the reader closes through it
    running = [True]
    sub.on_cut = lambda: shut_later(sock, lambda: running[0])
    ws.event = QueueWake(sub, ws)
    ws.event.set()  # a message may have arrived before the swap

    def replies() -> list[bytes] | None:
        if not ws.connected:
            log.debug("websocket closed by client (%s)", ws.close_reason)
            return None
        answers = [json_frame(on_message(sub, ws.input_buffer.pop(0)))
                   for _ in range(min(len(ws.input_buffer), MESSAGES_PER_WAKE))]
        if ws.input_buffer:
            ws.event.set()  # more to answer: come back after others had their turn
        return answers

    try:
        if replay:
            sock.sendall(b"".join(n.ws_frame for n in replay))
        sub.wire = "ws_frame"
        pump(sub, sock, heartbeat, PING, floor, replies)
        if sub.closed:
            close(ws, sub.close_code or 1000, sub.close_reason)
    except (OSError, ConnectionClosed) as exc:
        log.debug("websocket write failed: %s", exc)
    finally:
        running[0] = False
        hub.unsubscribe(sub)
        finish(ws)


def close(ws: Any, code: int, reason: str) -> None:
    """Send a close frame with ``code`` without ever blocking on a stalled client."""
    try:
        with gevent.Timeout(CLOSE_WRITE_TIMEOUT, False):
            ws.close(reason=code, message=reason)
    except (OSError, ConnectionClosed):
        pass


def finish(ws: Any) -> None:
    """Give the peer a moment to answer the close, then make sure the reader ends."""
    thread = getattr(ws, "thread", None)
    if thread is not None:
        thread.join(timeout=CLOSE_WAIT)
    shutdown(ws.sock)
