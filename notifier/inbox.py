"""A subscriber's bounded queue, with exactly one reader: its transport's writer greenlet.

gevent's ``Queue`` serves any number of readers and writers and carries three deques
(~2.3 KB) per connection; with one reader, a list and the waiting greenlet's ``Waiter``
do. Wake-ups are loop callbacks tagged with the waiter they are for, so a late one
(a put racing the timeout) never wakes a later wait by mistake.
"""
from __future__ import annotations

from typing import Any

from gevent import get_hub
from gevent.hub import Waiter
from gevent.queue import Empty, Full

__all__ = ["Empty", "Full", "Inbox"]


class Inbox:
    """``put_nowait`` from anywhere in the worker's thread; ``get`` from the one writer."""

    __slots__ = ("maxsize", "_items", "_waiting")

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: list[Any] = []
        self._waiting: Waiter | None = None

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items

    def put_nowait(self, item: Any) -> None:
        """Append, or raise ``Full``; wakes the writer if it waits."""
        if len(self._items) >= self.maxsize:
            raise Full
        self._items.append(item)
        waiter = self._waiting
        if waiter is not None and len(self._items) == 1:  # the reader waits on an empty inbox:
            get_hub().loop.run_callback(self._wake, waiter)  # one wake-up for the first item

    def get_nowait(self) -> Any:
        if not self._items:
            raise Empty
        return self._items.pop(0)

    def get(self, timeout: float) -> Any:
        """The oldest item, waiting at most ``timeout`` seconds for one; else raise ``Empty``."""
        if not self._items:
            hub = get_hub()
            waiter = self._waiting = Waiter(hub)
            timer = hub.loop.timer(timeout)
            timer.start(self._wake, waiter)
            try:
                waiter.get()
            finally:
                self._waiting = None
                timer.close()
        return self.get_nowait()

    def _wake(self, waiter: Waiter) -> None:
        # Runs in the hub: only the wait this call was made for is woken, and only once.
        if self._waiting is waiter:
            self._waiting = None
            waiter.switch(None)
