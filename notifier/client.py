"""A small Python client for a notifier server: ``publish`` for backends, ``subscribe`` for listeners.

Standard library only (``http.client``), and nothing of Flask or gevent, so plain scripts,
cron jobs and other services can use it::

    from notifier.client import publish, subscribe

    publish("Deploy finished", "v42 is live", topic="ops", url="https://notify.example.com", key=KEY)
    for notification in subscribe("https://notify.example.com", topics=["ops"]):
        print(notification["title"])

``disconnect(user)`` ends a user's connections everywhere (a logout), and
``presence(topic)`` / ``presence(user=...)`` say who is online; both need a publisher
key (or a loopback peer), like ``publish``.

``subscribe`` reads Server-Sent Events (``GET /events``). It reconnects after any drop,
with exponential backoff (the server's ``retry:`` hint first, then doubling up to
``max_backoff``), and resumes from the last id it saw (``Last-Event-ID``), so a drop
loses nothing that is still in the server's history. When the server no longer holds
that id the next item is a ``notifier.reset`` notification: refetch your state. After a
``notifier.disconnect`` (the server disconnected this user: a logout) it ends instead.
Every socket operation has a timeout; a stream that stays silent longer than
``read_timeout`` (the server sends a keepalive every ``NOTIFIER_HEARTBEAT`` seconds)
counts as dropped.
"""
from __future__ import annotations

import http.client
import json
import logging
import random
import socket
import threading
import time
import uuid
from typing import Any, Callable, Iterator
from urllib.parse import urlencode, urlsplit

from .errors import NotifierError

log = logging.getLogger(__name__)

DEFAULT_URL = "http://127.0.0.1:8000"
PUBLISH_RETRIES = 3
PUBLISH_BACKOFF = 0.5
MAX_PUBLISH_DELAY = 5.0
RESET = "notifier.reset"
"""Type of the notification that says: your resume point is gone, refetch state."""
DISCONNECT = "notifier.disconnect"
"""The server ended this user's connections (a logout): the subscription ends, no reconnect."""

TokenSource = str | Callable[[], str] | None


