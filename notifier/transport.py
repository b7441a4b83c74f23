"""What both transports share: draining a queue into one write, and cutting a stuck writer."""
from __future__ import annotations

import logging
import socket
from typing import Callable

import gevent
from gevent.queue import Empty

from .hub import WAKE, Subscriber

log = logging.getLogger(__name__)

MAX_BATCH = 256
CUT_GRACE = 2.0
"""Seconds a cut subscriber's writer gets to end the stream before its socket is shut."""


def drain(sub: Subscriber, first: object, attr: str) -> list[bytes]:
    """The wire bytes of ``first`` and of everything else already queued (up to a batch)."""
    chunks = [] if first is WAKE else [getattr(first, attr)]
    queue = sub.queue
    while len(chunks) < MAX_BATCH:
        try:
            item = queue.get_nowait()
        except Empty:
            break
        if item is not WAKE:
            chunks.append(getattr(item, attr))
    return chunks


def shut_later(sock: socket.socket | None, still_open: Callable[[], bool]) -> None:
    """After a grace period, shut the socket of a cut subscriber whose writer is stuck."""
    if sock is None:
        return

    def shut() -> None:
        if still_open():
            log.info("shutting socket of a stalled client")
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    gevent.spawn_later(CUT_GRACE, shut)
