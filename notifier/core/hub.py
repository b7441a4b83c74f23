"""The per-worker registry of live subscribers, indexed by hub key, and the fan-out.

Targeting is a dict lookup: every subscriber sits in the set of each key it listens
to (``@all``, ``@user:<id>``, its topics), and a notification has exactly one key, so
fan-out touches only the subscribers it is for. A connection that cannot keep up is
cut (WebSocket 1013, SSE end) and counted, and resumes from history.

Fan-out is coalesced: ``dispatch`` only appends to a batch, and one flush (spaced by
ten times the cost of the previous flush, at most ``flush_interval``, while
notifications keep coming) offers the whole batch to each connection at once, with its
wire forms joined once (``Frames``). Spread-out notifications go out at once; a burst
costs one offer per connection per flush, not per notification. When and where a
flush runs is the runtime's (``notifier.runtime``): the hub never touches a socket.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

from .closing import DISCONNECTED, GOING_AWAY, TOO_SLOW
from .notification import DISCONNECT, Frames, Notification, user_key
from .subscriber import Subscriber

if TYPE_CHECKING:
    from ..runtime import Runtime
    from .presence import Presence
    from ..transports.connection import Connection

log = logging.getLogger(__name__)

FLUSH_COST_SHARE = 10
"""The wait after a flush is this many times what the flush took (up to flush_interval):
fan-outs to a few subscribers go out at once, while costly ones are gathered, so that
writing spends at most about a tenth of the worker's time in system calls."""


