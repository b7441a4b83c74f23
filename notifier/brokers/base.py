"""The broker interface: moves notifications between processes and keeps history.

Two real implementations, chosen by the Redis URL (``NOTIFIER_REDIS_URL`` or ``REDIS_URL``): in-process (the embedded default,
one worker) and Redis (every worker on every host). The Redis one is imported lazily,
so the embedded default never needs the ``redis`` package to be reachable.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Callable, Protocol, Sequence

from ..config import Settings
from ..core.notification import Notification
from ..idempotency import Idempotency, Published
from ..runtime import Runtime

if TYPE_CHECKING:
    from ..core.hub import Hub
    from ..core.presence import Emit, Presence, PresenceRules

Deliver = Callable[[Notification], None]
Entry = tuple[str, str, bytes]
"""One notification to store: (hub key, type, the JSON of its fields)."""
OnGap = Callable[[float], None]
"""Told the ``time.monotonic()`` at which the broker stopped following: connections
attached since then resumed from history as it is now, so only older ones must resume."""
Wants = Callable[[str], bool]


class HubKeys(Protocol):
    """Which hub keys a worker's connections listen to, and when that changes (the hub)."""

    on_keys: Callable[[], None] | None
    """Called (from any thread, cheaply) when a key got its first subscriber or lost its last."""

    def keys(self) -> list[str]: ...

    def key_changes(self) -> set[str]:
        """Takes the keys changed since the last call."""

    def wants(self, key: str) -> bool: ...


class Broker(ABC):
    """Accepts publishes (into history) and delivers every notification to this worker's hub."""

    @abstractmethod
    def publish(self, entries: Sequence[Entry], publisher: str | None = None,
                idempotency: Idempotency | None = None) -> Published:
        """Store notifications in history, all or none, and send them to every worker; return
        their ids in order. An entry is (hub key, type, the fields' JSON).

        Raises ``BrokerUnavailable`` if they were not stored: the caller must not answer 202.
        A ``publisher`` (see ``ratelimit.publisher_id``) is held to NOTIFIER_PUBLISH_RATE, each
        notification counted (a publisher under it may send a whole batch at once): over it,
        nothing is stored and ``TooManyRequests`` is raised. With ``idempotency``,
        a key seen before returns the first id (``replayed``) and stores nothing, or raises
        ``IdempotencyConflict`` when it came with another body — checked in the same step
        that stores the notification.
        """

    @abstractmethod
    def start(self, deliver: Deliver, on_gap: OnGap | None = None, wants: Wants | None = None) -> None:
        """Begin handing every notification published from now on to ``deliver`` (idempotent).

        ``wants(hub key)`` says whether anyone here listens to that key: a broker that
        reads what other processes published may skip the rest without decoding it.

        ``on_gap`` is called if the broker finds it can no longer deliver everything
        after the last notification it delivered (its history moved past that point), with
        the time it lost its place.
        """

    def follow_keys(self, keys: HubKeys) -> None:
        """Told where to learn which hub keys this worker listens to: a broker that can be
        woken for those alone uses it. This one reads everything: it needs none."""

    def live_floor(self, keys: set[str]) -> str | None:
        """For a connection about to attach for ``keys`` with no resume point: the id up to
        which what it is offered was published before it came (skip it), or None when this
        broker hands a notification to the hub as soon as it is published."""
        return None

    @abstractmethod
    def history(self, after: str | None = None) -> list[Notification] | None:
        """History, oldest first: every notification after ``after`` (all of it if None),
        without what is sent through but never kept (``EPHEMERAL``: disconnects, joins, leaves).

        None when ``after`` is not in history (trimmed, expired, or another epoch): what
        came after it can no longer be told, so the caller sends ``notifier.reset``.
        Raises ``BrokerUnavailable`` when history cannot be read.
        """

    @abstractmethod
    def newest_id(self) -> str | None:
        """The id of the newest notification in history, if any."""

    @abstractmethod
    def stop(self) -> None:
        """Stop following; publishing may still work."""

    @abstractmethod
    def ready(self) -> bool:
        """True when a publish would reach the broker now."""

    def presence(self, rules: "PresenceRules", hub: "Hub", emit: "Emit") -> "Presence":
        """Presence as this broker can keep it: here, one worker's hub is all there is."""
        from ..core.presence import LocalPresence

        return LocalPresence(rules, hub, emit)


def create_broker(settings: Settings, runtime: Runtime) -> Broker:
    """The broker the settings call for: Redis when a Redis URL is set, else in-process."""
    if settings.redis_url:
        from .redis import RedisBroker

        return RedisBroker(settings, runtime)
    from .memory import MemoryBroker

    return MemoryBroker(settings)

