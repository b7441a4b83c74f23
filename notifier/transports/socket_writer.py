"""``SocketWriter``: a connection's one writer, and the only owner of the direct-write fast path.

It holds the connection's send queue and implements ``Connection`` for the hub. Its
loop (``next_batch``) is the one loop of every transport: it waits on the queue and gives
what to write next — everything queued, drained into one write, or a keepalive when
idle — and the transport writes it to its socket (``pump``) or hands it to the WSGI
server (``batches``).

Direct writes: while the loop waits on an empty queue (``idle``) and the runtime runs
everything on one thread, ``offer`` sends straight to the non-blocking socket instead of
waking the loop; whatever does not fit goes through the queue, and so does everything
after it, until the loop has drained it and waits again. So idle means an empty queue.
"""
from __future__ import annotations

import logging
import socket
import time
from random import random
from typing import Any, Callable, Iterator, Sequence

from ..core.closing import DISCONNECTED, POLICY
from ..core.notification import Frames, Notification, disconnect_event
from ..core.send_queue import Empty, Full
from ..runtime import Runtime

log = logging.getLogger(__name__)

MAX_BATCH = 256
"""Most queued items drained into one write."""
CUT_GRACE = 2.0
"""Seconds a writer that was closed mid-write gets to end before its socket is shut."""
JITTER = 0.25
"""Idle waits last the heartbeat less up to this share of it, drawn anew each time."""
WAKE = object()
"""Queue item that only wakes the loop (to close, or to read what the client sent)."""

Replies = Callable[[], "tuple[list[bytes], bool]"]


def os_socket(sock: Any) -> Any:
    """The OS socket under gevent's (non-blocking: a send never waits)."""
    while hasattr(sock, "_sock"):
        sock = sock._sock
    return sock


