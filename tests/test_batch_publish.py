"""Batch publish: POST /notify with a JSON array, on both brokers — order, all or none,
limits, the rate counting each notification, idempotency, mixed targets; and the Python
and command-line ways to send one."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import requests

from clients import SSEClient, WSClient, sync_subscribers
from conftest import ROOT
from notifier.client import ClientError, publish_many


@pytest.fixture(scope="module", params=["in-process", "redis"])
def server(request, server_factory, redis_factory):
    redis = redis_factory() if request.param == "redis" else None
    return server_factory(redis=redis, env={"NOTIFIER_PUBLISH_RATE": 1000, "NOTIFIER_MAX_BATCH_BYTES": 300000})


def post(server, body, **headers):
    return requests.post(server.url + "/notify", json=body, headers=headers, timeout=15)


def test_a_batch_is_stored_in_order_and_reaches_each_target(server, closing):
    orders = closing(WSClient(server.url, topics=["orders"]))
    anyone = closing(SSEClient(server.url))
    sync_subscribers(server.url, [orders, anyone])
    batch = [{"title": "b0", "topic": "orders"}, {"title": "b1"}, {"title": "b2", "user_id": 7},
             {"title": "b3", "topic": "news"}, {"title": "b4", "topic": "orders", "data": {"n": 4}}]
    reply = post(server, batch)
    assert reply.status_code == 202, reply.text
    ids = reply.json()["ids"]
    assert len(ids) == 5 and ids == sorted(ids)
    assert [n["title"] for n in orders.notifications(3)] == ["b0", "b1", "b4"]
    assert [n["id"] for n in anyone.notifications(1)] == [ids[1]]
    history = requests.get(server.url + "/notifications?topic=orders&limit=1000", timeout=5).json()["notifications"]
    assert [n["id"] for n in history][-3:] == [ids[0], ids[1], ids[4]]


def test_an_invalid_item_stores_nothing_and_says_which(server, closing):
    listener = closing(SSEClient(server.url))
    sync_subscribers(server.url, [listener])
    reply = post(server, [{"title": "fine"}, {"title": "fine too"}, {"title": 5}, {"title": "never"}])
    assert reply.status_code == 400 and reply.json()["index"] == 2 and "title" in reply.json()["error"]
    marker = post(server, {"title": "marker"}).json()["id"]
    assert listener.next_notification(5)["id"] == marker  # nothing of the batch went out


@pytest.mark.parametrize("body, status", [([], 400), ([{"title": "x"}] * 1001, 400), ("[" + "1," * 10 + "1]", 400)])
def test_a_batch_holds_1_to_1000_objects(server, body, status):
    reply = requests.post(server.url + "/notify", data=body if isinstance(body, str) else json.dumps(body),
                          headers={"Content-Type": "application/json"}, timeout=15)
    assert reply.status_code == status and "error" in reply.json()


def test_size_limits_hold_for_the_batch_and_for_each_item(server):
    assert post(server, [{"title": "x" * 200, "message": "y" * 1000}] * 1000).status_code == 413  # over 300,000
    reply = post(server, [{"title": "ok"}, {"title": "big", "message": "z" * 70000}])  # one over 65,536
    assert reply.status_code == 413 and reply.json()["index"] == 1
    assert post(server, [{"title": "x", "message": "m" * 1000}] * 200).status_code == 202  # 200 KB in all: fine


def test_the_rate_counts_each_notification_and_admits_a_full_batch(server_factory, redis_factory):
    limited = server_factory(env={"NOTIFIER_PUBLISH_RATE": 10}, redis=redis_factory())
    first = post(limited, [{"title": f"t{i}"} for i in range(1000)])
    assert first.status_code == 202  # a whole batch fits a fresh second
    second = post(limited, {"title": "one more"})
    assert second.status_code == 429 and int(second.headers["Retry-After"]) >= 1


def test_a_batch_repeated_with_its_key_answers_the_same_ids(server):
    batch = [{"title": "k1"}, {"title": "k2"}]
    first = post(server, batch, **{"Idempotency-Key": "batch-42"})
    again = post(server, batch, **{"Idempotency-Key": "batch-42"})
    assert first.json()["ids"] == again.json()["ids"] and again.headers["Idempotent-Replayed"] == "true"
    assert post(server, batch[:1], **{"Idempotency-Key": "batch-42"}).status_code == 422


def test_a_batch_is_all_or_nothing_when_redis_is_down(notifier_server, redis_server):
    server = notifier_server(redis=redis_server)
    redis_server.stop()
    reply = post(server, [{"title": "a"}, {"title": "b"}])
    assert reply.status_code == 503 and reply.headers["Retry-After"]
    redis_server.start()  # empty: nothing of the batch was stored before it went down
    history = requests.get(server.url + "/notifications", timeout=10)
    assert history.status_code == 200 and history.json()["notifications"] == []


def test_python_and_the_command_line_send_batches(server, closing, tmp_path):
    listener = closing(SSEClient(server.url))
    sync_subscribers(server.url, [listener])
    ids = publish_many([{"title": "p1"}, {"title": "p2", "topic": "elsewhere"}, {"title": "p3"}], url=server.url)
    assert [n["id"] for n in listener.notifications(2)] == [ids[0], ids[2]]
    with pytest.raises(ClientError) as refused:
        publish_many([{"title": "fine"}, {"nope": 1}], url=server.url)
    assert refused.value.status == 400
    lines = tmp_path / "n.jsonl"
    lines.write_text("\n".join(json.dumps({"title": f"line {i}"}) for i in range(1500)) + "\n\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_") and k != "REDIS_URL"}
    out = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "notifier", "send", "--jsonl", "-",
                          "--url", server.url], cwd=ROOT, env=env, input=lines.read_text(), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    sent = out.stdout.split()
    assert len(sent) == 1500 and sent == sorted(sent)
    got = listener.notifications(1500, timeout=30)
    assert [n["title"] for n in got] == [f"line {i}" for i in range(1500)]
    bad = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "notifier", "send", "--jsonl", "-",
                          "--url", server.url], cwd=ROOT, env=env, input='{"title": "a"}\n[1]\n',
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "line 2" in bad.stderr and "Traceback" not in bad.stderr
