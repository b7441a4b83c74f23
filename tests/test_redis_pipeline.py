"""Publishes sharing one pipelined Redis connection (notifier.brokers.redis_pipeline): many at
once each stored once with their own id, a Redis that lost the script or restarted, and a
caller killed mid-round that must not leave the others waiting."""
import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import redis

from notifier.brokers.redis import RedisBroker
from notifier.config import Settings
from notifier.core.notification import encode_fields
from notifier.runtime.threads import ThreadRuntime

ROOT = Path(__file__).resolve().parent.parent


def entry(i: int) -> tuple[str, str, bytes]:
    return ("@all", "notification", encode_fields({"title": f"n{i}"}))


def evalsha_calls(client: redis.Redis) -> int:
    return client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)


def test_concurrent_publishes_are_each_stored_once_with_their_own_id(redis_server):
    broker = RedisBroker(Settings.load({"REDIS_URL": redis_server.url}), ThreadRuntime())
    client = redis.Redis(port=redis_server.port)
    broker.publish([entry(-1)])  # loads the script
    client.config_resetstat()
    ids: dict[int, str] = {}
    errors = []

    def one(i: int) -> None:
        try:
            ids[i] = broker.publish([entry(i)]).id
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(60)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors and len(ids) == 60
    assert len(set(ids.values())) == 60
    assert client.xlen("notifier:stream") == 61
    assert evalsha_calls(client) == 60  # one script run each: none lost, none repeated
    titles = {json.loads(fields[b"n"])["title"] for _, fields in client.xrange("notifier:stream")}
    assert titles == {f"n{i}" for i in range(-1, 60)}


def test_a_redis_that_lost_the_script_or_restarted_gets_it_again(redis_server):
    broker = RedisBroker(Settings.load({"REDIS_URL": redis_server.url}), ThreadRuntime())
    client = redis.Redis(port=redis_server.port)
    broker.publish([entry(0)])
    client.script_flush()
    broker.publish([entry(1)])  # NOSCRIPT: loaded again, run once
    assert client.xlen("notifier:stream") == 2
    redis_server.stop()
    redis_server.start()  # empty, and the publish connection is stale
    published = broker.publish([entry(2)])
    assert len(published.ids) == 1
    assert redis.Redis(port=redis_server.port).xlen("notifier:stream") == 1


KILLED_LEADER = textwrap.dedent("""
    from gevent import monkey
    monkey.patch_all()
    import sys, time, gevent, redis
    from notifier.brokers.redis import RedisBroker
    from notifier.config import Settings
    from notifier.core.notification import encode_fields
    from notifier.runtime.gevent import GeventRuntime

    url = sys.argv[1]
    broker = RedisBroker(Settings.load({"REDIS_URL": url}), GeventRuntime())
    entry = lambda t: [("@all", "notification", encode_fields({"title": t}))]
    broker.publish(entry("warm"))
    stall = gevent.spawn(redis.Redis.from_url(url).execute_command, "DEBUG", "SLEEP", "1")
    gevent.sleep(0.1)
    leader = gevent.spawn(broker.publish, entry("leader"))
    gevent.sleep(0.1)  # the leader's round is out, waiting on the stalled Redis
    other = gevent.spawn(broker.publish, entry("other"))
    gevent.sleep(0.1)
    leader.kill()
    started = time.monotonic()
    other.join(10)
    print("other:", other.successful(), round(time.monotonic() - started, 2), flush=True)
""")


def test_a_caller_killed_mid_round_leaves_no_one_waiting(redis_server):
    out = subprocess.run([sys.executable, "-c", KILLED_LEADER, redis_server.url], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    line = [x for x in out.stdout.splitlines() if x.startswith("other:")][0]
    _, ok, took = line.split()
    assert ok == "True"
    assert float(took) < 5  # the stall is 1 s: it got its turn, not a wait timeout