class ClientError(NotifierError):
    """The server answered with an error; ``status`` and ``error`` are what it said.

    ``status`` is None when no answer came at all (connection refused, timeout).
    ``retry_after`` is the server's ``Retry-After`` in seconds (429, 503), if it sent one.
    """

    def __init__(self, status: int | None, error: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {error}" if status is not None else error)
        self.status = status  # type: ignore[assignment]  # an instance value: what the server answered
        self.error = error
        self.retry_after = retry_after


def _connection(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    """A connection to the server of ``url`` and the path prefix notifier is mounted under."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"url must be http(s)://host[:port][/prefix], got {url!r}")
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    return cls(parts.hostname, parts.port, timeout=timeout), parts.path.rstrip("/")


def _error_of(response: http.client.HTTPResponse) -> ClientError:
    body = response.read(65536).decode("utf-8", "replace")
    try:
        message = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        message = body.strip() or response.reason
    retry_after = response.getheader("Retry-After")
    try:
        seconds = float(retry_after) if retry_after is not None else None
    except ValueError:
        seconds = None
    return ClientError(response.status, str(message), seconds)


def publish(title: str | None, message: str | None = None, *, user: str | int | None = None,
            topic: str | None = None, type: str | None = None, data: dict[str, Any] | None = None,
            url: str = DEFAULT_URL, key: str | None = None, timeout: float = 10.0,
            idempotency_key: str | None = None, retries: int = PUBLISH_RETRIES) -> str:
    """``POST /notify`` one notification; returns its id once the server has it in history.

    ``user`` targets one user's connections, ``topic`` a topic's, neither everyone. Every
    attempt carries the same ``Idempotency-Key`` (a fresh one unless given), so a 503, a
    429 (over the publish rate) or a dropped connection is retried (up to ``retries``
    times, after the server's ``Retry-After``) and the notification is still published once. Raises ``ClientError``
    with the server's status and ``error`` on any other 4xx/5xx or once the retries are
    spent, with status None if the server could not be reached.
    """
    fields = {"title": title, "message": message, "user_id": user, "topic": topic, "type": type, "data": data}
    body = {k: v for k, v in fields.items() if v is not None}
    return _post_notify(url, body, key, timeout, idempotency_key, retries)["id"]


def publish_many(notifications: list[dict[str, Any]], *, url: str = DEFAULT_URL, key: str | None = None,
                 timeout: float = 30.0, idempotency_key: str | None = None,
                 retries: int = PUBLISH_RETRIES) -> list[str]:
    """``POST /notify`` a batch (1 to 1000 dicts with the fields of the API: ``title``,
    ``message``, ``user_id``, ``topic``, ``type``, ``data``): all are stored or none.
    Returns their ids in order; retried like ``publish`` under one ``Idempotency-Key``.
    A bad item raises ``ClientError`` (400) and nothing is published."""
    return _post_notify(url, list(notifications), key, timeout, idempotency_key, retries)["ids"]


def _post_notify(url: str, payload: Any, key: str | None, timeout: float, idempotency_key: str | None,
                 retries: int) -> dict[str, Any]:
    body = json.dumps(payload).encode()
    headers = {**_publisher_headers(key), "Content-Type": "application/json",
               "Idempotency-Key": idempotency_key or uuid.uuid4().hex}
    for attempt in range(retries + 1):
        try:
            return _post_once(url, body, headers, timeout)
        except ClientError as exc:
            if attempt == retries or exc.status not in (None, 429, 503):
                raise
            delay = exc.retry_after if exc.retry_after is not None else PUBLISH_BACKOFF * 2 ** attempt
            log.info("publish to %s: %s; retrying in %.1fs with the same Idempotency-Key", url, exc, delay)
            time.sleep(min(delay, MAX_PUBLISH_DELAY))
    raise AssertionError("unreachable")


def _post_once(url: str, body: bytes, headers: dict[str, str], timeout: float) -> dict[str, Any]:
    return _request(url, "POST", "/notify", body, headers, timeout, 202)


def _request(url: str, method: str, path: str, body: bytes | None, headers: dict[str, str], timeout: float,
             expect: int) -> Any:
    """One request to the server; its JSON answer, or ClientError (status None: not reached)."""
    conn, prefix = _connection(url, timeout)
    try:
        conn.request(method, prefix + path, body=body, headers=headers)
        response = conn.getresponse()
        if response.status != expect:
            raise _error_of(response)
        return json.loads(response.read())
    except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
        raise ClientError(None, f"{method} {path} to {url} failed: {exc!r}") from exc
    finally:
        conn.close()


def _publisher_headers(key: str | None) -> dict[str, str]:
    headers = {"Accept": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers


def disconnect(user: str | int, *, url: str = DEFAULT_URL, key: str | None = None, timeout: float = 10.0) -> None:
    """``POST /disconnect``: end every connection of ``user`` on every worker and host (a
    logout, a revoked permission). Raises ``ClientError`` as ``publish`` does (no retry)."""
    headers = {**_publisher_headers(key), "Content-Type": "application/json"}
    _request(url, "POST", "/disconnect", json.dumps({"user_id": user}).encode(), headers, timeout, 202)


def presence(topic: str | None = None, *, user: str | int | None = None, url: str = DEFAULT_URL,
             key: str | None = None, timeout: float = 10.0) -> dict[str, Any]:
    """``GET /presence``: who is on ``topic`` (``{"topic", "users", "connections"}``), or
    whether ``user`` is online (``{"user_id", "online", "connections"}``); give one of them."""
    if (topic is None) == (user is None):
        raise ValueError("give topic or user, not both")
    query = urlencode({"topic": topic} if topic is not None else {"user_id": user})
    return _request(url, "GET", f"/presence?{query}", None, _publisher_headers(key), timeout, 200)


def _parse_sse(lines: Iterator[bytes]) -> Iterator[tuple[str, str | None, str | None, int | None]]:
    """SSE frames as (kind, id, data, retry): kind is "event", "retry" or "comment"."""
    event_id: str | None = None
    data: list[str] = []
    for raw in lines:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data:
                yield "event", event_id, "\n".join(data), None
            event_id, data = None, []
            continue
        if line.startswith(":"):
            yield "comment", None, None, None
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "id":
            event_id = value
        elif name == "data":
            data.append(value)
        elif name == "retry" and value.isdigit():
            yield "retry", None, None, int(value)


class Subscription:
    """An endless iterator of notifications (dicts) from ``GET /events``; see ``subscribe``.

    ``last_event_id`` is the id of the last notification handed out: store it to resume
    later (``subscribe(..., last_event_id=...)``). ``close()`` (from any thread) ends it.
    """

    def __init__(self, url: str, topics: tuple[str, ...], token: TokenSource, last_event_id: str | None,
                 connect_timeout: float, read_timeout: float, max_backoff: float, max_retries: int | None) -> None:
        self.url = url
        self.topics = topics
        self.token = token
        self.last_event_id = last_event_id
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_backoff = max_backoff
        self.max_retries = max_retries
        self.reconnects = 0
        self._closed = False
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()
        self._iter = self._run()

    def __iter__(self) -> "Subscription":
        return self

    def __next__(self) -> dict[str, Any]:
        return next(self._iter)

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop: the iteration ends (a blocked read wakes at once)."""
        self._closed = True
        with self._lock:
            conn = self._conn
        if conn is not None and conn.sock is not None:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _open(self) -> http.client.HTTPResponse:
        conn, prefix = _connection(self.url, self.connect_timeout)
        with self._lock:
            self._conn = conn
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if self.last_event_id:
            headers["Last-Event-ID"] = self.last_event_id
        token = self.token() if callable(self.token) else self.token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        query = urlencode([("topic", t) for t in self.topics])
        conn.connect()
        conn.sock.settimeout(self.read_timeout)  # from now on: bounded reads, keepalives keep them short
        conn.request("GET", prefix + "/events" + (f"?{query}" if query else ""), headers=headers)
        return conn.getresponse()

    def _run(self) -> Iterator[dict[str, Any]]:
        delay = 1.0
        failures = 0
        while not self._closed:
            wait: float | None = None
            try:
                response = self._open()
                if response.status != 200:
                    error = _error_of(response)
                    # 429 / 503 (full, shutting down, history unavailable) pass; others never will.
                    if response.status not in (429, 502, 503, 504):
                        raise error
                    log.info("subscribe refused for now: %s", error)
                    wait = error.retry_after
                elif not (response.getheader("Content-Type") or "").startswith("text/event-stream"):
                    raise ClientError(response.status, f"{self.url} is not a notifier server: no event stream at /events")
                else:
                    for kind, event_id, data, retry in _parse_sse(iter(response.readline, b"")):
                        if kind == "retry" and retry is not None:
                            delay = retry / 1000
                        if kind != "event" or data is None:
                            continue
                        failures = 0  # a working stream: the next drop starts the backoff again
                        notification = json.loads(data)
                        if event_id is not None and self.last_event_id and event_id <= self.last_event_id \
                                and notification.get("type") != RESET:
                            continue  # ids sort in publish order: this one was seen already
                        if event_id is not None:
                            self.last_event_id = event_id
                        if notification.get("type") == RESET:
                            log.info("resume point gone: %s", notification.get("message"))
                        yield notification
                        if notification.get("type") == DISCONNECT:
                            log.info("disconnected by the server: not reconnecting")
                            self._closed = True
                            return
                    log.info("stream ended by the server; resuming after %s", self.last_event_id)
            except ClientError:
                raise
            except (OSError, http.client.HTTPException, ValueError) as exc:
                if self._closed:
                    break
                log.info("stream dropped (%r); resuming after %s", exc, self.last_event_id)
            finally:
                with self._lock:
                    conn, self._conn = self._conn, None
                if conn is not None:
                    conn.close()
            if self._closed:
                break
            failures += 1
            if self.max_retries is not None and failures > self.max_retries:
                raise ClientError(None, f"gave up on {self.url} after {self.max_retries} retries")
            self.reconnects += 1
            backoff = min(self.max_backoff, delay * 2 ** (failures - 1))
            time.sleep(wait if wait is not None else backoff * random.uniform(0.5, 1.0))


def subscribe(url: str = DEFAULT_URL, topics: tuple[str, ...] | list[str] = (), token: TokenSource = None,
              last_event_id: str | None = None, *, connect_timeout: float = 10.0, read_timeout: float = 60.0,
              max_backoff: float = 30.0, max_retries: int | None = None) -> Subscription:
    """Follow a notifier server's notifications: an iterator of dicts that never ends by itself.

    ``topics`` to subscribe to; ``token`` a subscriber JWT, or a callable returning a fresh
    one at each (re)connect (a token that expires ends the stream); ``last_event_id`` to
    resume after. Raises ``ClientError`` for a refusal that retrying cannot fix (400, 401,
    403), or after ``max_retries`` failed reconnects in a row (None: forever).
    """
    return Subscription(url, tuple(topics), token, last_event_id, connect_timeout, read_timeout,
                        max_backoff, max_retries)
