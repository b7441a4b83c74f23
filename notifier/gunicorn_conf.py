"""gunicorn settings for notifier: gevent workers, connection slots, and the hooks that start
every app's notifier after gevent patched the worker, check its settings against gunicorn's,
and close every connection politely when the worker stops.

The repo's ``gunicorn.conf.py`` imports them; a host app's gunicorn takes them with
``-c python:notifier.gunicorn_conf``. Values in GUNICORN_CMD_ARGS override these, as
gunicorn documents.
"""
import glob
import os
import shutil
import sys
import tempfile

from notifier.config import Settings, metrics_dir, server_port, server_workers
from notifier.errors import ConfigError

__all__ = ["bind", "workers", "worker_class", "worker_connections", "timeout", "graceful_timeout", "keepalive",
           "preload_app", "control_socket_disable", "accesslog", "access_log_format", "logger_class",
           "on_starting", "child_exit", "on_exit", "post_worker_init", "worker_exit"]

try:
    # Settings from the environment, checked before anything starts: a bad value is one
    # line, not a traceback. The app's own (app.config included) are checked by each
    # worker against these in post_worker_init (notifier.lifecycle.check_server).
    _settings = Settings.load(standalone=True)
    bind = f"0.0.0.0:{server_port()}"
    workers = server_workers()
except ConfigError as _exc:
    sys.exit(f"notifier cannot start: {_exc}")
worker_class = "gevent"
# gevent records, for every greenlet, the stack that spawned it (for debugging tools):
# ~1 KB and a dozen objects per connection here. Off unless asked for.
os.environ.setdefault("GEVENT_TRACK_GREENLET_TREE", "false")

# notifier takes as many subscribers as these slots less a reserve for publishes and health
# checks (Settings.max_subscribers); gunicorn's default (1000) would cap a worker at 1000.
# With the hooks below a stream holds its slot only until it is set up: it then goes on
# from a greenlet of its own, outside gunicorn's pool (notifier.transports.handoff).
worker_connections = _settings.worker_connections
# The gevent worker heartbeats from its own greenlet, so long-lived connections never
# trip this; it only catches a worker whose event loop is truly stuck.
timeout = 30
# After SIGTERM notifier closes every connection itself within ~0.2 s; the rest of this
# lets in-flight publishes finish. Heroku kills 30 s after SIGTERM.
graceful_timeout = 20
# Idle keep-alive connections also hold a slot: keep them short (publishers reconnect
# cheaply); long-lived subscribers are not affected.
keepalive = 5
# Never preload: the app (and its broker follower) must start in each worker, after
# gevent has patched it.
preload_app = False
# gunicorn's runtime control socket sits at one fixed path per user: several servers on
# one host (tests, side-by-side deploys) would fight over it, and Heroku has no use for it.
control_socket_disable = True
accesslog = "-"
# Query strings may carry tokens: log the path without them, and redact what gunicorn
# prints of a bad request line.
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(L)ss'
logger_class = "notifier.gunicorn_logging.RedactingLogger"


# /metrics sums every worker's figures through prometheus_client's multiprocess mode:
# the workers write them to files in PROMETHEUS_MULTIPROC_DIR, which must be set before
# they import prometheus_client. Unset, a temporary one is made here and removed at exit
# (gunicorn's USR2 binary upgrade would need one set by you: the old master removes its own).
_created_metrics_dir = None


def on_starting(server):
    # Imports only notifier.config: gevent must not load in the master.
    global _created_metrics_dir
    directory = metrics_dir()
    if directory is None:
        _created_metrics_dir = directory = tempfile.mkdtemp(prefix="notifier-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory
    else:
        os.makedirs(directory, exist_ok=True)
        for stale in glob.glob(os.path.join(directory, "*.db")):  # figures of an earlier run
            os.remove(stale)


def child_exit(server, worker):
    # A worker is gone: its live gauges (open connections) must no longer count.
    if metrics_dir() is not None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _created_metrics_dir is not None:
        shutil.rmtree(_created_metrics_dir, ignore_errors=True)


def post_worker_init(worker):
    import gc

    # The app leaves its views to the first request (the CLI never serves one): a worker
    # will, so it loads them now, before the freeze below.
    from notifier.flask import views  # noqa: F401
    from notifier.lifecycle import watch_worker

    watch_worker(worker)
    # What the worker loaded (Flask, gevent, the app: ~100k objects) lives as long as it
    # does: keep it out of every later collection, so full collections with thousands of
    # connections scan only the connections' objects.
    gc.collect()
    gc.freeze()


def worker_exit(server, worker):
    # Streams that left gunicorn's pool for greenlets of their own (notifier.transports.handoff)
    # close before the worker goes.
    from notifier.lifecycle import drain

    drain(worker)
