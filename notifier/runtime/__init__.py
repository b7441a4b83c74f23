"""Concurrency, injected: the scheduling primitives the hub, transports and brokers use.

Two runtimes, one interface (as simple-websocket takes its thread and event classes):
``GeventRuntime`` in a gunicorn gevent worker (one thread, cooperative: the hub may
write straight to an idle socket from its flush) and ``ThreadRuntime`` under a threaded
server such as ``flask run`` (a thread per connection, a scheduler thread for flushes).
``detect()`` picks by whether gevent has patched this process.
"""
from __future__ import annotations

import sys
from typing import Any, Callable, ContextManager, Protocol

from ..core.send_queue import SendQueue


class Task(Protocol):
    def stop(self, wait: float = 0) -> None:
        """End the task: a greenlet is killed; a thread's code must check a flag of its own."""


class Watcher(Protocol):
    def start(self, callback: Callable[[], Any]) -> None: ...

    def stop(self) -> None: ...

    def close(self) -> None: ...


class Runtime(Protocol):
    name: str
    direct_writes: bool
    """True when one thread runs everything, so a flush may write to an idle connection's socket."""
    hands_off: bool
    """True when a stream's loop may leave its request's greenlet for one of its own
    (``transports.handoff``): ``start_connection`` then runs it, ``drain`` waits for them."""

    def send_queue(self, maxsize: int) -> SendQueue: ...

    def call_at(self, when: float, fn: Callable[[], Any]) -> None:
        """Run ``fn`` once ``time.monotonic()`` reaches ``when`` (or soon, if past); callable
        from any thread, never blocks the caller."""

    def spawn(self, fn: Callable[..., Any], *args: Any) -> Task: ...

    def start_connection(self, serve: Callable[..., None], *args: Any) -> None:
        """Run ``serve(*args)``, a handed-over connection's whole remaining life (``hands_off`` only)."""

    def drain(self, timeout: float) -> bool:
        """Wait until every connection ``start_connection`` ran has ended; False if some still run."""

    def sleep(self, seconds: float) -> None: ...

    def deadline(self, seconds: float, error: BaseException) -> ContextManager[Any]:
        """Raise ``error`` in the block if it runs past ``seconds`` (a thread's blocking read
        cannot be interrupted: there the block runs to its end)."""

    def watch_readable(self, fileno: int) -> Watcher | None:
        """A watcher that calls back when the socket has something to read, or None if
        this runtime has none (a thread then reads, blocking)."""


def gevent_patched() -> bool:
    """True in a process gevent has monkey-patched (gunicorn's gevent worker does so first)."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and monkey.is_module_patched("socket")


_shared: dict[str, Runtime] = {}


def detect() -> Runtime:
    """The runtime for this process: gevent where gevent patched it, else OS threads.

    One per process, shared by every app in it: the thread runtime's one scheduler thread
    serves them all, so apps made and dropped (a host's tests) leave no thread behind.
    """
    name = "gevent" if gevent_patched() else "threads"
    runtime = _shared.get(name)
    if runtime is None:
        if name == "gevent":
            from .gevent import GeventRuntime

            runtime = GeventRuntime()
        else:
            from .threads import ThreadRuntime

            runtime = ThreadRuntime()
        runtime = _shared.setdefault(name, runtime)
    return runtime
