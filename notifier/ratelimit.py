"""Publish rate per publisher (its key, or its address when no keys are set), per second.

A fixed one-second window. The broker counts it as part of the publish: in-process a
dict (``RateLimiter``); with Redis one counter per publisher and second, shared by every
worker on every host, counted by the publish script itself (no extra round trip).
"""
from __future__ import annotations

import functools
import hashlib
import math
import threading
import time
from typing import Any, Mapping

from .auth import socket_peer
from .errors import TooManyRequests


def publisher_id(key: str | None, environ: Mapping[str, Any]) -> str:
    """A name for the publisher that does not reveal its key (it ends up in Redis key names):
    its key's, or without one its address."""
    if key is None:
        return "peer:" + socket_peer(environ)
    return _key_name(key)


@functools.lru_cache(maxsize=64)
def _key_name(key: str) -> str:
    """Hashed once per key, not per publish (the keys are few: NOTIFIER_API_KEYS)."""
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:16]


class RateLimiter:
    """In-process limiter: at most ``rate`` publishes per publisher per second."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[int, int]] = {}

    def count(self, who: str, second: int, n: int = 1) -> int:
        """Add ``n`` to ``who``'s count this second; the count before them."""
        with self._lock:
            window, before = self._windows.get(who, (second, 0))
            if window != second:
                before = 0
            n = before + n
            if len(self._windows) > 10000:  # forget old windows rather than grow forever
                self._windows = {k: v for k, v in self._windows.items() if v[0] == second}
            self._windows[who] = (second, n)
            return before

    def check(self, who: str, n: int = 1) -> None:
        """Count ``n`` publishes; raise TooManyRequests (with Retry-After) if ``who`` had
        already reached its rate this second (so a batch of any size fits a fresh second)."""
        now = time.time()
        if self.count(who, int(now), n) >= self.rate:
            raise too_many(self.rate, now)


def too_many(rate: int, now: float) -> TooManyRequests:
    """The 429 for a publisher over ``rate``, retrying at the next second's window."""
    return TooManyRequests(f"publish rate over {rate}/s (NOTIFIER_PUBLISH_RATE)",
                           retry_after=max(1, math.ceil(int(now) + 1 - now)))
