"""GET /metrics on real gunicorn gevent workers behind Redis: the figures of every worker add up."""

from __future__ import annotations

import os
import signal
import time

import gevent
import psutil
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from clients import SSEClient, WSClient, publish, sync_subscribers, unix_request, wait_until
from notifier.metrics import SAMPLE_EVERY

KEY = "metrics-key"
CONNECTIONS = 'notifier_connections{transport="%s"}'
PUBLISHED = "notifier_published_total"
DELIVERED = "notifier_delivered_total"
SLOW = "notifier_slow_client_disconnects_total"
RECONNECTS = "notifier_broker_reconnects_total"
REPLAYED = "notifier_replayed_total"
RESETS = "notifier_resets_total"
LATENCY_COUNT = "notifier_delivery_latency_seconds_count"
LATENCY_SUM = "notifier_delivery_latency_seconds_sum"


def parse(text: str) -> dict[str, float]:
    """'name{label="v",...}' (labels sorted) -> value, for every sample."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return samples


def scrape(server) -> dict[str, float]:
    # a new connection each time, so the scrapes land on either worker
    r = requests.get(server.url + "/metrics", timeout=5, headers={"Connection": "close"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain"), r.headers
    return parse(r.text)


def delta(after: dict, before: dict, name: str) -> float:
    return after.get(name, 0) - before.get(name, 0)


def wait_metrics(server, check, timeout=10.0, message="metrics"):
    """Scrape until ``check(samples)`` holds (other workers' gauges are sampled once a second)."""
    last = {}

    def ok():
        last["samples"] = scrape(server)
        return check(last["samples"])

    try:
        wait_until(ok, timeout, interval=0.2, message=message)
    except TimeoutError:
        raise AssertionError(f"{message}: last scrape {last.get('samples')}") from None
    return last["samples"]


def connect_on_both_workers(server, closing, minimum=6, **params):
    """WS and SSE clients, alternating, until both workers hold some; returns them with their worker."""
    clients = []
    while True:
        kind = WSClient if len(clients) % 2 == 0 else SSEClient
        clients.append(closing(kind(server.url, **params)))
        if len(clients) >= minimum:
            owners = wait_until(lambda: (lambda t: t if all(t.get(c.local_port) for c in clients) else None)(
                server.worker_of_ports()), 5, message="every client's worker known")
            workers = {owners[c.local_port] for c in clients}
            if len(workers) == 2:
                return clients, {c: owners[c.local_port] for c in clients}
        assert len(clients) < 40, "connections never spread over both workers"


def settled(server, before):
    """Wait until both workers dispatched everything published since ``before``, and their
    samplers (once a second) have counted the deliveries."""
    wait_metrics(server, lambda m: delta(m, before, LATENCY_COUNT) == 2 * delta(m, before, PUBLISHED),
                 message="every published notification dispatched by both workers")
    time.sleep(SAMPLE_EVERY + 0.3)
    return scrape(server)


@pytest.fixture(scope="module")
def redis(redis_factory):
    return redis_factory()


@pytest.fixture(scope="module")
def server(server_factory, redis):
    # a closed SSE client is noticed at the next write: keepalives every second
    return server_factory(workers=2, redis=redis, env={"NOTIFIER_HEARTBEAT": 1})


def test_connections_published_delivered_and_latency_add_up_across_workers(server, closing):
    start = scrape(server)
    assert start[CONNECTIONS % "ws"] == 0 and start[CONNECTIONS % "sse"] == 0
    clients, owners = connect_on_both_workers(server, closing)
    ws = sum(isinstance(c, WSClient) for c in clients)
    sse = len(clients) - ws
    # the gauge is the sum over both workers, whichever of them answers
    for _ in range(4):
        wait_metrics(server, lambda m: (m[CONNECTIONS % "ws"], m[CONNECTIONS % "sse"]) == (ws, sse),
                     message=f"{ws} ws and {sse} sse connections")

    sync_subscribers(server.url, clients)
    before = settled(server, start)
    count = 10
    ids = [publish(server.url, title=f"n{i}") for i in range(count)]
    for client in clients:
        assert [n["id"] for n in client.notifications(count, timeout=10)] == ids
    after = settled(server, before)
    assert delta(after, before, PUBLISHED) == count
    assert delta(after, before, DELIVERED) == count * len(clients)
    assert delta(after, before, LATENCY_COUNT) == 2 * count  # once per notification per worker
    assert 0 <= delta(after, before, LATENCY_SUM) < 2 * count * 5.0
    assert after['notifier_delivery_latency_seconds_bucket{le="+Inf"}'] == after[LATENCY_COUNT]

    closing.close_all()
    wait_metrics(server, lambda m: (m[CONNECTIONS % "ws"], m[CONNECTIONS % "sse"]) == (0, 0),
                 message="no connections left")


def test_replayed_and_reset_resumes_are_counted(server, closing):
    base = publish(server.url, title="base", topic="replay")
    ids = [publish(server.url, title=f"r{i}", topic="replay") for i in range(3)]
    publish(server.url, title="another topic", topic="elsewhere")
    before = scrape(server)
    ws = closing(WSClient(server.url, topics=["replay"], last_event_id=base))
    sse = closing(SSEClient(server.url, topics=["replay"], headers={"Last-Event-ID": base}))
    for client in (ws, sse):
        assert [n["id"] for n in client.notifications(3)] == ids
    broadcasts = len(requests.get(server.url + "/notifications?limit=1000", timeout=5).json()["notifications"])
    gone = closing(SSEClient(server.url, last_event_id="0000000000001-000000"))
    assert gone.next_notification()["type"] == "notifier.reset"  # then the broadcasts history keeps
    after = wait_metrics(server, lambda m: delta(m, before, RESETS) == 1, message="one reset")
    assert delta(after, before, REPLAYED) == 6 + broadcasts


def test_a_slow_client_cut_is_counted(server_factory, redis, closing):
    slow_server = server_factory(workers=2, redis=redis, env={"NOTIFIER_QUEUE_SIZE": 8})
    stalled = [closing(WSClient(slow_server.url, rcvbuf=4096)), closing(SSEClient(slow_server.url, rcvbuf=4096))]
    sync_subscribers(slow_server.url, stalled)
    before = scrape(slow_server)
    big = "x" * 32 * 1024
    with requests.Session() as session:
        for i in range(400):
            r = session.post(slow_server.url + "/notify", json={"title": "big", "message": big}, timeout=5)
            assert r.status_code == 202, r.text
            if i % 25 == 24 and delta(scrape(slow_server), before, SLOW) == 2:
                break
    wait_metrics(slow_server, lambda m: delta(m, before, SLOW) == 2 and m[CONNECTIONS % "ws"] == 0
                 and m[CONNECTIONS % "sse"] == 0, message="both stalled clients cut")
    # read to the end before closing: a client that closes while the server is still stuck
    # writing to it makes simple-websocket's reader log a ConcurrentObjectUseError
    assert stalled[0].drain_until_closed(15)[1] in (1013, None)
    stalled[1].drain_until_closed(15)


def test_a_dead_workers_connections_stop_counting_and_the_metrics_dir_is_removed(server_factory, redis, closing):
    own = server_factory(workers=2, redis=redis)
    # the workers keep their metric files open: that is where the directory is
    directories = {os.path.dirname(f.path) for pid in own.worker_pids()
                   for f in psutil.Process(pid).open_files() if f.path.endswith(".db")}
    assert len(directories) == 1 and os.path.isdir(next(iter(directories))), directories
    assert os.path.basename(next(iter(directories))).startswith("notifier-metrics-")
    clients, owners = connect_on_both_workers(own, closing)
    wait_metrics(own, lambda m: m[CONNECTIONS % "ws"] + m[CONNECTIONS % "sse"] == len(clients),
                 message=f"{len(clients)} connections")
    victim = next(iter(owners.values()))
    survivors = sum(pid != victim for pid in owners.values())
    os.kill(victim, signal.SIGKILL)
    wait_metrics(own, lambda m: m[CONNECTIONS % "ws"] + m[CONNECTIONS % "sse"] == survivors, timeout=15,
                 message=f"only the {survivors} connections of the surviving worker")
    # A worker that gets SIGTERM while still booting can miss it (gunicorn sets its
    # handlers after gevent's patching) and outlive the stop: let the replacement boot.
    own.wait_workers()
    own.stop()
    assert not os.path.exists(next(iter(directories)))


def test_metrics_are_for_loopback_or_a_publisher_key(notifier_server, short_tmp):
    sock = str(short_tmp / "m.sock")
    open_server = notifier_server(workers=1, bind=[f"unix:{sock}"])
    refused = unix_request(sock, "GET", "/metrics")  # a unix-socket peer is not loopback
    assert refused.status == 403 and "NOTIFIER_API_KEYS" in refused.body["error"]
    open_server.stop()

    keyed = notifier_server(workers=1, bind=[f"unix:{sock}"], env={"NOTIFIER_API_KEYS": KEY})
    assert unix_request(sock, "GET", "/metrics").status == 401
    assert unix_request(sock, "GET", "/metrics", headers={"Authorization": "Bearer nope"}).status == 403
    ok = unix_request(sock, "GET", "/metrics", headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status == 200 and "notifier_connections" in ok.text
    assert requests.get(keyed.url + "/metrics", timeout=5).status_code == 200  # loopback TCP


def test_metrics_public_opens_them_to_any_peer_in_process():
    from notifier import create_app

    app = create_app({"NOTIFIER_METRICS_PUBLIC": "true"})
    elsewhere = {"REMOTE_ADDR": "203.0.113.9"}
    assert app.test_client().get("/metrics", environ_base=elsewhere).status_code == 200
    closed = create_app({})
    r = closed.test_client().get("/metrics", environ_base=elsewhere)
    assert r.status_code == 403 and "error" in r.get_json()


class Listening:
    """A connection that takes everything (the hub's ``Connection``)."""

    def offer(self, notes, data) -> bool:
        return True

    def close(self, code, reason) -> None:
        pass


def test_drop_in_without_a_multiprocess_dir_uses_the_default_registry(monkeypatch):
    from flask import Flask

    from notifier import Notifier

    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    app = Flask(__name__)
    notifier = Notifier(app)
    # someone listens: the in-process broker fans out (and the hub writes) only then
    app.extensions["notifier"].hub.subscribe(Listening(), "sse")
    before = parse(app.test_client().get("/metrics").get_data(as_text=True))
    with app.app_context():
        notifier.publish("counted")
    gevent.sleep(0.1)  # the hub writes (and observes the latency) from the event loop
    after = parse(app.test_client().get("/metrics").get_data(as_text=True))
    assert delta(after, before, PUBLISHED) == 1 and delta(after, before, LATENCY_COUNT) == 1
    assert any(name.startswith("python_gc") or name.startswith("process_") for name in after)


def test_a_redis_restart_counts_one_broker_reconnect_per_worker(server, redis):
    before = scrape(server)
    redis.stop()
    redis.start()
    wait_metrics(server, lambda m: delta(m, before, RECONNECTS) == 2, timeout=20,
                 message="one broker reconnect in each of the 2 workers")
    wait_until(lambda: requests.get(server.url + "/readyz", timeout=5).status_code == 200, 10,
               message="ready again")
    assert publish(server.url, title="after the restart")
