"""The in-process broker: a real broker for one worker, with a bounded in-memory history."""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Sequence

from ..config import Settings
from ..core.notification import EPHEMERAL, Notification, format_id, now_ms
from ..errors import IdempotencyConflict
from ..idempotency import CONFLICT, Idempotency, Published
from ..ratelimit import RateLimiter
from .base import Broker, Deliver, Entry, OnGap, Wants


MAX_KEYS = 100_000
"""Idempotency keys kept in memory at most (each for NOTIFIER_IDEMPOTENCY_TTL)."""


class MemoryBroker(Broker):
    """Publishing appends to a bounded ring and hands the notification straight to the hub."""

    def __init__(self, settings: Settings) -> None:
        self.ring: deque[Notification] = deque(maxlen=settings.history_size)
        self.ttl_ms = settings.history_ttl * 1000
        self._lock = threading.Lock()
        self._deliver: Deliver | None = None
        self._wants: Wants | None = None
        self._last = (0, 0)
        self._limiter = RateLimiter(settings.publish_rate)
        self._keys: dict[str, tuple[list[str], str, float]] = {}  # idempotency: name -> (ids, fingerprint, until)

    def _next_id(self) -> str:
        ms, seq = now_ms(), 0
        last_ms, last_seq = self._last
        if ms <= last_ms:  # same millisecond, or the clock stepped back: keep ids increasing
            ms, seq = last_ms, last_seq + 1
        self._last = (ms, seq)
        return format_id(ms, seq)

    def publish(self, entries: Sequence[Entry], publisher: str | None = None,
                idempotency: Idempotency | None = None) -> Published:
        with self._lock:
            if idempotency is not None:
                seen = self._keys.get(idempotency.name)
                if seen is not None and seen[2] > time.monotonic():
                    if seen[1] != idempotency.fingerprint:
                        raise IdempotencyConflict(CONFLICT)
                    return Published(seen[0], replayed=True)
            if publisher is not None:
                self._limiter.check(publisher, len(entries))
            notifications = [Notification(self._next_id(), *entry) for entry in entries]
            ids = [n.id for n in notifications]
            if idempotency is not None:
                self._remember(idempotency, ids)
            self.ring.extend(n for n in notifications if n.type not in EPHEMERAL)  # those are sent, not kept
            deliver, wants = self._deliver, self._wants
            # Dispatch under the lock so hub order is id order across publishers; only what
            # a connection here wants (one that attaches later resumes from the ring).
            if deliver is not None:
                for notification in notifications:
                    if wants is None or wants(notification.target):
                        deliver(notification)
        return Published(ids)

    def _remember(self, idempotency: Idempotency, ids: list[str]) -> None:
        now = time.monotonic()
        if len(self._keys) >= MAX_KEYS:  # forget the expired, then the oldest: memory stays bounded
            self._keys = {k: v for k, v in self._keys.items() if v[2] > now}
            while len(self._keys) >= MAX_KEYS:
                del self._keys[next(iter(self._keys))]
        self._keys[idempotency.name] = (ids, idempotency.fingerprint, now + idempotency.ttl)

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

    def start(self, deliver: Deliver, on_gap: OnGap | None = None, wants: Wants | None = None) -> None:
        self._deliver, self._wants = deliver, wants

    def stop(self) -> None:
        self._deliver = None

    def ready(self) -> bool:
        return True
