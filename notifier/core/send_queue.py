"""A connection's bounded send queue, with exactly one reader: that connection's writer.

The list logic is here; how the one reader waits and is woken is the runtime's
(``notifier.runtime``): a gevent ``Waiter`` in a gunicorn gevent worker, a condition
variable under a threaded server. A full queue never blocks the hub: ``put_nowait``
raises ``Full`` and the hub cuts that client.
"""
from __future__ import annotations

from typing import Any

__all__ = ["Empty", "Full", "SendQueue"]


class Empty(Exception):
    """Nothing came within the wait."""


class Full(Exception):
    """The queue holds ``maxsize`` items: the client is too slow."""


class SendQueue:
    """``put_nowait`` from the hub (or anyone); ``get`` from the one writer."""

    __slots__ = ("maxsize", "_items")

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: list[Any] = []

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items

    def put_nowait(self, item: Any) -> None:
        """Append, or raise ``Full``; wakes the reader when the queue was empty."""
        if len(self._items) >= self.maxsize:
            raise Full
        self._items.append(item)
        if len(self._items) == 1:
            self._first_put()

    def get_nowait(self) -> Any:
        if not self._items:
            raise Empty
        return self._items.pop(0)

    def get(self, timeout: float) -> Any:
        """The oldest item, waiting at most ``timeout`` seconds for one; else raise ``Empty``."""
        if not self._items:
            self._wait(timeout)
        return self.get_nowait()

    def _first_put(self) -> None:
        """The runtime's hook: wake the reader if it waits."""

    def _wait(self, timeout: float) -> None:
        """The runtime's hook: return once an item came or ``timeout`` passed."""
        raise NotImplementedError
