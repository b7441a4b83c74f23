"""The in-process broker: a real broker for one worker, with a bounded in-memory history."""
from __future__ import annotations

import threading
from collections import deque

from .broker import Broker, Deliver
from .config import Settings
from .notification import Notification, format_id, now_ms


class MemoryBroker(Broker):
    """Publishing appends to a bounded ring and hands the notification straight to the hub."""

    def __init__(self, settings: Settings) -> None:
        self.history: deque[Notification] = deque(maxlen=settings.history_size)
        self._lock = threading.Lock()
        self._deliver: Deliver | None = None
        self._last = (0, 0)

    def _next_id(self) -> str:
        ms, seq = now_ms(), 0
        last_ms, last_seq = self._last
        if ms <= last_ms:  # same millisecond, or the clock stepped back: keep ids increasing
            ms, seq = last_ms, last_seq + 1
        self._last = (ms, seq)
        return format_id(ms, seq)

    def publish(self, target: str, type: str, fields_json: bytes) -> str:
        with self._lock:
            notification = Notification(self._next_id(), target, type, fields_json)
            self.history.append(notification)
            deliver = self._deliver
            # Dispatch under the lock so hub order is id order across publishers.
            if deliver is not None:
                deliver(notification)
        return notification.id

    def start(self, deliver: Deliver) -> None:
        self._deliver = deliver

    def stop(self) -> None:
        self._deliver = None

    def ready(self) -> bool:
        return True
