"""Two hosts behind one Redis: one dies (SIGKILL to its master and workers) while publishes go
to both; its clients reconnect to the other and resume, and every 202 reaches every client
once, in order. The hosts are two gunicorns with 2 gevent workers each, on their own
loopback addresses (127.0.0.2 and 127.0.0.3)."""
from __future__ import annotations

import itertools
import os
import signal
import threading
import time
import uuid

import requests

from clients import SSEClient, StreamClosed, WSClient, sync_subscribers

PUBLISH_FOR = 4.0
KILL_AFTER = 1.5


class Follower(threading.Thread):
    """A subscriber doing what notifier.js does when its host goes away: reconnect to the
    other host, resume after the last id it saw, and drop ids at or below it."""

    def __init__(self, hosts: list, first: int, transport: str) -> None:
        super().__init__(daemon=True)
        self.hosts, self.host, self.transport = hosts, first, transport
        self.last: str | None = None
        self.got: list[str] = []
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
            self.host = 1 - self.host
            try:
                self.client = self._open()
                self.reconnects += 1
                return
            except Exception:  # noqa: BLE001 - this host is the dead one: try the other
                if time.monotonic() > deadline:
                    raise AssertionError(f"{self.transport} could not reconnect after {why!r}") from None
                time.sleep(0.1)


def publisher(hosts: list, accepted: list, failures: list, stop: threading.Event, n: int) -> None:
    """Publish to both hosts in turn; a failed publish is retried on the other host under the
    same Idempotency-Key, so it is published once."""
    turn = itertools.count(n)
    with requests.Session() as session:
        while not stop.is_set():
            key, first = uuid.uuid4().hex, next(turn) % 2
            for attempt in range(10):
                url = hosts[(first + attempt) % 2].url
                try:
                    r = session.post(url + "/notify", json={"title": key}, headers={"Idempotency-Key": key}, timeout=5)
                except requests.RequestException:
                    continue
                if r.status_code == 202:
                    accepted.append(r.json()["id"])
                    break
                if r.status_code not in (429, 503):
                    failures.append((r.status_code, r.text))
                    return
            else:
                failures.append(("never accepted", key))
                return
            time.sleep(0.01)


def test_a_host_dies_its_clients_resume_on_the_other_and_every_202_reaches_everyone_once_in_order(
        notifier_server, redis_server):
    hosts = [notifier_server(workers=2, redis=redis_server, host="127.0.0.2"),
             notifier_server(workers=2, redis=redis_server, host="127.0.0.3")]
    followers = [Follower(hosts, i % 2, "ws" if i % 4 < 2 else "sse") for i in range(8)]
    try:
        sync_subscribers(hosts[0].url, [f.client for f in followers])
        for f in followers:
            f.start()
        accepted: list[str] = []
        failures: list = []
        stop = threading.Event()
        publishers = [threading.Thread(target=publisher, args=(hosts, accepted, failures, stop, n), daemon=True)
                      for n in range(2)]
        for p in publishers:
            p.start()
        time.sleep(KILL_AFTER)
        dead = hosts[0]
        pids = [dead.pid, *dead.worker_pids()]
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        time.sleep(PUBLISH_FOR - KILL_AFTER)
        stop.set()
        for p in publishers:
            p.join(timeout=30)
        assert not failures, failures
        expected = sorted(set(accepted))
        assert len(expected) == len(accepted), "a retried publish was accepted twice"
        deadline = time.monotonic() + 20
        while any(f.got[-1:] != expected[-1:] for f in followers) and time.monotonic() < deadline:
            time.sleep(0.1)
        for f in followers:
            f.done.set()
            f.join(timeout=5)
            assert f.failure is None, f.failure
            assert f.got == expected, (f"{f.transport}: {len(f.got)} of {len(expected)}; missing "
                                       f"{sorted(set(expected) - set(f.got))[:5]}, "
                                       f"extra {sorted(set(f.got) - set(expected))[:5]}")
        moved = [f for f in followers if f.reconnects]
        assert len(moved) >= 4, "the dead host's clients did not move"
        print(f"{len(expected)} accepted, {len(moved)} clients moved hosts, "
              f"{sum(f.dropped for f in followers)} replayed ids dropped, all caught up "
              f"{time.monotonic() - killed_at:.1f}s after the kill")
    finally:
        for f in followers:
            f.done.set()
