"""Streams leave gunicorn's request greenlet for a fresh greenlet of their own.

Why: an idle connection costs what its greenlet keeps. The request's greenlet went deep
(gunicorn, Flask, auth, the handshake) and would hold for the connection's whole life
gunicorn's request, parser and environ, Flask's request context, the C stack it saved
and the pages of frame stack it touched (``bench/greenlet_rss.py``): about half of what
an idle connection cost. So once a stream is set up, its loop runs on a fresh greenlet
that holds only what idling needs, and the request's greenlet ends:

- the socket is detached from gunicorn's socket object (gunicorn then closes an empty
  object) and wrapped anew on the same descriptor (``take``);
- gunicorn is told the request was handled as simple-websocket tells it, by
  ``StopIteration`` from the response, so it writes nothing more; the access-log line
  of an event stream is then written here, through gunicorn's logger, as it starts.

Only in a gunicorn gevent worker that ran notifier's hooks: ``lifecycle.watch_worker``
enables it, and as these greenlets are not in gunicorn's connection pool (which it
waits for on shutdown), the ``worker_exit`` hook waits for them. Anywhere else a stream
stays on its request's greenlet or thread.
"""
from __future__ import annotations

import datetime
import time
from typing import Any, Callable

from ..runtime import Runtime

_access_log: Any = None
"""gunicorn's logger in this worker, once its hooks enabled hand-offs."""


def enable(access_log: Any) -> None:
    """From the worker hook: streams may leave their request's greenlet from now on."""
    global _access_log
    _access_log = access_log


def enabled() -> bool:
    return _access_log is not None


def possible(environ: dict, runtime: Runtime) -> bool:
    """This request's stream may be handed over: gunicorn's socket, in a worker that allows it."""
    return _access_log is not None and runtime.hands_off and environ.get("gunicorn.socket") is not None


def take(sock: Any) -> Any:
    """A new gevent socket on ``sock``'s descriptor; ``sock`` is left empty (closing it does nothing)."""
    from gevent import socket as gsocket

    return gsocket.socket(sock.family, sock.type, sock.proto, fileno=sock.detach())


def server_response(write: Callable[[bytes], Any]) -> Any:
    """gunicorn's response object behind the WSGI ``write`` it returned, if it is one (chunked)."""
    response = getattr(write, "__self__", None)
    return response if getattr(response, "chunked", False) and hasattr(response, "req") else None


def log_access(response: Any, environ: dict, started: float) -> None:
    """gunicorn's access-log line for a request it does not finish itself (its own format)."""
    took = datetime.timedelta(seconds=time.monotonic() - started)
    _access_log.access(response, response.req, environ, took)
