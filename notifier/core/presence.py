"""Who is online: presence per topic and per user, and the join/leave events of the topics
that ask for them (``NOTIFIER_PRESENCE_EVENTS``).

The hub tells its ``Presence`` of every subscriber that attaches, leaves or changes
topics. Only identified subscribers (a user), and anonymous ones on event topics, are
tracked: everything else costs one check. ``LocalPresence`` serves the in-process broker
(one worker: its hub is the whole truth); ``brokers.redis_presence.RedisPresence`` serves
every worker and host through Redis.
"""
from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Callable, Iterable

from .notification import BROADCAST

if TYPE_CHECKING:
    from .hub import Hub
    from .subscriber import Subscriber

Emit = Callable[[str, str, str], None]
"""Send a presence event to a topic's subscribers everywhere: (type, topic, user id)."""


class PresenceRules:
    """Which topics get join/leave events: names, or prefixes written ``name*``."""

    def __init__(self, patterns: Iterable[str]) -> None:
        patterns = tuple(patterns)
        self.exact = frozenset(p for p in patterns if not p.endswith("*"))
        self.prefixes = tuple(p[:-1] for p in patterns if p.endswith("*"))
        self.any = bool(patterns)

    def events(self, topic: str) -> bool:
        return topic in self.exact or (bool(self.prefixes) and topic.startswith(self.prefixes))


def topics_of(sub: "Subscriber") -> list[str]:
    """A subscriber's topics: its keys but broadcasts and its user ('@' is in no topic name)."""
    return [key for key in sub.keys if key != BROADCAST and not key.startswith("@")]


class Presence(ABC):
    """One worker's view of presence: told of its subscribers, asked about everyone's."""

    def __init__(self, rules: PresenceRules) -> None:
        self.rules = rules

    def tracked(self, sub: "Subscriber", topics: Iterable[str]) -> list[tuple[str, bool]]:
        """(topic, has events) for each of ``topics`` this subscriber counts in: all of an
        identified one's, an anonymous one's event topics only."""
        if sub.user_id is None and not self.rules.any:
            return []
        events = self.rules.events
        if sub.user_id is None:
            return [(t, True) for t in topics if events(t)]
        return [(t, events(t)) for t in topics]

    def counts(self, sub: "Subscriber") -> bool:
        """Whether this subscriber is in presence: identified, or on a topic with events.
        The hub asks before telling presence anything, so an anonymous subscriber off
        those topics costs this one call."""
        if sub.user_id is not None:
            return True
        return self.rules.any and len(sub.keys) > 1 and any(map(self.rules.events, topics_of(sub)))

    @abstractmethod
    def attached(self, sub: "Subscriber") -> None:
        """A subscriber attached (never blocks: the hub calls it)."""

    @abstractmethod
    def detached(self, sub: "Subscriber") -> None:
        """A subscriber left (never blocks: the hub calls it, also from a fan-out)."""

    @abstractmethod
    def topic_added(self, sub: "Subscriber", topic: str) -> None: ...

    @abstractmethod
    def topic_removed(self, sub: "Subscriber", topic: str) -> None: ...

    @abstractmethod
    def topic(self, topic: str, limit: int = 1000) -> dict[str, Any]:
        """``{"topic", "users": [sorted, at most limit], "connections"}`` everywhere."""

    @abstractmethod
    def online(self, user_id: str) -> int:
        """How many connections ``user_id`` has open everywhere."""

    def start(self) -> None:
        """Begin keeping presence fresh (a background task, where there is one)."""

    def stop(self) -> None:
        """Stop; what this worker still holds expires (Redis) or goes with it (memory)."""

    def flush(self) -> None:
        """Send what changed and is not sent yet (at exit, after the last connections closed)."""


class LocalPresence(Presence):
    """Presence of the in-process broker: the hub's index is the truth; join/leave come
    from a count of each user's connections per event topic."""

    def __init__(self, rules: PresenceRules, hub: "Hub", emit: Emit) -> None:
        super().__init__(rules)
        self.hub = hub
        self.emit = emit
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}

    def attached(self, sub: "Subscriber") -> None:
        self._count_all(sub, 1)

    def detached(self, sub: "Subscriber") -> None:
        self._count_all(sub, -1)

    def _count_all(self, sub: "Subscriber", step: int) -> None:
        if sub.user_id is not None and self.rules.any:
            for topic in topics_of(sub):
                if self.rules.events(topic):
                    self._count(sub.user_id, topic, step)

    def topic_added(self, sub: "Subscriber", topic: str) -> None:
        if sub.user_id is not None and self.rules.events(topic):
            self._count(sub.user_id, topic, 1)

    def topic_removed(self, sub: "Subscriber", topic: str) -> None:
        if sub.user_id is not None and self.rules.events(topic):
            self._count(sub.user_id, topic, -1)

    def _count(self, user: str, topic: str, step: int) -> None:
        with self._lock:
            count = self._counts.get((topic, user), 0) + step
            if count > 0:
                self._counts[(topic, user)] = count
            else:
                self._counts.pop((topic, user), None)
        if count == 1 and step == 1:
            self.emit("notifier.join", topic, user)
        elif count == 0:
            self.emit("notifier.leave", topic, user)

    def topic(self, topic: str, limit: int = 1000) -> dict[str, Any]:
        subs = self.hub.members(topic)
        users = sorted({s.user_id for s in subs if s.user_id is not None})
        counted = len(subs) if self.rules.events(topic) else sum(1 for s in subs if s.user_id is not None)
        return {"topic": topic, "users": users[:limit], "connections": counted}

    def online(self, user_id: str) -> int:
        return self.hub.user_connections(user_id)