def shutdown(sock: Any) -> None:
    """Shut a socket down so that whatever blocks on it wakes with EPIPE or EOF.

    gevent's own ``shutdown`` would cancel the blocked wait with EBADF instead, which
    gunicorn logs as an error with a traceback; the OS socket's does not.
    """
    try:
        os_socket(sock).shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class SocketWriter:
    """The ``Connection`` of one client: queue, wire form, close state, and the fast path."""

    __slots__ = ("runtime", "queue", "wire", "expires_at", "close_code", "close_reason",
                 "idle", "waiting", "floor", "ended", "_out", "_sock")

    def __init__(self, runtime: Runtime, queue_size: int, wire: str, expires_at: float | None = None) -> None:
        self.runtime = runtime
        self.queue = runtime.send_queue(queue_size)
        self.wire = wire  # the Notification attribute this connection writes
        self.expires_at = expires_at  # the token's expiry: the connection ends then (1008)
        self.close_code: int | None = None
        self.close_reason = ""
        self.idle = False
        self.waiting = False
        self.floor: str | None = None  # resume: notifications up to it were sent from history
        self.ended = False  # the client has gone (WebSocket)
        self._out: Any = None  # the OS socket direct writes go to
        self._sock: Any = None  # the socket to shut if the writer gets stuck

    @property
    def closed(self) -> bool:
        return self.close_code is not None

    def attach(self, sock: Any, direct: bool = True) -> None:
        """The socket this writer's bytes go to; ``direct``: the hub may write to it while idle."""
        self._sock = sock
        if direct and self.runtime.direct_writes:
            self._out = os_socket(sock)

    def detach(self) -> None:
        """The connection is over: no direct write, no shut from now on."""
        self._out = self._sock = None
        self.idle = False

    def offer(self, notes: Sequence[Notification], data: Frames) -> bool:
        """Send at once while idle, else queue; False when the queue is full (too slow)."""
        items: Sequence[Any] = notes
        if self.idle:
            chunk = data[self.wire]
            try:
                sent = self._out.send(chunk)
            except OSError:  # EAGAIN, or a broken socket the loop will find
                sent = 0
            if sent == len(chunk):
                return True
            self.idle = False  # the rest first, through the queue
            items = (chunk[sent:],)
        try:
            for item in items:
                self.queue.put_nowait(item)
        except Full:
            return False
        return True

    def wake(self) -> None:
        """Wake the loop (to close, or to read what the client sent)."""
        try:
            self.queue.put_nowait(WAKE)
        except Full:
            pass  # awake anyway: it has a full queue to drain

    def close(self, code: int, reason: str) -> None:
        """Mark closed and wake the loop, which ends the connection with ``code``.

        A loop that gets stuck in a write to a stalled client (now, or once it wakes to a
        full queue) would never see it: its socket is shut after a grace period, so the
        write fails out. The timer does nothing once the connection has ended.
        """
        if self.close_code is not None:
            return
        self.close_code, self.close_reason = code, reason
        self.wake()
        if self._sock is not None:
            self.runtime.call_at(time.monotonic() + CUT_GRACE, self._shut_if_stuck)

    def _shut_if_stuck(self) -> None:
        if self._sock is not None:
            log.info("shutting socket of a stalled client")
            shutdown(self._sock)

    def batches(self, heartbeat: float, keepalive: bytes, floor: str | None = None,
                replies: Replies | None = None) -> Iterator[bytes]:
        """What to write next, until closed: drained batches, and ``keepalive`` when idle.

        Notifications up to ``floor`` were sent from history at resume and are skipped.
        ``replies`` (WebSocket client messages) adds answers after the drained bytes and
        says when the client has gone. For a server that writes what it is given.
        """
        self.floor, self.ended = floor, False
        while (data := self.next_batch(heartbeat, keepalive, replies)) is not None:
            yield data

    def pump(self, write: Callable[[bytes], Any], heartbeat: float, keepalive: bytes, floor: str | None = None,
             replies: Replies | None = None) -> None:
        """``batches``, each written with ``write``, until closed.

        A plain loop, not a generator: the greenlet of an idle connection then waits with
        one C-level frame less saved (about half a KB each).
        """
        self.floor, self.ended = floor, False
        while (data := self.next_batch(heartbeat, keepalive, replies)) is not None:
            write(data)

    def next_batch(self, heartbeat: float, keepalive: bytes, replies: Replies | None = None) -> bytes | None:
        """The next bytes to write, once there are some; None once closed or the client has gone."""
        queue = self.queue
        while self.close_code is None and not self.ended:
            self.idle = self.floor is None and self._out is not None
            self.waiting = True
            try:
                item = queue.get(self._wait_time(heartbeat))
            except Empty:
                item = None
            finally:
                self.waiting = self.idle = False
            if item is None:
                if not self._expire_if_due():
                    return keepalive
                continue
            chunks = self._drain(item)
            if replies is not None:
                more, self.ended = replies()
                chunks.extend(more)
            if chunks:
                return b"".join(chunks)
        if self.close_code == DISCONNECTED and self.wire.startswith("sse") and not self.ended:
            # An event stream has no close code: it says why it ends in a last event (a
            # WebSocket's close frame carries 4001).
            self.ended = True
            return getattr(disconnect_event(), self.wire)
        return None

    def _drain(self, first: Any) -> list[bytes]:
        """Wire bytes of ``first`` and of whatever else is queued, up to a batch.

        Bytes in the queue are the rest of a direct write that did not fit: wire-ready.
        Once a notification beyond ``floor`` passes, the floor is gone (ids come in order).
        """
        chunks: list[bytes] = []
        item, wire, floor = first, self.wire, self.floor
        try:
            while True:
                if type(item) is bytes:
                    chunks.append(item)
                elif item is not WAKE and (floor is None or item.id > floor):
                    chunks.append(getattr(item, wire))
                    floor = None
                if len(chunks) >= MAX_BATCH:
                    return chunks
                item = self.queue.get_nowait()
        except Empty:
            return chunks
        finally:
            self.floor = floor

    def _wait_time(self, heartbeat: float) -> float:
        """The heartbeat, jittered down by up to a quarter, or less if the token expires sooner.

        A broadcast wakes every connection at once; without jitter all of them would be
        idle for exactly the heartbeat and ping in the same instant (10,000 at once cost a
        worker over a second of CPU and held notifications back that long)."""
        wait = heartbeat * (1.0 - JITTER * random())
        if self.expires_at is None:
            return wait
        return max(0.0, min(wait, self.expires_at - time.time()))

    def _expire_if_due(self) -> bool:
        if self.expires_at is not None and time.time() >= self.expires_at:
            self.close(POLICY, "token expired: reconnect with a fresh one")
            return True
        return False
