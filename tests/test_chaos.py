"""Chaos: subscribers across workers keep exactly what was accepted while things break.

Redis (AOF on) restarts, a worker is killed and another stopped, and some clients stall
until they are cut, all while notifications are published concurrently. Every
subscriber reconnects with its last id whenever it is cut. At the end each one must hold
exactly the accepted notifications it is entitled to, in order, with no duplicates.
"""
from __future__ import annotations

import os
import signal
import statistics
import threading
import time
from collections import Counter, defaultdict

import requests

from clients import SSEClient, StreamClosed, WSClient
from conftest import RedisServer

SUBSCRIBERS = 52
PUBLISHERS = 4
PER_PUBLISHER = 320
TOPICS = ["t0", "t1", "t2"]
STALLED = 4
BULK = 120  # 32 KB notifications to the stalled clients' topic: far beyond socket buffers


class Subscriber(threading.Thread):
    """Reads until told to stop; on any cut, reconnects with its last id and resumes."""

    def __init__(self, url: str, index: int, topics: list[str], rcvbuf: int | None = None):
        super().__init__(daemon=True)
        self.url, self.index, self.topics, self.rcvbuf = url, index, topics, rcvbuf
        self.transport = "ws" if index % 2 else "sse"
        self.received: list[tuple[str, str]] = []  # (id, title)
        self.last: str | None = None
        self.resets = 0
        self.cuts: list[tuple[str, float, float]] = []  # (why, when cut, seconds until connected again)
        self.stall = threading.Event()
        self.stop = threading.Event()
        self.connected = threading.Event()
        self.errors: list[str] = []

    def _connect(self):
        params = {"topics": self.topics, "last_event_id": self.last, "rcvbuf": self.rcvbuf, "timeout": 5}
        if self.transport == "ws":
            return WSClient(self.url, **params)
        client = SSEClient(self.url, **params)
        if client.status != 200:  # e.g. 503 while history cannot be read: try again
            client.close()
            raise ConnectionError(f"SSE answered {client.status}")
        return client

    def run(self) -> None:
        cut_at, why = None, None
        while not self.stop.is_set():
            try:
                client = self._connect()
            except Exception:
                time.sleep(0.1)
                continue
            if cut_at is not None:
                self.cuts.append((why, cut_at, time.monotonic() - cut_at))
            self.connected.set()
            try:
                while not self.stop.is_set():
                    if self.stall.is_set():
                        time.sleep(0.05)
                        continue
                    try:
                        message = client.next_notification(0.5)
                    except TimeoutError:
                        continue
                    if message["type"] == "notifier.reset":
                        self.resets += 1
                    else:
                        self.received.append((message["id"], message["title"]))
                    self.last = message["id"] or self.last
            except StreamClosed as closed:
                why = f"closed {closed.code}" if closed.code else "stream ended"
            except Exception as exc:  # a worker killed mid-frame, a reset connection...
                why = type(exc).__name__
            finally:
                cut_at = time.monotonic()
                client.close()


