"""The per-worker registry of live subscribers, indexed by hub key, and the fan-out.

Targeting is a dict lookup: every subscriber sits in the set of each key it listens
to (``@all``, ``@user:<id>``, its topics), and a notification has exactly one key, so
fan-out touches only the subscribers it is for. A full queue never blocks: that
subscriber is cut (WebSocket 1013, SSE end) and counted, and resumes from history.

Fan-out is coalesced: ``dispatch`` only appends to a batch, and one flush per loop
iteration (spaced by ten times the cost of the previous flush, at most ``flush_interval``,
while notifications keep coming) writes the whole batch to each subscriber in one ``send`` on its non-blocking socket when its
writer is idle, or queues it for the writer otherwise. Spread-out notifications go
out at once; a burst costs one system call per subscriber per flush, not per
notification, and no greenlet wakes up.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Iterable, Sequence

import gevent

from .inbox import Full, Inbox
from .notification import BROADCAST, Notification, user_key

log = logging.getLogger(__name__)

# Why a subscriber was closed: the WebSocket close code carries it on the wire.
GOING_AWAY = 1001
POLICY = 1008
RESTART = 1012
TOO_SLOW = 1013

FLUSH_INTERVAL = 0.025
"""Most seconds between two flushes while notifications keep coming (NOTIFIER_FLUSH_INTERVAL)."""
FLUSH_COST_SHARE = 10
"""The wait after a flush is this many times what the flush took (up to FLUSH_INTERVAL):
fan-outs to a few subscribers go out at once, while costly ones are gathered, so that
writing spends at most about a tenth of the worker's time in system calls."""

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
        self.queue = Inbox(queue_size)
        self.keys = entitled_keys(user_id, topics)
        self.close_code: int | None = None
        self.close_reason = ""
        self.on_cut: Callable[[], None] | None = None
        self.grant: Any = None  # the subscriber's verified token (tokens.Grant), if any
        # Direct writes: while ``idle`` (its writer waits on an empty queue), a flush
        # sends ``getattr(notification, wire)`` straight to ``out``, the non-blocking OS
        # socket, instead of waking the writer.
        self.wire = "ws_frame"
        self.out: Any = None
        self.idle = False

    @property
    def expires_at(self) -> float | None:
        return self.grant.expires_at if self.grant is not None else None

    @property
    def closed(self) -> bool:
        return self.close_code is not None

    def wake(self) -> None:
        """Wake the transport's writer (to close, or to read what the client sent)."""
        try:
            self.queue.put_nowait(WAKE)
        except Full:
            pass  # awake anyway: it has a full queue to drain

    def close(self, code: int, reason: str) -> None:
        """Mark closed and wake the transport, which ends the connection with ``code``."""
        if self.close_code is not None:
            return
        self.close_code, self.close_reason = code, reason
        self.wake()
        if self.on_cut is not None:
            self.on_cut()


class Hub:
    """Thread-safe registry of one worker's subscribers; fans notifications out to them."""

    def __init__(self, queue_size: int = 1024, flush_interval: float = FLUSH_INTERVAL,
                 on_flush: Callable[[list[Notification]], None] | None = None) -> None:
        self.queue_size = queue_size
        self.flush_interval = flush_interval
        self.on_flush = on_flush  # told each batch once it is written (metrics)
        self._lock = threading.Lock()
        self._index: dict[str, set[Subscriber]] = {}
        self._subscribers: set[Subscriber] = set()
        self.closing = False
        self._batch: list[Notification] = []
        self._flush_pending = False
        self._next_flush = 0.0
        self._timer: Any = None
        # Flushes run on the event loop of the thread that made the hub (the worker's);
        # a dispatch from another OS thread hands the scheduling over to it.
        self._loop_hub = gevent.get_hub()
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

    def dispatch(self, notification: Notification) -> None:
        """Add a notification to the next flush; never blocks, never writes."""
        with self._lock:
            self._batch.append(notification)
            if self._flush_pending:
                return
            self._flush_pending = True
        if threading.get_ident() == self._loop_hub.thread_ident:
            self._schedule()
        else:
            self._loop_hub.loop.run_callback_threadsafe(self._schedule)

    def _schedule(self) -> None:
        loop = self._loop_hub.loop
        wait = self._next_flush - time.monotonic()
        if wait <= 0:
            loop.run_callback(self.flush)
        else:
            if self._timer is not None:
                self._timer.close()
            self._timer = loop.timer(wait)
            self._timer.start(self.flush)

    def flush(self) -> int:
        """Write out everything dispatched since the last flush. Returns deliveries.

        Runs as a loop callback: it must not block, so it only sends what the socket
        takes at once and leaves the rest (and everything for a busy writer) queued.
        """
        try:
            started = time.monotonic()
            with self._lock:
                self._flush_pending = False
                batch, self._batch = self._batch, []
                groups = self._groups(batch) if batch else []
            delivered = sum(self._send(notes, subs) for notes, subs in groups)
            took = time.monotonic() - started
            self._next_flush = started + min(self.flush_interval, FLUSH_COST_SHARE * took)
            if batch and self.on_flush is not None:
                self.on_flush(batch)
            return delivered
        except Exception:  # a loop callback must not raise; nothing here is expected to
            log.exception("fan-out failed")
            return 0

    def _groups(self, batch: list[Notification]) -> list[tuple[Sequence[Notification], tuple[Subscriber, ...]]]:
        """The batch split by who gets what: subscribers listening to the same keys
        among the batch's get the same notifications, so the same bytes."""
        target = batch[0].target
        if all(n.target == target for n in batch):  # the usual case: one key
            members = self._index.get(target)
            return [(batch, tuple(members))] if members else []
        keys_of: dict[Subscriber, list[str]] = {}
        for key in dict.fromkeys(n.target for n in batch):
            for sub in self._index.get(key, ()):
                keys_of.setdefault(sub, []).append(key)
        by_keys: dict[frozenset[str], list[Subscriber]] = {}
        for sub, keys in keys_of.items():
            by_keys.setdefault(frozenset(keys), []).append(sub)
        return [([n for n in batch if n.target in keys], tuple(subs)) for keys, subs in by_keys.items()]

    def _send(self, notes: Sequence[Notification], subs: tuple[Subscriber, ...]) -> int:
        """Give ``notes`` to each of ``subs``: one send if its writer is idle, else its queue."""
        wires: dict[str, bytes] = {}
        slow = []
        for sub in subs:
            if sub.idle:
                data = wires.get(sub.wire)
                if data is None:
                    data = wires[sub.wire] = b"".join([getattr(n, sub.wire) for n in notes])
                try:
                    sent = sub.out.send(data)
                except OSError:  # EAGAIN, or a broken socket the writer will find
                    sent = 0
                if sent == len(data):
                    continue
                # The rest goes through the queue, and so does everything after it
                # until the writer has drained it and waits again (idle ⇒ empty queue).
                sub.idle = False
                items: Sequence[Any] = (data[sent:],)
            else:
                items = notes
            try:
                for item in items:
                    sub.queue.put_nowait(item)
            except Full:
                slow.append(sub)
        for sub in slow:
            self.dropped_slow += 1
            log.info("subscriber cut: queue full (%d), transport=%s", self.queue_size, sub.transport)
            self.unsubscribe(sub)
            sub.close(TOO_SLOW, "client too slow: reconnect and resume")
        delivered = len(notes) * (len(subs) - len(slow))
        self.delivered += delivered
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
