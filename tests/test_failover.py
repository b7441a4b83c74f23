"""Redis Sentinel: notifier on a ``redis+sentinel://`` URL (a master, its replicas and three
Sentinels, see ``SentinelCluster`` in conftest) finds the master through the Sentinels and
follows a failover; with ``NOTIFIER_REDIS_MIN_REPLICAS`` a 202 means a replica has the
notification too, so losing the master loses no 202."""
from __future__ import annotations

import threading
import time
from collections import Counter

import requests

from clients import SSEClient, WSClient, post_notify, publish, sync_subscribers, wait_until
from resuming import Follower, Publisher

MIN_REPLICAS = {"NOTIFIER_REDIS_MIN_REPLICAS": "1"}
PUBLISH_BEFORE_KILL = 1.5
PUBLISH_AFTER_RECOVERY = 2.0
FAILOVER_BOUND = 20.0


def readyz(server) -> int:
    return requests.get(server.url + "/readyz", timeout=10).status_code


def watch_readyz(server, stop: threading.Event, checks: list) -> None:
    """(time, status) of /readyz every 0.1 s until ``stop``."""
    while not stop.is_set():
        try:
            checks.append((time.monotonic(), readyz(server)))
        except requests.RequestException:
            checks.append((time.monotonic(), None))
        time.sleep(0.1)


def history(server) -> list[dict]:
    """Every notification in history, oldest first, page by page."""
    got: list[dict] = []
    while True:
        params = {"limit": 1000, **({"since": got[-1]["id"]} if got else {})}
        page = requests.get(server.url + "/notifications", params=params, timeout=10).json()
        got += page["notifications"]
        if not page["more"]:
            return got


def test_through_the_sentinel_url_websocket_and_sse_subscribers_get_a_notification(
        sentinel_cluster, notifier_server, closing):
    cluster = sentinel_cluster()
    server = notifier_server(workers=2, redis=cluster)
    assert readyz(server) == 200
    subscribers = [closing(WSClient(server.url)), closing(SSEClient(server.url))]
    sync_subscribers(server.url, subscribers)
    sent = publish(server.url, title="through the sentinels")
    for subscriber in subscribers:
        assert subscriber.next_notification(5)["id"] == sent
    assert sent in {n["id"] for n in history(server)}


def test_the_master_dies_and_no_202_is_lost_duplicated_or_reordered(sentinel_cluster, notifier_server):
    """Two replicas: after the failover the new master still has one to confirm publishes."""
    cluster = sentinel_cluster(replicas=2)
    server = notifier_server(workers=2, redis=cluster, env=MIN_REPLICAS)
    followers = [Follower([server], 0, "ws" if i % 2 else "sse") for i in range(4)]
    stop = threading.Event()
    try:
        sync_subscribers(server.url, [f.client for f in followers])
        for f in followers:
            f.start()
        publishers = [Publisher([server], stop, first=n, retry_for=FAILOVER_BOUND) for n in range(2)]
        for p in publishers:
            p.start()
        readiness = threading.Thread(target=watch_readyz, args=(server, stop, checks := []), daemon=True)
        readiness.start()
        time.sleep(PUBLISH_BEFORE_KILL)
        old = cluster.kill_master()
        killed_at = time.monotonic()
        promoted = cluster.wait_promoted(old.port, timeout=FAILOVER_BOUND)
        promoted_at = time.monotonic()
        wait_until(lambda: any(t > promoted_at and status == 200 for t, status in checks), 5,
                   message="/readyz 200 after the promotion")

        def first_202_after_kill():
            return min((t for p in publishers for t, _ in p.accepted if t > killed_at), default=None)

        recovered_at = wait_until(first_202_after_kill, FAILOVER_BOUND - (promoted_at - killed_at),
                                  message="a 202 after the kill")
        time.sleep(max(0.0, recovered_at + PUBLISH_AFTER_RECOVERY - time.monotonic()))
        stop.set()
        for p in publishers:
            p.join(timeout=FAILOVER_BOUND + 10)
            assert not p.is_alive()
        failures = [f for p in publishers for f in p.failures]
        assert not failures, failures
        accepted = [id_ for p in publishers for id_ in p.ids]
        expected = sorted(set(accepted))
        assert len(expected) == len(accepted), "a retried publish was accepted twice"
        wait_until(lambda: all(set(expected) <= set(f.got) for f in followers), 20,
                   message="every follower has every 202")
        extras = set()
        for f in followers:
            f.done.set()
            f.join(timeout=5)
            assert f.failure is None, f.failure
            assert len(set(f.got)) == len(f.got), f"{f.transport} got an id twice"
            assert [i for i in f.got if i in set(expected)] == expected, f"{f.transport}: 202s out of order"
            extras |= set(f.got) - set(expected)
        # An entry written on the old master as it died can reach subscribers and then be lost
        # with it: at most the one publish each publisher had in flight. Its retry (same key)
        # was accepted on the new master under another id.
        assert len(extras) <= len(publishers), f"{len(extras)} ids never accepted: {sorted(extras)}"
        titles = {}
        for f in followers:
            titles.update(f.titles)
        accepted_titles = {titles[i] for i in expected}
        assert all(titles[i] in accepted_titles for i in extras), "a lost entry's publish was never accepted"
        in_history = [n["id"] for n in history(server)]
        assert set(expected) <= set(in_history) and len(in_history) == len(set(in_history))
        assert any(t < killed_at for p in publishers for t, _ in p.accepted)
        retries = sum((p.retries for p in publishers), start=Counter())
        errors = sum((p.errors for p in publishers), start=Counter())
        unready = [t - killed_at for t, status in checks if status != 200]
        print(f"\nfailover: promoted {promoted_at - killed_at:.2f}s after the kill, first 202 "
              f"{recovered_at - killed_at:.2f}s after it; /readyz not 200 " + (
                  f"from {unready[0]:.2f}s to {unready[-1]:.2f}s after the kill" if unready else "ever") + "; "
              f"{len(expected)} accepted, retries {dict(retries)} "
              f"{dict(errors)}, "
              f"{len(extras)} delivered ids lost with the old master, "
              f"{sum(f.reconnects for f in followers)} follower reconnects"
              + ("" if cluster.master_port() == promoted.port else "; the Sentinels failed over AGAIN"))
    finally:
        stop.set()
        for f in followers:
            f.done.set()


