"""What both transports share: draining a queue into one write, and cutting a stuck writer."""
from __future__ import annotations

import logging
import socket
from typing import Callable

import gevent
from gevent.queue import Empty, Queue

from .hub import WAKE

log = logging.getLogger(__name__)

MAX_BATCH = 256
CUT_GRACE = 2.0
"""Seconds a cut subscriber's writer gets to end the stream before its socket is shut."""


def drain(queue: Queue, first: object, attr: str, floor: str | None) -> tuple[list[bytes], str | None]:
    """Wire bytes (``attr``) of ``first`` and of whatever else is queued, up to a batch.

    Notifications up to ``floor`` were already sent from history at resume and are
    skipped; once one beyond it passes, the floor is gone (ids arrive in order).
    """
    chunks: list[bytes] = []
    item = first
    while True:
        if item is not WAKE and (floor is None or item.id > floor):
            chunks.append(getattr(item, attr))
            floor = None
        if len(chunks) >= MAX_BATCH:
            return chunks, floor
        try:
            item = queue.get_nowait()
        except Empty:
            return chunks, floor


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
        getattr(sock, "_sock", sock).shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
