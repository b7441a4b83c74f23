"""The in-process broker: a real broker for one worker, with a bounded in-memory history."""
from __future__ import annotations

import threading
from collections import deque

from ..config import Settings
from ..core.notification import Notification, format_id, now_ms
from ..ratelimit import RateLimiter
from .base import Broker, Deliver, OnGap


class MemoryBroker(Broker):
    """Publishing appends to a bounded ring and hands the notification straight to the hub."""

    def __init__(self, settings: Settings) -> None:
        self.ring: deque[Notification] = deque(maxlen=settings.history_size)
        self.ttl_ms = settings.history_ttl * 1000
        self._lock = threading.Lock()
        self._deliver: Deliver | None = None
        self._last = (0, 0)
        self._limiter = RateLimiter(settings.publish_rate)

    def _next_id(self) -> str:
        ms, seq = now_ms(), 0
        last_ms, last_seq = self._last
        if ms <= last_ms:  # same millisecond, or the clock stepped back: keep ids increasing
            ms, seq = last_ms, last_seq + 1
        self._last = (ms, seq)
        return format_id(ms, seq)

    def publish(self, target: str, type: str, fields_json: bytes, publisher: str | None = None) -> str:
        if publisher is not None:
            self._limiter.check(publisher)
        with self._lock:
            notification = Notification(self._next_id(), target, type, fields_json)
            self.ring.append(notification)
            deliver = self._deliver
            # Dispatch under the lock so hub order is id order across publishers.
            if deliver is not None:
                deliver(notification)
        return notification.id

    def history(self, after: str | None = None) -> list[Notification] | None:
        cutoff = format_id(now_ms() - self.ttl_ms, 0)
        newer: list[Notification] = []
        found = after is None
        with self._lock:
            for notification in reversed(self.ring):  # newest first: a resume reads only what it missed
                if notification.id < cutoff:
                    break
                if after is not None and notification.id <= after:
                    found = notification.id == after
                    break
                newer.append(notification)
        if not found:
            return None
        newer.reverse()
        return newer

    def newest_id(self) -> str | None:
        with self._lock:
            return self.ring[-1].id if self.ring else None

    def start(self, deliver: Deliver, on_gap: OnGap | None = None) -> None:
        self._deliver = deliver

    def stop(self) -> None:
        self._deliver = None

    def ready(self) -> bool:
        return True