class Hub:
    """Thread-safe registry of one worker's subscribers; fans notifications out to them."""

    def __init__(self, runtime: "Runtime", flush_interval: float,
                 on_flush: Callable[[list[Notification]], None] | None = None) -> None:
        self.runtime = runtime
        self.flush_interval = flush_interval
        self.on_flush = on_flush  # told each batch once it is offered (metrics)
        self._lock = threading.Lock()
        self._index: dict[str, set[Subscriber]] = {}
        self._subscribers: set[Subscriber] = set()
        self.closing = False
        self._batch: list[Notification] = []
        self._flush_pending = False
        self._disconnects = False  # the batch holds a user's disconnect (rare: checked per batch)
        self._next_flush = 0.0
        self.delivered = 0
        self.dropped_slow = 0
        self.presence: "Presence | None" = None  # told who attaches and leaves (core.presence)
        self.on_keys: Callable[[], None] | None = None  # told a key got its first subscriber or lost its last
        self._key_changes: set[str] = set()  # such keys, until key_changes() takes them

    def __len__(self) -> int:
        return len(self._subscribers)

    def count(self, transport: str | None = None) -> int:
        with self._lock:
            return sum(1 for s in self._subscribers if transport in (None, s.transport))

    def subscribe(self, connection: "Connection", transport: str, user_id: str | None = None,
                  topics: Iterable[str] = (), grant: object = None) -> Subscriber:
        """Register a connection; it is offered every notification dispatched from now on.

        A hub that is shutting down closes it at once (1001) instead.
        """
        sub = Subscriber(connection, transport, user_id, topics, grant)
        changed = False
        with self._lock:
            attached = not self.closing
            if attached:
                self._subscribers.add(sub)
                for key in sub.keys:
                    changed = self._add(key, sub) or changed
        if changed:
            self._keys_changed()
        presence = self.presence
        if not attached:
            connection.close(GOING_AWAY, "server shutting down")
        elif presence is not None and presence.counts(sub):
            presence.attached(sub)
        return sub

    def keys(self) -> list[str]:
        """Every key some subscriber here listens to now."""
        with self._lock:
            return list(self._index)

    def key_changes(self) -> set[str]:
        """Takes the keys that got their first subscriber or lost their last since the
        last call (each may have changed back since: ask ``wants``)."""
        with self._lock:
            changes, self._key_changes = self._key_changes, set()
        return changes

    def _keys_changed(self) -> None:
        on_keys = self.on_keys
        if on_keys is not None:
            on_keys()

    def wants(self, key: str) -> bool:
        """Whether any subscriber here listens to ``key`` (a lock-free read: a subscriber
        that attaches meanwhile resumes from history, so a skipped notification is not lost)."""
        return key in self._index

    def members(self, key: str) -> list[Subscriber]:
        """The subscribers listening to ``key`` now."""
        with self._lock:
            return list(self._index.get(key, ()))

    def snapshot(self) -> list[Subscriber]:
        """Every live subscriber now."""
        with self._lock:
            return list(self._subscribers)

    def user_connections(self, user_id: str) -> int:
        """How many live subscribers of this worker are that user's."""
        with self._lock:
            return len(self._index.get(user_key(user_id), ()))

    def add_topic(self, sub: Subscriber, topic: str) -> None:
        with self._lock:
            added = sub in self._subscribers and topic not in sub.keys
            if added:
                sub.keys.add(topic)
                changed = self._add(topic, sub)
        if added and changed:
            self._keys_changed()
        if added and self.presence is not None:
            self.presence.topic_added(sub, topic)

    def remove_topic(self, sub: Subscriber, topic: str) -> None:
        with self._lock:
            removed = topic in sub.keys and sub in self._subscribers
            sub.keys.discard(topic)
            changed = self._discard(topic, sub)
        if changed:
            self._keys_changed()
        if removed and self.presence is not None:
            self.presence.topic_removed(sub, topic)

    def unsubscribe(self, sub: Subscriber) -> None:
        """Forget a subscriber; safe to call twice (transports call it in ``finally``)."""
        with self._lock:
            if sub not in self._subscribers:
                return
            self._subscribers.discard(sub)
            changed = False
            for key in sub.keys:
                changed = self._discard(key, sub) or changed
        if changed:
            self._keys_changed()
        presence = self.presence
        if presence is not None and presence.counts(sub):
            presence.detached(sub)

    def _add(self, key: str, sub: Subscriber) -> bool:
        """Index ``sub`` under ``key`` (lock held); True if it is the key's first subscriber."""
        members = self._index.get(key)
        if members is not None:
            members.add(sub)
            return False
        self._index[key] = {sub}
        if self.on_keys is not None:  # else nobody takes them
            self._key_changes.add(key)
        return True

    def _discard(self, key: str, sub: Subscriber) -> bool:
        """Unindex ``sub`` from ``key`` (lock held); True if the key lost its last subscriber."""
        members = self._index.get(key)
        if members is None:
            return False
        members.discard(sub)
        if members:
            return False
        del self._index[key]
        if self.on_keys is not None:  # else nobody takes them
            self._key_changes.add(key)
        return True

    def dispatch(self, notification: Notification) -> None:
        """Add a notification to the next flush; never blocks, never writes."""
        with self._lock:
            self._batch.append(notification)
            if notification.type == DISCONNECT:
                self._disconnects = True
            if self._flush_pending:
                return
            self._flush_pending = True
        self.runtime.call_at(self._next_flush, self.flush)

    def flush(self) -> int:
        """Offer everything dispatched since the last flush. Returns deliveries.

        Runs where the runtime schedules it (a gevent loop callback): it must not block,
        and connections' ``offer`` never does. A user's disconnect closes that user's
        connections in its place in the batch: after what came before it, before the rest.
        """
        try:
            started = time.monotonic()
            with self._lock:
                self._flush_pending = False
                batch, self._batch = self._batch, []
                disconnects, self._disconnects = self._disconnects, False
            if disconnects:
                delivered, batch = self._offer_with_disconnects(batch)
            else:
                delivered = self._offer_batch(batch)
            took = time.monotonic() - started
            self._next_flush = started + min(self.flush_interval, FLUSH_COST_SHARE * took)
            if batch and self.on_flush is not None:
                self.on_flush(batch)
            return delivered
        except Exception:  # a loop callback must not raise; nothing here is expected to
            log.exception("fan-out failed")
            return 0

    def _offer_batch(self, batch: list[Notification]) -> int:
        if not batch:
            return 0
        with self._lock:
            groups = self._groups(batch)
        return sum(self._offer(notes, subs) for notes, subs in groups)

    def _offer_with_disconnects(self, batch: list[Notification]) -> tuple[int, list[Notification]]:
        """The batch in runs between its disconnects, each disconnect closing its user's
        connections after the run before it; (deliveries, the notifications offered)."""
        delivered, run, offered = 0, [], []
        for notification in batch:
            if notification.type != DISCONNECT:
                run.append(notification)
                continue
            delivered += self._offer_batch(run)
            offered += run
            run = []
            self.close_key(notification.target, DISCONNECTED, "disconnected by the server")
        return delivered + self._offer_batch(run), offered + run

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

    def _offer(self, notes: Sequence[Notification], subs: tuple[Subscriber, ...]) -> int:
        data = Frames(notes)
        slow = [sub for sub in subs if not sub.offer(notes, data)]
        for sub in slow:
            self.dropped_slow += 1
            log.info("subscriber cut: send queue full, transport=%s", sub.transport)
            self.unsubscribe(sub)
            sub.connection.close(TOO_SLOW, "client too slow: reconnect and resume")
        delivered = len(notes) * (len(subs) - len(slow))
        self.delivered += delivered
        return delivered

    def close_key(self, key: str, code: int, reason: str) -> int:
        """Close every subscriber listening to ``key`` (a user's: disconnect them)."""
        subs = self.members(key)
        for sub in subs:
            self.unsubscribe(sub)
            sub.connection.close(code, reason)
        return len(subs)

    def close_all(self, code: int = GOING_AWAY, reason: str = "server shutting down", final: bool = True,
                  attached_before: float | None = None) -> int:
        """Close every live subscriber (or those attached before ``attached_before``, a
        ``time.monotonic()``); ``final`` (shutdown) also refuses new ones."""
        with self._lock:
            self.closing = self.closing or final
            subs = [s for s in self._subscribers if attached_before is None or s.since < attached_before]
        for sub in subs:
            if not final:  # they stay registered only while the server winds down
                self.unsubscribe(sub)
            sub.connection.close(code, reason)
        return len(subs)