def test_too_few_replicas_is_a_503_and_a_retry_with_the_same_key_publishes_it_once(
        sentinel_cluster, notifier_server, closing):
    cluster = sentinel_cluster()
    server = notifier_server(redis=cluster, env=MIN_REPLICAS)
    listener = closing(SSEClient(server.url))
    sync_subscribers(server.url, [listener])
    body, key = {"title": "confirmed by a replica"}, {"Idempotency-Key": "order-1-shipped"}
    replica = cluster.replicas()[0]
    replica.pause()
    try:
        refused = post_notify(server.url, body, headers=key)
    finally:
        replica.resume()
    assert refused.status == 503, refused.text
    assert refused.headers.get("retry-after", "").isdigit(), refused.headers
    assert isinstance(refused.error, str) and refused.error, refused.text
    cluster.wait_replicas_in_sync(10)
    accepted = post_notify(server.url, body, headers=key)
    assert accepted.status == 202, accepted.text
    assert accepted.headers.get("idempotent-replayed") == "true", accepted.headers
    sent = accepted.body["id"]
    print(f"\ntoo few replicas: {refused.status} Retry-After {refused.headers['retry-after']} {refused.text.strip()}; "
          f"the retry: {accepted.status} {accepted.text.strip()}")
    marker = publish(server.url, title="marker")
    # the entry reached subscribers when it was written; the retry added nothing
    assert [n["id"] for n in listener.notifications(2, timeout=5)] == [sent, marker]
    stored = [n for n in history(server) if n["title"] == body["title"]]
    assert [n["id"] for n in stored] == [sent]


def test_readyz_is_503_while_no_master_answers_and_200_again_after(sentinel_cluster, notifier_server):
    cluster = sentinel_cluster()
    server = notifier_server(redis=cluster)
    assert readyz(server) == 200
    master, replica = cluster.master, cluster.replicas()[0]
    replica.pause()  # no replica to promote either
    master.pause()
    try:
        wait_until(lambda: readyz(server) == 503, 10, interval=0.1, message="/readyz 503")
    finally:
        master.resume()
        replica.resume()
    wait_until(lambda: readyz(server) == 200, 10, interval=0.1, message="/readyz 200 again")
    assert cluster.master_port() == master.port  # the Sentinels did not fail over meanwhile
    # A new connection is refused a master the Sentinels still hold down (redis-py's Sentinel
    # does so), for up to a Sentinel PING period after it is back: publish once they see it.
    cluster.wait_sentinels_agree(5)
    publish(server.url, title="after")
