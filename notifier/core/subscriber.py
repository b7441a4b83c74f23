"""A subscriber: one live client attachment as the hub sees it — who, what it listens to,
and the connection that takes its bytes."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Iterable

from .notification import BROADCAST, user_key

if TYPE_CHECKING:
    from ..transports.connection import Connection


def entitled_keys(user_id: str | None, topics: Iterable[str]) -> set[str]:
    """The hub keys a connection listens to: broadcasts, its topics, and its user if known."""
    keys = {BROADCAST, *topics}
    if user_id is not None:
        keys.add(user_key(user_id))
    return keys


class Subscriber:
    """Registered in the hub under each of its ``keys``; ``connection`` takes what is fanned out."""

    __slots__ = ("connection", "offer", "keys", "user_id", "transport", "grant", "since", "__weakref__")

    def __init__(self, connection: "Connection", transport: str, user_id: str | None,
                 topics: Iterable[str], grant: Any = None) -> None:
        self.connection = connection
        self.offer = connection.offer  # bound once: the fan-out calls it for every batch
        self.transport = transport
        self.user_id = user_id
        self.keys = entitled_keys(user_id, topics)
        self.grant = grant  # the verified token (tokens.Grant), if any
        self.since = time.monotonic()  # when it attached: a broker's gap closes only older ones

    @property
    def topics(self) -> int:
        """How many topics it listens to, besides broadcasts and its user."""
        return len(self.keys) - 1 - (self.user_id is not None)