def publisher(url: str, n: int, offset: int, outcomes: dict, bulk_topic: str | None = None, size: int = 0,
              pause: float = 0.04):
    with requests.Session() as session:
        for i in range(n):
            title = f"p{offset}-{i}"
            target = {"topic": bulk_topic} if bulk_topic else (
                {} if i % 2 else {"topic": TOPICS[(i // 2) % len(TOPICS)]})
            try:
                r = session.post(url + "/notify", json={"title": title, "message": "x" * size, **target}, timeout=10)
                outcomes[title] = (r.status_code, r.json().get("id") if r.status_code == 202 else None,
                                   target.get("topic"))
            except requests.RequestException:
                outcomes[title] = ("no answer", None, target.get("topic"))  # the worker died mid-request
            time.sleep(pause)


def settle(subs: list[Subscriber], done, timeout: float = 60.0) -> None:
    """Wait (bounded) until ``done(sub)`` holds for every subscriber, then stop them all."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(done(s) for s in subs):
        time.sleep(0.2)
    for s in subs:
        s.stop.set()
    for s in subs:
        s.join(timeout=10)


def busiest_worker(server) -> int:
    """The worker holding the most client connections, so a fault there cuts many."""
    counts = Counter(server.worker_of_ports().values())
    return counts.most_common(1)[0][0] if counts else sorted(server.worker_pids())[0]


def test_chaos_no_loss_no_duplicate(notifier_server, tmp_path, closing):
    redis = RedisServer(tmp_path / "redis", aof=True)
    redis.start()
    try:
        run_chaos(notifier_server, redis)
    finally:
        redis.stop()


def run_chaos(notifier_server, redis) -> None:
    server = notifier_server(workers=2, redis=redis, env={"NOTIFIER_QUEUE_SIZE": 32})
    subs = []
    for i in range(SUBSCRIBERS):
        stalled = i < STALLED
        topics = [TOPICS[i % len(TOPICS)]] + (["bulk"] if stalled else [])
        subs.append(Subscriber(server.url, i, topics, rcvbuf=4096 if stalled else None))
    for s in subs:
        s.start()
    for s in subs:
        assert s.connected.wait(20), "a subscriber could not connect"
    time.sleep(0.5)  # every handshake has reached its hub

    outcomes: dict[str, tuple] = {}
    threads = [threading.Thread(target=publisher, args=(server.url, PER_PUBLISHER, k, outcomes), daemon=True)
               for k in range(PUBLISHERS)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    faults = []

    def at(second: float) -> None:
        time.sleep(max(0.0, t0 + second - time.monotonic()))

    at(2)
    redis.stop()  # SIGTERM: Redis writes its AOF and exits
    time.sleep(1.0)
    redis.start()
    faults.append(("redis restarted (AOF)", time.monotonic() - t0))
    at(5)
    victim = busiest_worker(server)
    os.kill(victim, signal.SIGKILL)
    faults.append((f"worker {victim} killed", time.monotonic() - t0))
    at(7)
    stalled = subs[:STALLED]
    for s in stalled:
        s.stall.set()
    faults.append(("clients stalled until cut", time.monotonic() - t0))

    def bulk() -> None:
        publisher(server.url, BULK, 99, outcomes, bulk_topic="bulk", size=32768, pause=0.005)
        time.sleep(1.0)
        for s in stalled:
            s.stall.clear()

    bulk_thread = threading.Thread(target=bulk, daemon=True)
    bulk_thread.start()
    threads.append(bulk_thread)
    at(12)
    other = busiest_worker(server)
    os.kill(other, signal.SIGTERM)  # graceful: its clients get 1001 / end of stream
    faults.append((f"worker {other} stopped (SIGTERM)", time.monotonic() - t0))
    for t in threads:
        t.join(timeout=120)
        assert not t.is_alive(), "a publisher hung"

    accepted = {title: nid for title, (status, nid, _) in outcomes.items() if status == 202}
    refused = Counter(str(status) for status, _, _ in outcomes.values() if status != 202)
    topic_of = {title: topic for title, (_, _, topic) in outcomes.items()}
    # A request cut by the killed worker has no answer: it may or may not have been
    # accepted. If any subscriber got it, it was, and all it is entitled to must have it.
    seen_titles = {title: nid for s in subs for nid, title in s.received}
    unanswered = [t for t, (status, _, _) in outcomes.items() if status == "no answer"]
    for title in unanswered:
        if title in seen_titles:
            accepted[title] = seen_titles[title]

    def expected_for(sub: Subscriber) -> list[str]:
        return sorted(nid for title, nid in accepted.items() if topic_of[title] in (None, *sub.topics))

    settle(subs, lambda s: len(s.received) >= len(expected_for(s)))

    problems = []
    delivered = lost = duplicated = 0
    for s in subs:
        got = [nid for nid, _ in s.received]
        want = expected_for(s)
        delivered += len(got)
        counts = Counter(got)
        duplicated += sum(c - 1 for c in counts.values())
        missing = set(want) - set(got)
        lost += len(missing)
        extra = set(got) - set(want)
        if missing or extra or got != sorted(set(got)) or s.resets:
            problems.append(f"subscriber {s.index} ({s.transport}): {len(missing)} missing, {len(extra)} not "
                            f"accepted, in order: {got == sorted(set(got))}, resets: {s.resets}")
    cuts = defaultdict(list)
    stall_at = t0 + dict((name, when) for name, when in faults)["clients stalled until cut"]
    for s in subs:
        for why, when, took in s.cuts:
            if s.index < STALLED and when > stall_at:
                fault = "clients stalled until cut"
            else:
                fault = max((f for f in faults if f[1] <= when - t0 + 0.5), key=lambda f: f[1],
                            default=("before any fault", 0))[0]
            cuts[(fault, why)].append(took)
    failed_titles = [t for t, (status, _, _) in outcomes.items() if status != 202 and t not in accepted]
    delivered_refused = [t for t in failed_titles if t in seen_titles]

    print(f"\nchaos: published {len(outcomes)}, accepted {len(accepted)} "
          f"(of which {len(accepted) - sum(1 for v in outcomes.values() if v[0] == 202)} unanswered but delivered), "
          f"refused {dict(refused)}, delivered {delivered}, lost {lost}, duplicated {duplicated}")
    for name, when in faults:
        print(f"  fault at {when:5.1f}s: {name}")
    for (fault, why), times in sorted(cuts.items()):
        print(f"  after '{fault}', cut by '{why}': {len(times)} reconnects, resumed in median "
              f"{statistics.median(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms")
    assert len(outcomes) == PUBLISHERS * PER_PUBLISHER + BULK
    assert sum(1 for v in outcomes.values() if v[0] == 202) >= 1000, "too few accepted for a meaningful run"
    assert not delivered_refused, f"refused publishes were delivered: {delivered_refused[:5]}"
    cut_by = {fault for fault, _ in cuts}
    assert all(name in cut_by for name, _ in faults[1:]), f"a fault cut no client: {sorted(cuts)}"
    assert all(s.cuts for s in subs[:STALLED]), "a stalled client was never cut"
    assert ("clients stalled until cut", "stream ended") in cuts, "no stalled client was cut for being slow"
    assert not problems, "\n".join(problems[:20])
    assert lost == 0 and duplicated == 0
