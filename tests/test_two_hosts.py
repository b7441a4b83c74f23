"""Two hosts behind one Redis: one dies (SIGKILL to its master and workers) while publishes go
to both; its clients reconnect to the other and resume, and every 202 reaches every client
once, in order. The hosts are two gunicorns with 2 gevent workers each, on their own
loopback addresses (127.0.0.2 and 127.0.0.3)."""
from __future__ import annotations

import os
import signal
import threading
import time

from clients import sync_subscribers
from resuming import Follower, Publisher

PUBLISH_FOR = 4.0
KILL_AFTER = 1.5


def test_a_host_dies_its_clients_resume_on_the_other_and_every_202_reaches_everyone_once_in_order(
        notifier_server, redis_server):
    hosts = [notifier_server(workers=2, redis=redis_server, host="127.0.0.2"),
             notifier_server(workers=2, redis=redis_server, host="127.0.0.3")]
    followers = [Follower(hosts, i % 2, "ws" if i % 4 < 2 else "sse") for i in range(8)]
    stop = threading.Event()
    try:
        sync_subscribers(hosts[0].url, [f.client for f in followers])
        for f in followers:
            f.start()
        publishers = [Publisher(hosts, stop, first=n) for n in range(2)]
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
        failures = [f for p in publishers for f in p.failures]
        assert not failures, failures
        accepted = [id_ for p in publishers for id_ in p.ids]
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
        stop.set()
        for f in followers:
            f.done.set()
