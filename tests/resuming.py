"""What a client that survives a lost host or Redis does, for the tests that take one away
(test_two_hosts, test_failover):

- ``Follower``: a subscriber (WebSocket or SSE) in a thread that, when its stream breaks,
  reconnects (to the next host, if several) and resumes after the last id it saw, dropping
  ids at or below it, as notifier.js does.
- ``Publisher``: publishes in a thread until stopped, each notification under its own
  Idempotency-Key; a publish that fails (503, 429, a connection error) is retried under the
  same key (on the next host, if several), so it is published once.
"""
from __future__ import annotations

import threading
import time
import uuid
from collections import Counter

import requests

from clients import SSEClient, StreamClosed, WSClient


class Follower(threading.Thread):
    """A subscriber doing what notifier.js does when its host goes away: reconnect to the
    next host, resume after the last id it saw, and drop ids at or below it."""

    def __init__(self, hosts: list, first: int, transport: str) -> None:
        super().__init__(daemon=True)
        self.hosts, self.host, self.transport = hosts, first, transport
        self.last: str | None = None
        self.got: list[str] = []
        self.titles: dict[str, str] = {}  # id -> title (the publisher's Idempotency-Key)
        self.dropped = 0
        self.reconnects = 0
        self.failure: BaseException | None = None
        self.done = threading.Event()
        self.client = self._open()

    def _open(self):
        url = self.hosts[self.host].url
        params = {"last_event_id": self.last} if self.last else {}
        return WSClient(url, **params) if self.transport == "ws" else SSEClient(url, **params)

    def run(self) -> None:
        try:
            while not self.done.is_set():
                try:
                    message = self.client.next_notification(0.3)
                except TimeoutError:
                    continue
                except (StreamClosed, OSError, ConnectionError, Exception) as exc:  # the host died
                    self._reconnect(exc)
                    continue
                if self.last is not None and message["id"] <= self.last:
                    self.dropped += 1  # replayed at the resume and seen live: as notifier.js drops it
                    continue
                self.got.append(message["id"])
                self.titles[message["id"]] = message.get("title")
                self.last = message["id"]
        except BaseException as exc:  # reported by the test
            self.failure = exc

    def _reconnect(self, why: Exception) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - it is dead already
            pass
        deadline = time.monotonic() + 20
        while True:
            self.host = (self.host + 1) % len(self.hosts)
            try:
                self.client = self._open()
                self.reconnects += 1
                return
            except Exception:  # noqa: BLE001 - this host is the dead one: try the next
                if time.monotonic() > deadline:
                    raise AssertionError(f"{self.transport} could not reconnect after {why!r}") from None
                time.sleep(0.1)


class Publisher(threading.Thread):
    """Publishes until ``stop`` is set, to the hosts in turn starting with ``first``. A publish
    answered 503 or 429, or cut off, is retried under the same Idempotency-Key on the next
    host after its Retry-After, capped at ``max_pause`` seconds, for up to ``retry_for``
    seconds; then, or on any other answer than 202, it is a failure and the thread ends."""

    def __init__(self, hosts: list, stop: threading.Event, first: int = 0, *,
                 retry_for: float = 20.0, max_pause: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.hosts, self.first, self.stop = hosts, first, stop
        self.retry_for, self.max_pause = retry_for, max_pause
        self.accepted: list[tuple[float, str]] = []  # (time.monotonic() of the 202, id)
        self.retries: Counter = Counter()  # why a publish was retried: a status or an exception name
        self.errors: Counter = Counter()  # the "error" of each 503 and 429
        self.failures: list = []

    def run(self) -> None:
        turn = self.first
        with requests.Session() as session:
            while not self.stop.is_set():
                key = uuid.uuid4().hex
                deadline = time.monotonic() + self.retry_for
                while True:
                    url = self.hosts[turn % len(self.hosts)].url
                    turn += 1
                    pause = 0.05
                    try:
                        r = session.post(url + "/notify", json={"title": key},
                                         headers={"Idempotency-Key": key}, timeout=5)
                    except requests.RequestException as exc:
                        self.retries[type(exc).__name__] += 1
                    else:
                        if r.status_code == 202:
                            self.accepted.append((time.monotonic(), r.json()["id"]))
                            break
                        if r.status_code not in (429, 503):
                            self.failures.append((r.status_code, r.text))
                            return
                        self.retries[r.status_code] += 1
                        self.errors[_error(r)] += 1
                        pause = float(r.headers.get("Retry-After", pause))
                    if time.monotonic() > deadline:
                        self.failures.append(("never accepted", key, dict(self.retries)))
                        return
                    time.sleep(min(pause, self.max_pause))
                time.sleep(0.01)

    @property
    def ids(self) -> list[str]:
        return [id_ for _, id_ in self.accepted]


def _error(reply: requests.Response) -> str:
    try:
        return str(reply.json().get("error"))
    except ValueError:
        return reply.text[:80]
