"""``Connection``: the one thing the hub knows of a transport.

The hub offers each connection the notifications fanned out to it, with their wire
forms built once (``Frames``); the connection writes them or queues them, and says
``False`` when it cannot keep up (its queue is full), so the hub cuts it. A new
transport is one class with these two methods.
"""
from __future__ import annotations

from typing import Protocol, Sequence

from ..core.notification import Frames, Notification


class Connection(Protocol):
    def offer(self, notes: Sequence[Notification], data: Frames) -> bool:
        """Take ``notes`` (``data`` has their wire bytes); never blocks. False: too slow."""

    def close(self, code: int, reason: str) -> None:
        """End the connection with a close code (``core.closing``); idempotent, never blocks."""
