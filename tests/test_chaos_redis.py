"""Chaos with Redis itself failing: it stalls (DEBUG SLEEP), then it is killed and comes
back empty, while publishers that retry with their Idempotency-Key publish throughout.

- After the stall, every title the publishers got a 202 for is delivered exactly once.
- After the restart, every notification accepted from then on reaches every subscriber
  that was connected (or comes back), after at most one reset, in order, once.
"""
from __future__ import annotations

import socket
import threading
import time
from collections import Counter

import requests

from conftest import RedisServer
from test_chaos import TOPICS, Subscriber, settle

SUBSCRIBERS = 24
PUBLISHERS = 3
PER_PUBLISHER = 150
RETRIES = 8


def keyed_publisher(url: str, n: int, offset: int, outcomes: dict, marks: dict) -> None:
    """Publish ``n`` notifications, each retried with its own key on a 503 or no answer."""
    with requests.Session() as session:
        for i in range(n):
            title = f"k{offset}-{i}"
            target = {} if i % 2 else {"topic": TOPICS[(i // 2) % len(TOPICS)]}
            outcome = ("never tried", None)
            for attempt in range(RETRIES):
                try:
                    r = session.post(url + "/notify", json={"title": title, **target}, timeout=10,
                                     headers={"Idempotency-Key": title})
                except requests.RequestException:
                    outcome = ("no answer", None)
                    time.sleep(0.3)
                    continue
                outcome = (r.status_code, r.json().get("id") if r.status_code == 202 else None)
                if r.status_code != 503:
                    break
                time.sleep(float(r.headers.get("Retry-After", "1")) * 0.5)
            outcomes[title] = (*outcome, target.get("topic"), time.monotonic())
            time.sleep(0.03)


def redis_command(port: int, command: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(command + b"\r\n")
        return s.recv(1024)


def test_redis_stalled_then_restarted_empty_loses_and_doubles_nothing_accepted(notifier_server, tmp_path):
    redis = RedisServer(tmp_path / "redis")  # no persistence: a restart comes back empty
    redis.start()
    try:
        run(notifier_server, redis)
    finally:
        redis.stop()


def run(notifier_server, redis: RedisServer) -> None:
    server = notifier_server(workers=2, redis=redis)
    subs = [Subscriber(server.url, i, [TOPICS[i % len(TOPICS)]]) for i in range(SUBSCRIBERS)]
    for s in subs:
        s.start()
    for s in subs:
        assert s.connected.wait(20), "a subscriber could not connect"
    time.sleep(0.5)
    outcomes: dict[str, tuple] = {}
    marks: dict[str, float] = {}
    threads = [threading.Thread(target=keyed_publisher, args=(server.url, PER_PUBLISHER, k, outcomes, marks),
                                daemon=True) for k in range(PUBLISHERS)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(1.5)
    assert redis_command(redis.port, b"DEBUG SLEEP 4") == b"+OK\r\n"  # once Redis wakes; publishes meanwhile wait or 503
    time.sleep(2.0)
    marks["killed"] = time.monotonic()
    redis.proc.kill()  # kill -9: everything Redis held is gone
    redis.proc.wait(10)
    time.sleep(1.0)
    redis.start()
    marks["back"] = time.monotonic()
    for t in threads:
        t.join(timeout=120)
        assert not t.is_alive(), "a publisher hung"

    accepted = {title: nid for title, (status, nid, _, _) in outcomes.items() if status == 202}
    topic_of = {title: topic for title, (_, _, topic, _) in outcomes.items()}
    answered_at = {title: when for title, (_, _, _, when) in outcomes.items()}
    # Ids minted by the new Redis are newer than the kill (stream ids are its clock).
    after_restart = {t: nid for t, nid in accepted.items() if answered_at[t] > marks["back"]}
    assert len(after_restart) >= 50, "too few publishes after the restart for a meaningful run"

    def entitled(sub: Subscriber, titles) -> list[str]:
        return sorted(titles[t] for t in titles if topic_of[t] in (None, *sub.topics))

    settle(subs, lambda s: set(entitled(s, after_restart)) <= {nid for nid, _ in s.received})

    problems = []
    for s in subs:
        ids = [nid for nid, _ in s.received]
        titles = Counter(title for _, title in s.received)
        missing = set(entitled(s, after_restart)) - set(ids)
        doubled = [t for t, c in titles.items() if c > 1 and t in accepted and answered_at[t] < marks["killed"]]
        if missing or len(ids) != len(set(ids)) or doubled or s.resets > 1 or ids != sorted(ids):
            problems.append(f"subscriber {s.index} ({s.transport}): {len(missing)} accepted after the restart "
                            f"missing, {len(ids) - len(set(ids))} ids twice, titles twice before the kill "
                            f"{doubled[:3]}, resets {s.resets}, in order {ids == sorted(ids)}")
    refused = Counter(str(v[0]) for v in outcomes.values() if v[0] != 202)
    print(f"\nredis chaos: published {len(outcomes)}, accepted {len(accepted)} "
          f"({len(after_restart)} after the restart), refused {dict(refused)}, "
          f"resets {sum(s.resets for s in subs)}, stall at 1.5 s, kill at {marks['killed'] - t0:.1f} s")
    assert not problems, "\n".join(problems[:20])
