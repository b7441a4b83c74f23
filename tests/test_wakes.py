"""The Redis follower is woken only for keys its worker wants (notifier.brokers.redis_wake):
entries for other keys are read in pages about once a second, yet what a connection here
wants arrives at once and in order, also for a key whose first subscriber has just attached
(the follower subscribes to its wake, then reads the stream to catch up). On gunicorn's
gevent workers (one server follows, another publishes) and on the thread runtime."""
from __future__ import annotations

import statistics
import time

import jwt
import pytest
import requests

from clients import SYNC_TYPE, WSClient, publish, sync_subscribers, wait_until

SECRET = "wakes-test-secret-0123456789abcdef0123456789"
ROUNDS = 5
PROMPT = 0.25
"""Seconds: a median above this means the entries waited for the follower's timed read (1 s)."""


def token(sub: str) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 600}, SECRET, algorithm="HS256")


@pytest.fixture(scope="module")
def servers(server_factory, module_redis):
    """A follower (1 worker) and a publisher, sharing one Redis."""
    env = {"NOTIFIER_SECRET": SECRET, "NOTIFIER_PUBLISH_RATE": "1000000"}
    return server_factory(workers=1, redis=module_redis, env=env), server_factory(workers=1, redis=module_redis, env=env)


def publish_many(url: str, items: list[dict]) -> list[str]:
    ids: list[str] = []
    for start in range(0, len(items), 1000):
        r = requests.post(url + "/notify", json=items[start:start + 1000], timeout=30)
        assert r.status_code == 202, r.text
        ids += r.json()["ids"]
    return ids


def test_what_no_one_here_wants_does_not_delay_what_someone_does(servers, closing):
    follower, publisher = servers
    alice = closing(WSClient(follower.url, token=token("alice")))
    sync_subscribers(publisher.url, [alice], user_id="alice")
    latencies, sent, got = [], [], []
    for r in range(ROUNDS):
        publish_many(publisher.url, [{"user_id": f"other-{i}", "title": "not here"} for i in range(2000 // ROUNDS)])
        started = time.monotonic()
        sent.append(publish(publisher.url, user_id="alice", title=f"for alice {r}"))
        got.append(alice.next_notification(timeout=5)["id"])
        latencies.append(time.monotonic() - started)
    sent += publish_many(publisher.url, [{"user_id": "alice", "title": f"batch {i}"} for i in range(50)])
    got += [n["id"] for n in alice.notifications(50, timeout=10)]
    assert got == sent  # every one, once, in order
    assert statistics.median(latencies) < PROMPT, f"latencies {latencies}"


def test_a_key_just_attached_gets_what_is_published_right_after(servers, closing):
    follower, publisher = servers
    anon = closing(WSClient(follower.url))
    sync_subscribers(publisher.url, [anon])
    latencies = []
    for r in range(ROUNDS):
        topic = f"new-{r}-{time.monotonic_ns()}"
        anon.send_json({"action": "subscribe", "topic": topic})
        while (msg := anon.recv_json(5)).get("ack") is None:  # sync markers still in flight
            assert msg.get("type") == SYNC_TYPE, msg
        assert msg == {"ack": "subscribe", "topic": topic}  # in the hub now
        started = time.monotonic()
        sent = publish(publisher.url, topic=topic, title="right after")
        assert anon.next_notification(timeout=5)["id"] == sent
        latencies.append(time.monotonic() - started)
    assert statistics.median(latencies) < PROMPT, f"latencies {latencies}"

    # A new connection, for a user none here had: online (attached) first, then published to.
    user = f"bob-{time.monotonic_ns()}"
    bob = closing(WSClient(follower.url, token=token(user)))
    wait_until(lambda: requests.get(publisher.url + "/presence", params={"user_id": user}, timeout=5).json()["online"],
               timeout=10, message="bob online")
    started = time.monotonic()
    sent = publish(publisher.url, user_id=user, title="welcome")
    assert bob.next_notification(timeout=5)["id"] == sent
    assert time.monotonic() - started < 1.0


def test_the_thread_runtime_follower_is_woken_for_the_keys_of_its_hub(redis_server):
    from test_hub import FakeConnection

    from notifier.brokers.redis import RedisBroker
    from notifier.config import Settings
    from notifier.core.hub import Hub
    from notifier.core.notification import encode_fields, user_key
    from notifier.runtime.threads import ThreadRuntime

    runtime = ThreadRuntime()
    hub = Hub(runtime, flush_interval=0.01)
    broker = RedisBroker(Settings.load({"REDIS_URL": redis_server.url}), runtime)
    broker.follow_keys(hub)
    broker.start(hub.dispatch, wants=hub.wants)
    try:
        carol = FakeConnection()
        hub.subscribe(carol, "ws", "carol")
        for round_ in range(ROUNDS):
            broker.publish([(user_key(f"x{i}"), "notification", encode_fields({"title": "no"})) for i in range(300)])
            started = time.monotonic()
            ids = broker.publish([(user_key("carol"), "notification", encode_fields({"title": str(round_)}))]).ids
            wait_until(lambda: carol.got, timeout=5, message="carol's notification")
            assert time.monotonic() - started < 0.5
            assert carol.take() == ids
        dave = FakeConnection()
        sub = hub.subscribe(dave, "ws", "dave")
        ids = broker.publish([(user_key("dave"), "notification", encode_fields({"title": "right after"}))]).ids
        wait_until(lambda: dave.got, timeout=5, message="dave's notification")
        assert dave.take() == ids
        hub.unsubscribe(sub)  # the follower unsubscribes; dave's entries are skipped again
        broker.publish([(user_key("dave"), "notification", encode_fields({"title": "gone"}))])
        time.sleep(1.5)
        assert dave.got == [] and carol.got == []
    finally:
        broker.stop()
