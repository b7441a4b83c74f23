"""The per-worker registry of live subscribers, indexed by hub key, and the fan-out.

Targeting is a dict lookup: every subscriber sits in the set of each key it listens
to (``@all``, ``@user:<id>``, its topics), and a notification has exactly one key, so
dispatch touches only the subscribers it is for. A full queue never blocks: that
subscriber is cut (WebSocket 1013, SSE end) and counted, and resumes from history.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Iterable

from gevent.queue import Full, Queue

from .notification import BROADCAST, Notification, user_key

log = logging.getLogger(__name__)

# Why a subscriber was closed: the WebSocket close code carries it on the wire.
GOING_AWAY = 1001
POLICY = 1008
RESTART = 1012
TOO_SLOW = 1013

DIRECT_GAP = 0.01
"""Write straight to idle subscribers only when the previous fan-out ended this long ago
(seconds): spread-out notifications then skip a greenlet wake-up per subscriber, while
back-to-back ones (a burst) go through the queues, where each writer drains several
notifications into one write."""

WAKE = object()
"""Queue item that only wakes the transport (closing, or client input to read)."""


def entitled_keys(user_id: str | None, topics: Iterable[str]) -> set[str]:
    """The hub keys a connection listens to: broadcasts, its topics, and its user if known."""
    keys = {BROADCAST, *topics}
    if user_id is not None:
        keys.add(user_key(user_id))
    return keys


class Subscriber:
    """One live client attachment: who it is, what it listens to, and its bounded queue."""

    __slots__ = ("queue", "keys", "user_id", "transport", "close_code", "close_reason", "on_cut", "grant",
                 "wire", "out", "idle", "__weakref__")

    def __init__(self, transport: str, user_id: str | None, topics: Iterable[str], queue_size: int) -> None:
        self.transport = transport
        self.user_id = user_id
        self.queue: Queue = Queue(maxsize=queue_size)
        self.keys = entitled_keys(user_id, topics)
        self.close_code: int | None = None
        self.close_reason = ""
        self.on_cut: Callable[[], None] | None = None
        self.grant: Any = None  # the subscriber's verified token (tokens.Grant), if any
        # Direct writes: while ``idle`` (its writer waits on an empty queue), dispatch
        # sends ``getattr(notification, wire)`` straight to ``out``, the non-blocking OS
        # socket, instead of waking the writer for every notification.
        self.wire = "ws_frame"
        self.out: Any = None
        self.idle = False

    @property
    def expires_at(self) -> float | None:
        return self.grant.expires_at if self.grant is not None else None

    @property
    def closed(self) -> bool:
        return self.close_code is not None

    def close(self, code: int, reason: str) -> None:
        """Mark closed and wake the transport, which ends the connection with ``code``."""
        if self.close_code is not None:
            return
        self.close_code, self.close_reason = code, reason
        try:
            self.queue.put_nowait(WAKE)
        except Full:
            pass  # the transport is awake anyway: it has a full queue to drain
        if self.on_cut is not None:
            self.on_cut()


class Hub:
    """Thread-safe registry of one worker's subscribers; fans notifications out to them."""

    def __init__(self, queue_size: int = 1024) -> None:
        self.queue_size = queue_size
        self._lock = threading.Lock()
        self._index: dict[str, set[Subscriber]] = {}
        self._subscribers: set[Subscriber] = set()
        self.closing = False
        self._last_dispatch = 0.0
        self.delivered = 0
        self.dropped_slow = 0

    def __len__(self) -> int:
        return len(self._subscribers)

    def count(self, transport: str | None = None) -> int:
        with self._lock:
            return sum(1 for s in self._subscribers if transport in (None, s.transport))

    def subscribe(self, transport: str, user_id: str | None = None, topics: Iterable[str] = ()) -> Subscriber:
        """Register a new subscriber; it receives every notification dispatched from now on."""
        sub = Subscriber(transport, user_id, topics, self.queue_size)
        with self._lock:
            if self.closing:
                sub.close_code, sub.close_reason = GOING_AWAY, "server shutting down"
                return sub
            self._subscribers.add(sub)
            for key in sub.keys:
                self._index.setdefault(key, set()).add(sub)
        return sub

    def user_connections(self, user_id: str) -> int:
        """How many live subscribers of this worker are that user's."""
        with self._lock:
            return len(self._index.get(user_key(user_id), ()))

    def add_topic(self, sub: Subscriber, topic: str) -> None:
        with self._lock:
            if sub in self._subscribers:
                sub.keys.add(topic)
                self._index.setdefault(topic, set()).add(sub)

    def remove_topic(self, sub: Subscriber, topic: str) -> None:
        with self._lock:
            sub.keys.discard(topic)
            self._discard(topic, sub)

    def unsubscribe(self, sub: Subscriber) -> None:
        """Forget a subscriber; safe to call twice (transports call it in ``finally``)."""
        with self._lock:
            if sub not in self._subscribers:
                return
            self._subscribers.discard(sub)
            for key in sub.keys:
                self._discard(key, sub)

    def _discard(self, key: str, sub: Subscriber) -> None:
        members = self._index.get(key)
        if members is not None:
            members.discard(sub)
            if not members:
                del self._index[key]

    def dispatch(self, notification: Notification) -> int:
        """Offer a notification to every subscriber of its key; never blocks. Returns deliveries."""
        with self._lock:
            members = self._index.get(notification.target)
            targets = tuple(members) if members else ()
        slow = []
        direct = time.monotonic() - self._last_dispatch >= DIRECT_GAP
        for sub in targets:
            item: Any = notification
            if direct and sub.idle:
                data = getattr(notification, sub.wire)
                try:
                    sent = sub.out.send(data)
                except OSError:  # EAGAIN, or a broken socket the writer will find
                    sent = 0
                if sent == len(data):
                    continue
                if sent:
                    item = data[sent:]
            # Something is queued now: no direct write may overtake it until the writer
            # has drained the queue and waits again (idle implies an empty queue).
            sub.idle = False
            try:
                sub.queue.put_nowait(item)
            except Full:
                slow.append(sub)
        for sub in slow:
            self.dropped_slow += 1
            log.info("subscriber cut: queue full (%d), transport=%s", self.queue_size, sub.transport)
            self.unsubscribe(sub)
            sub.close(TOO_SLOW, "client too slow: reconnect and resume")
        delivered = len(targets) - len(slow)
        self.delivered += delivered
        self._last_dispatch = time.monotonic()
        return delivered

    def close_all(self, code: int = GOING_AWAY, reason: str = "server shutting down", final: bool = True) -> int:
        """Close every live subscriber; ``final`` (shutdown) also refuses new ones."""
        with self._lock:
            self.closing = self.closing or final
            subs = list(self._subscribers)
        for sub in subs:
            if not final:  # they stay registered only while the server winds down
                self.unsubscribe(sub)
            sub.close(code, reason)
        return len(subs)
