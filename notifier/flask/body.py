"""Reading a publish body: JSON only, within the size limit, within NOTIFIER_BODY_TIMEOUT,
and only so many at once.

gunicorn bounds how long a client may take to send headers (``keepalive``) but not the
body, and every connection holds one of the worker's slots: a hundred clients sending a
byte a second would take every slot left beside the subscribers. So a body must arrive
within its deadline (408), and at most half the reserve of slots waits for slow bodies:
past that, a body must be there at once (a publisher's is) or it gets 503 within a
quarter second. Either way the connection's read side is shut, so gunicorn does not wait
for the rest of that body before closing it.
"""
from __future__ import annotations

import json
import socket
import threading
from typing import Any

from flask import request

from ..errors import InvalidNotification, PayloadTooLarge, RequestTimeout, ServerBusy, UnsupportedMediaType
from ..service import Service
from ..transports.socket_writer import os_socket

_lock = threading.Lock()
AT_ONCE = 0.25
"""Seconds a body may take past the cap on slow readers: enough for one that was sent whole."""


def read_json_body(svc: Service) -> Any:
    """The request's JSON body, or the NotifierError that says what is wrong with it.

    One notification (an object) may be NOTIFIER_MAX_MESSAGE_BYTES, a batch (an array)
    NOTIFIER_MAX_BATCH_BYTES.
    """
    content_type = request.environ.get("CONTENT_TYPE", "")
    if content_type != "application/json":  # what publishers send: no header parsing for it
        mimetype = request.mimetype or ""
        if mimetype != "application/json" and not mimetype.endswith("+json"):
            raise UnsupportedMediaType("Content-Type must be application/json")
    single, batch = svc.settings.max_message_bytes, svc.settings.max_batch_bytes
    most = max(single, batch)
    length = request.content_length
    if length is not None and length > most:
        raise _too_large(svc, length)
    body = _read(svc, most + 1)
    if len(body) > most:
        raise _too_large(svc, len(body))
    try:
        payload = _DECODER.decode(body.decode(json.detect_encoding(body), "surrogatepass"))
    except (ValueError, RecursionError) as exc:
        raise InvalidNotification(f"body is not valid JSON: {exc}") from None
    if len(body) > (batch if isinstance(payload, list) else single):
        raise _too_large(svc, len(body), isinstance(payload, list))
    return payload


def _too_large(svc: Service, size: int, batch: bool | None = None) -> PayloadTooLarge:
    single, most = svc.settings.max_message_bytes, svc.settings.max_batch_bytes
    if batch is None:  # over both limits, before it is parsed
        return PayloadTooLarge(f"body larger than {max(single, most)} bytes (NOTIFIER_MAX_MESSAGE_BYTES for one "
                               "notification, NOTIFIER_MAX_BATCH_BYTES for a batch)")
    if batch:
        return PayloadTooLarge(f"batch body larger than {most} bytes (NOTIFIER_MAX_BATCH_BYTES)")
    return PayloadTooLarge(f"body larger than {single} bytes (NOTIFIER_MAX_MESSAGE_BYTES)")


def _read(svc: Service, limit: int) -> bytes:
    """Read the body within the deadline. Past the cap on slow readers, only a body that is
    there at once (a publisher's usually came with its headers) is read: else 503."""
    environ = request.environ
    # A server that ends the body itself (gunicorn) hands its stream over as it is; else
    # werkzeug's, bounded by Content-Length.
    stream = environ["wsgi.input"] if environ.get("wsgi.input_terminated") else request.stream
    with _lock:
        counted = svc.body_readers < svc.settings.max_body_readers
        if counted:
            svc.body_readers += 1
    if counted:
        timeout, error = svc.settings.body_timeout, RequestTimeout(
            f"body not received within {svc.settings.body_timeout:g}s (NOTIFIER_BODY_TIMEOUT)")
    else:
        timeout, error = AT_ONCE, ServerBusy("too many slow publish bodies arriving at once: retry")
    try:
        with svc.runtime.deadline(timeout, error):
            return stream.read(limit)
    except (RequestTimeout, ServerBusy):
        _stop_reading()
        raise
    finally:
        if counted:
            with _lock:
                svc.body_readers -= 1


def _stop_reading() -> None:
    """Shut the read side: gunicorn would otherwise read the rest of this body before closing."""
    sock = request.environ.get("gunicorn.socket")
    if sock is not None:
        try:
            os_socket(sock).shutdown(socket.SHUT_RD)
        except OSError:
            pass


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
"""One decoder for every body (``json.loads`` with an option builds a new one per call)."""
