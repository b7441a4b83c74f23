"""Process-level start and stop, called from gunicorn's hooks in ``gunicorn.conf.py``.

The follower must start after gevent has patched the worker (``post_worker_init``), and
long-lived connections never end by themselves, so a watcher closes them politely
(WebSocket 1001, end of SSE stream) as soon as the worker is told to stop. The app's
own settings (``app.config`` included) are checked against gunicorn's here, where both
are known: a worker that cannot serve them refuses to boot, and gunicorn stops.
"""
from __future__ import annotations

import dataclasses
import logging
import sys
import time
from typing import Any

from .config import check_workers
from .errors import ConfigError
from .service import SERVICES

log = logging.getLogger(__name__)

WATCH_INTERVAL = 0.1
WORKER_BOOT_ERROR = 3
"""gunicorn's exit code for a worker that failed to boot: the master then stops, with a reason."""
REFUSE_WAIT = 10.0


def start_all() -> None:
    for service in list(SERVICES):
        service.start()


def stop_all() -> None:
    for service in list(SERVICES):
        service.stop()


def check_server(worker: Any) -> None:
    """Hold every app's notifier settings to gunicorn's: workers need Redis to share; the
    connection cap is gunicorn's ``worker_connections``."""
    for service in list(SERVICES):
        try:
            check_workers(worker.cfg.workers, service.settings)
        except ConfigError as exc:
            refuse(worker, exc)
        slots = worker.cfg.worker_connections
        if service.settings.worker_connections != slots:  # gunicorn's is the real cap
            log.info("notifier takes gunicorn's worker_connections (%d) as its connection cap", slots)
            service.settings = dataclasses.replace(service.settings, worker_connections=slots)


def refuse(worker: Any, exc: ConfigError) -> None:
    """Stop gunicorn, with one line that says why.

    The first worker exits as one that failed to boot, and gunicorn's master stops. The
    others, booting alongside with the same settings, wait to be stopped by it: a second
    boot failure during the master's own halt would end it with a traceback.
    """
    if worker.age == 1:
        log.error("notifier cannot start: %s", exc)
        sys.exit(WORKER_BOOT_ERROR)
    deadline = time.monotonic() + REFUSE_WAIT
    while worker.alive and time.monotonic() < deadline:
        time.sleep(0.05)
    sys.exit(0)


def watch_worker(worker: Any) -> None:
    """In a gunicorn gevent worker: start every notifier, and stop them all when the worker stops.

    Streams may leave their request's greenlet from now on (``transports.handoff``);
    ``drain`` (the ``worker_exit`` hook) waits for them.
    """
    import gevent

    from .transports import handoff

    check_server(worker)
    start_all()
    handoff.enable(worker.log)

    def watch() -> None:
        while worker.alive:
            gevent.sleep(WATCH_INTERVAL)
        log.info("worker stopping: closing all connections")
        stop_all()

    gevent.spawn(watch)


def drain(worker: Any) -> None:
    """In gunicorn's ``worker_exit`` hook: the streams handed over to greenlets of their own are
    not in the connection pool gunicorn waited for, so wait here until they have closed
    (politely: they are told to at once), at most the graceful timeout."""
    from .runtime import detect
    from .transports import handoff

    if not handoff.enabled():
        return
    stop_all()  # if gunicorn noticed the stop before the watcher did
    if not detect().drain(worker.cfg.graceful_timeout):
        log.warning("worker exiting with connections still open")
    for service in list(SERVICES):
        service.presence.flush()  # the connections that closed last leave presence now
