"""The runtime of a threaded server (``flask run``, with or without ``--debug``): OS threads.

Each connection's request thread waits on its queue (a condition variable); flushes run
on one scheduler thread per runtime, started on first use, so the reloader's watcher
process (which also loads the app) starts none. The hub never writes to a socket here:
sockets are blocking, and only a connection's own thread writes to it.
"""
from __future__ import annotations

import contextlib
import heapq
import logging
import itertools
import threading
import time
from typing import Any, Callable, ContextManager

from ..core.send_queue import SendQueue

log = logging.getLogger(__name__)


class ThreadSendQueue(SendQueue):
    __slots__ = ("_cond",)

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize)
        self._cond = threading.Condition()

    def put_nowait(self, item: Any) -> None:
        with self._cond:
            super().put_nowait(item)

    def _first_put(self) -> None:
        self._cond.notify()

    def get_nowait(self) -> Any:
        with self._cond:
            return super().get_nowait()

    def get(self, timeout: float) -> Any:
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            return super().get_nowait()


class _Thread:
    """A thread cannot be killed: its code checks a flag of its own; ``stop`` waits for it."""

    def __init__(self, thread: threading.Thread) -> None:
        self.thread = thread

    def stop(self, wait: float = 0) -> None:
        if wait > 0 and self.thread is not threading.current_thread():
            self.thread.join(wait)


class ThreadRuntime:
    name = "threads"
    direct_writes = False
    hands_off = False  # a thread per connection: nothing to gain from changing it

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: list[tuple[float, int, Callable[[], Any]]] = []
        self._order = itertools.count()
        self._scheduler: threading.Thread | None = None

    def send_queue(self, maxsize: int) -> SendQueue:
        return ThreadSendQueue(maxsize)

    def call_at(self, when: float, fn: Callable[[], Any]) -> None:
        with self._cond:
            heapq.heappush(self._due, (when, next(self._order), fn))
            if self._scheduler is None:
                self._scheduler = threading.Thread(target=self._run, name="notifier-scheduler", daemon=True)
                self._scheduler.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._due or self._due[0][0] > time.monotonic():
                    self._cond.wait(self._due[0][0] - time.monotonic() if self._due else None)
                _, _, fn = heapq.heappop(self._due)
            try:
                fn()
            except Exception:  # the scheduler must outlive any one call
                log.exception("scheduled call failed")

    def spawn(self, fn: Callable[..., Any], *args: Any) -> _Thread:
        thread = threading.Thread(target=fn, args=args, name=f"notifier-{getattr(fn, '__name__', 'task')}",
                                  daemon=True)
        thread.start()
        return _Thread(thread)

    def start_connection(self, serve: Callable[..., None], *args: Any) -> None:
        raise NotImplementedError("streams stay on their request's thread here (hands_off is False)")

    def drain(self, timeout: float) -> bool:
        return True

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def deadline(self, seconds: float, error: BaseException) -> ContextManager[Any]:
        return contextlib.nullcontext()

    def watch_readable(self, fileno: int) -> None:
        return None
