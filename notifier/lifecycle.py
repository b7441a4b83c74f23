"""Process-level start and stop, called from gunicorn's hooks in ``gunicorn.conf.py``.

The follower must start after gevent has patched the worker (``post_worker_init``), and
long-lived connections never end by themselves, so a watcher closes them politely
(WebSocket 1001, end of SSE stream) as soon as the worker is told to stop.
"""
from __future__ import annotations

import logging
from typing import Any

from .state import STATES

log = logging.getLogger(__name__)

WATCH_INTERVAL = 0.1


def start_all() -> None:
    for state in list(STATES):
        state.start()


def stop_all() -> None:
    for state in list(STATES):
        state.stop()


def watch_worker(worker: Any) -> None:
    """In a gunicorn worker: start every notifier, and stop them all when the worker stops."""
    import gevent

    start_all()

    def watch() -> None:
        while worker.alive:
            gevent.sleep(WATCH_INTERVAL)
        log.info("worker stopping: closing all connections")
        stop_all()

    gevent.spawn(watch)
