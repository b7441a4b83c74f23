"""What both transports share: draining a queue into one write, and cutting a stuck writer."""
from __future__ import annotations

import logging
import socket
import time
from typing import Any, Callable

import gevent
from gevent.queue import Empty

from .hub import POLICY, WAKE, Subscriber
from .inbox import Inbox

log = logging.getLogger(__name__)

MAX_BATCH = 256
CUT_GRACE = 2.0
"""Seconds a cut subscriber's writer gets to end the stream before its socket is shut."""


def wait_time(sub: Subscriber, heartbeat: float) -> float:
    """How long to wait for the queue: the heartbeat, or less if the token expires sooner."""
    expires_at = sub.expires_at
    return heartbeat if expires_at is None else max(0.0, min(heartbeat, expires_at - time.time()))


def expire_if_due(sub: Subscriber) -> bool:
    """Close a subscriber whose token has expired (1008 / end of stream); True if it did."""
    expires_at = sub.expires_at
    if expires_at is not None and time.time() >= expires_at:
        sub.close(POLICY, "token expired: reconnect with a fresh one")
        return True
    return False


def drain(queue: Inbox, first: object, attr: str, floor: str | None) -> tuple[list[bytes], str | None]:
    """Wire bytes (``attr``) of ``first`` and of whatever else is queued, up to a batch.

    Notifications up to ``floor`` were already sent from history at resume and are
    skipped; once one beyond it passes, the floor is gone (ids arrive in order). Bytes
    in the queue are the rest of a direct write that did not fit: already wire-ready.
    """
    chunks: list[bytes] = []
    item = first
    while True:
        if type(item) is bytes:
            chunks.append(item)
        elif item is not WAKE and (floor is None or item.id > floor):
            chunks.append(getattr(item, attr))
            floor = None
        if len(chunks) >= MAX_BATCH:
            return chunks, floor
        try:
            item = queue.get_nowait()
        except Empty:
            return chunks, floor


def os_socket(sock: Any) -> Any:
    """The OS socket under gevent's (non-blocking: a send never waits)."""
    while hasattr(sock, "_sock"):
        sock = sock._sock
    return sock


def pump(sub: Subscriber, sock: Any, heartbeat: float, keepalive: bytes, floor: str | None,
         extra: Callable[[], tuple[list[bytes], bool]] | None = None) -> None:
    """Move a subscriber's queue onto ``sock`` until it is closed: the loop of both transports.

    While nothing is queued and no resume floor is left, the subscriber is ``idle`` and
    the hub writes to its socket directly; any item in the queue wakes this loop, which
    then drains everything into one write. ``extra`` adds replies (WebSocket client
    messages), written after the drained bytes, and says when the client has gone.
    """
    queue = sub.queue
    wire = sub.wire
    sub.out = os_socket(sock)
    try:
        while not sub.closed:
            sub.idle = floor is None
            try:
                item = queue.get(timeout=wait_time(sub, heartbeat))
            except Empty:
                sub.idle = False
                if not expire_if_due(sub):
                    sock.sendall(keepalive)
                continue
            sub.idle = False
            chunks, floor = drain(queue, item, wire, floor)
            gone = False
            if extra is not None:
                more, gone = extra()
                chunks.extend(more)
            if chunks:
                sock.sendall(b"".join(chunks))
            if gone:
                return
    finally:
        sub.idle = False


def shut_later(sock: socket.socket | None, still_open: Callable[[], bool]) -> None:
    """After a grace period, shut the socket of a cut subscriber whose writer is stuck."""
    if sock is None:
        return

    def shut() -> None:
        if still_open():
            log.info("shutting socket of a stalled client")
            shutdown(sock)

    gevent.spawn_later(CUT_GRACE, shut)


def shutdown(sock: socket.socket) -> None:
    """Shut a socket down so that a greenlet blocked on it wakes with EPIPE or EOF.

    gevent's own ``shutdown`` would cancel the blocked wait with EBADF instead, which
    gunicorn logs as an error with a traceback; the raw socket's does not.
    """
    try:
        os_socket(sock).shutdown(socket.SHUT_RDWR)  # unwrapping a closed one raises EBADF
    except OSError:
        pass
