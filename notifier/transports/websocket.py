"""WebSocket: one session per connection, written by one greenlet (or thread).

Notifications are frames built once per worker (``ws_frame``), written many at a
time by the connection's ``SocketWriter`` loop, or straight from the hub's flush while
it idles. In a gevent worker the same greenlet also reads, when an I/O watcher says
the socket has something (simple-websocket starts no reader for it); under OS threads
the library's reader thread reads and wakes it. Client messages (subscribe,
unsubscribe) are answered by the ``on_message`` callback, after what was drained.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Callable, Sequence

from ..core.closing import NORMAL, POLICY
from ..core.notification import Notification, ws_text_frame
from . import handoff, wsadapter
from .socket_writer import SocketWriter, os_socket

log = logging.getLogger(__name__)

PING = b"\x89\x00"
WIRE = "ws_frame"
MAX_PENDING_MESSAGES = 128
"""Messages waiting past which the client counts as flooding (1008). In a gevent worker
the socket is read again only once everything read before is answered, so this bounds
what waits; 100 topic subscriptions sent at once (NOTIFIER_MAX_TOPICS) stay below it."""
MESSAGES_PER_WAKE = 16

OnMessage = Callable[[Any], dict]


def json_frame(obj: dict) -> bytes:
    return ws_text_frame(json.dumps(obj, separators=(",", ":")).encode())


class WebSocketSession:
    """One accepted WebSocket: reads client messages, writes what its writer yields."""

    __slots__ = ("writer", "ws", "sock", "_raw", "_watcher", "_readable", "_on_message")

    def __init__(self, writer: SocketWriter, environ: dict, max_message_size: int) -> None:
        self.writer = writer
        self._readable = False
        self._on_message: OnMessage | None = None
        raw_sock = environ[next(k for k in wsadapter.SOCKET_KEYS if k in environ)]
        self._raw = os_socket(raw_sock)
        watcher = writer.runtime.watch_readable(self._raw.fileno())
        try:
            self.ws, self.sock = wsadapter.accept(environ, max_message_size, own_reader=watcher is not None)
        except BaseException:
            if watcher is not None:
                watcher.close()
            raise
        if watcher is None:
            wsadapter.on_message(self.ws, writer.wake, MAX_PENDING_MESSAGES, self._flooded)
            writer.wake()  # for what the library's thread read before it could wake anyone
        self._watcher = watcher
        writer.attach(self.sock.sock)

    def hand_over(self) -> None:
        """Take the socket from gunicorn's socket object (``handoff``): ``run`` may then go on
        from a greenlet of its own. The read watcher stays: it is on the same descriptor."""
        lingering = self.sock
        lingering.sock = handoff.take(lingering.sock)
        self._raw = os_socket(lingering.sock)
        self.writer.attach(lingering.sock)

    def run(self, heartbeat: float, on_message: OnMessage, replay: Sequence[Notification] = (),
            floor: str | None = None, on_end: Callable[[], None] | None = None) -> None:
        """Until the client or the server closes; ``replay`` (at resume) goes first, and
        live notifications up to ``floor`` are skipped as already sent. ``on_end`` (release
        the subscriber) runs as soon as the writing stops, before the close lingers."""
        writer = self.writer
        self._on_message = on_message
        try:
            if replay:
                self.sock.sendall(b"".join(n.ws_frame for n in replay))
            if self._watcher is not None:
                self._watcher.start(self._on_readable)
            writer.pump(self.sock.sendall, heartbeat, PING, floor, self._replies)
            if writer.closed:
                wsadapter.close(self.ws, writer.close_code or NORMAL, writer.close_reason)
        except wsadapter.Errors as exc:
            log.debug("websocket write failed: %s", exc)
        finally:
            writer.detach()
            if on_end is not None:
                on_end()
            if self._watcher is not None:
                self._watcher.close()
            wsadapter.finish(self.ws)

    def refuse(self, code: int, reason: str) -> None:
        """End the connection right after the handshake (e.g. history unreachable: 1013)."""
        self.writer.detach()
        if self._watcher is not None:
            self._watcher.close()
        wsadapter.close(self.ws, code, reason)
        wsadapter.finish(self.ws)

    def response(self) -> Any:
        return wsadapter.Finished(self.ws)

    def _flooded(self) -> None:  # from the library's reader thread
        self.writer.close(POLICY, "too many messages")

    def _on_readable(self) -> None:  # a loop callback: note it, wake the writer
        self._watcher.stop()
        self._readable = True
        self.writer.wake()

    def _replies(self) -> tuple[list[bytes], bool]:
        """Read what the client sent (if anything) and answer it: (frames to send, client gone)."""
        out: list[bytes] = []
        ws = self.ws
        if self._readable:
            self._readable = False
            out, gone = wsadapter.read_available(ws, self.sock, self._raw)
            if gone:  # what came before the close (or a bad frame) is answered, then the close
                log.debug("websocket closed by client (%s)", ws.close_reason)
                answers = [json_frame(self._on_message(m)) for m in wsadapter.take_messages(ws, MAX_PENDING_MESSAGES)]
                return answers + out, True
        elif self._watcher is None and not ws.connected:
            return out, True
        if wsadapter.pending(ws) > MAX_PENDING_MESSAGES:
            wsadapter.drop_messages(ws)
            self.writer.close(POLICY, "too many messages")
            return out, False
        out.extend(json_frame(self._on_message(m)) for m in wsadapter.take_messages(ws, MESSAGES_PER_WAKE))
        if wsadapter.pending(ws):  # more to answer: come back after others had their turn
            self.writer.wake()
        elif self._watcher is not None and not self._readable:
            self._watcher.start(self._on_readable)
        return out, False
