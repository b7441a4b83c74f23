"""Several workers sharing notifications through Redis."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from clients import SSEClient, WSClient, publish, sync_subscribers

WORKERS = 2
MIN_SUBSCRIBERS = 20
MAX_SUBSCRIBERS = 60
NOTIFICATIONS = 50


@pytest.fixture(scope="module")
def server(server_factory, module_redis):
    return server_factory(workers=WORKERS, redis=module_redis)


def connect_spread(server, closing, topics=()):
    """Open WS and SSE subscribers (alternating) until >= MIN_SUBSCRIBERS sit on >= 2 workers."""
    clients = []
    while True:
        kind = WSClient if len(clients) % 2 == 0 else SSEClient
        clients.append(closing(kind(server.url, topics=topics)))
        if len(clients) >= MIN_SUBSCRIBERS and len(clients) % 5 == 0:
            owners = owners_of(server, clients)
            if len(set(owners.values())) >= 2:
                spread = {pid: list(owners.values()).count(pid) for pid in set(owners.values())}
                print(f"{len(clients)} subscribers per worker pid: {spread}")
                return clients, owners
            assert len(clients) < MAX_SUBSCRIBERS, (
                f"{len(clients)} connections all landed on worker(s) {set(owners.values())}")


def owners_of(server, clients, timeout=5.0):
    """client -> worker pid, from the workers' own socket tables."""
    deadline = time.monotonic() + timeout
    while True:
        table = server.worker_of_ports()
        owners = {c: table.get(c.local_port) for c in clients}
        if all(owners.values()) or time.monotonic() > deadline:
            missing = [c.local_port for c, pid in owners.items() if not pid]
            assert not missing, f"no worker holds client ports {missing}"
            return owners
        time.sleep(0.1)


def test_every_subscriber_on_every_worker_gets_every_notification_once_in_order(server, closing):
    clients, owners = connect_spread(server, closing, topics=["room"])
    assert set(owners.values()) <= server.worker_pids()
    sync_subscribers(server.url, clients)

    # alternate broadcasts and topic notifications; publishes land on either worker
    ids = []
    for i in range(NOTIFICATIONS):
        target = {"topic": "room"} if i % 2 else {}
        ids.append(publish(server.url, title=f"n{i}", **target))
    assert ids == sorted(ids) and len(set(ids)) == NOTIFICATIONS, f"ids not in publish order: {ids}"
    end = publish(server.url, title="end")

    def receive(client):
        got = client.notifications(NOTIFICATIONS + 1, timeout=20)
        return [m["id"] for m in got]

    with ThreadPoolExecutor(max_workers=len(clients)) as pool:
        results = list(pool.map(receive, clients))
    for client, got in zip(clients, results):
        assert got == ids + [end], (
            f"{type(client).__name__} on worker {owners[client]}: got {len(got)} ids, "
            f"duplicates={len(got) - len(set(got))}, first mismatch at "
            f"{next((i for i, (a, b) in enumerate(zip(got, ids + [end])) if a != b), None)}")


def test_user_and_topic_targets_cross_workers(server, closing):
    clients, owners = connect_spread(server, closing, topics=["alpha"])
    sync_subscribers(server.url, clients)
    # a topic nobody here subscribed to, then one they did, then a broadcast
    publish(server.url, topic="beta", title="nobody")
    for_alpha = publish(server.url, topic="alpha", title="alpha")
    publish(server.url, user_id="someone-else", title="not for anonymous subscribers")
    everyone = publish(server.url, title="all")

    def receive(client):
        return [m["id"] for m in client.notifications(2, timeout=10)]

    with ThreadPoolExecutor(max_workers=len(clients)) as pool:
        for client, got in zip(clients, pool.map(receive, clients)):
            assert got == [for_alpha, everyone], f"worker {owners[client]}: {got}"
