"""Publish rate per publisher (its key, or its address when no keys are set), per second.

A fixed one-second window: in-process a dict, with Redis one counter per publisher and
second shared by every worker on every host (INCR + EXPIRE in one round trip). If Redis
cannot be asked, the publish goes on and fails on its own with 503.
"""
from __future__ import annotations

import hashlib
import math
import threading
import time

from .broker import Broker
from .errors import TooManyRequests


def publisher_id(key: str | None, peer: str) -> str:
    """A name for the publisher that does not reveal its key (it ends up in Redis key names)."""
    if key is None:
        return "peer:" + peer
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:16]


class RateLimiter:
    """In-process limiter: at most ``rate`` publishes per publisher per second."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[int, int]] = {}

    def count(self, who: str, second: int) -> int:
        with self._lock:
            window, n = self._windows.get(who, (second, 0))
            n = n + 1 if window == second else 1
            if len(self._windows) > 10000:  # forget old windows rather than grow forever
                self._windows = {k: v for k, v in self._windows.items() if v[0] == second}
            self._windows[who] = (second, n)
            return n

    def check(self, who: str) -> None:
        """Raise TooManyRequests (with Retry-After) if ``who`` is over its rate this second."""
        now = time.time()
        if self.count(who, int(now)) > self.rate:
            raise TooManyRequests(f"publish rate over {self.rate}/s (NOTIFIER_PUBLISH_RATE)",
                                  retry_after=max(1, math.ceil(int(now) + 1 - now)))


class RedisRateLimiter(RateLimiter):
    """The same limit, counted in Redis so it holds across workers and hosts."""

    def __init__(self, rate: int, client, prefix: str) -> None:
        super().__init__(rate)
        self.client, self.prefix = client, prefix

    def count(self, who: str, second: int) -> int:
        import redis

        key = f"{self.prefix}:rate:{who}:{second}"
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.incr(key)
            pipe.expire(key, 2)
            return int(pipe.execute()[0])
        except redis.RedisError:
            return 0  # fail open: the publish itself will answer 503


def create_rate_limiter(rate: int, broker: Broker, prefix: str) -> RateLimiter:
    client = getattr(broker, "client", None)
    return RedisRateLimiter(rate, client, prefix) if client is not None else RateLimiter(rate)
