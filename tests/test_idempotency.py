"""Idempotency-Key: a publisher's retry publishes nothing again, on both brokers, also when
Redis stalls so that a stored notification was answered 503."""
from __future__ import annotations

import socket
import threading
import time

import pytest
import requests

from clients import SSEClient, sync_subscribers
from notifier.client import publish as client_publish


@pytest.fixture(scope="module", params=["in-process", "redis"])
def server(request, server_factory, redis_factory):
    redis = redis_factory() if request.param == "redis" else None
    return server_factory(redis=redis, env={"NOTIFIER_API_KEYS": "key-a,key-b"})


def post(server, body, key, publisher="key-a"):
    return requests.post(server.url + "/notify", json=body, timeout=10,
                         headers={"Idempotency-Key": key, "Authorization": f"Bearer {publisher}"})


def test_a_repeat_answers_the_same_id_and_publishes_nothing_again(server, closing):
    listener = closing(SSEClient(server.url))
    sync_subscribers(server.url, [listener], headers={"Authorization": "Bearer key-a"})
    first = post(server, {"title": "once"}, "order-17-shipped")
    again = post(server, {"title": "once"}, "order-17-shipped")
    assert first.status_code == again.status_code == 202
    assert first.json() == again.json() and "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    marker = post(server, {"title": "after"}, "marker").json()["id"]
    got = [listener.next_notification(5) for _ in range(2)]
    assert [n["id"] for n in got] == [first.json()["id"], marker]  # once, then the next one


def test_the_same_key_with_another_body_is_a_conflict(server):
    assert post(server, {"title": "one"}, "k-conflict").status_code == 202
    reply = post(server, {"title": "another"}, "k-conflict")
    assert reply.status_code == 422 and "Idempotency-Key" in reply.json()["error"]


def test_keys_belong_to_their_publisher(server):
    a = post(server, {"title": "same"}, "shared-key", publisher="key-a")
    b = post(server, {"title": "same"}, "shared-key", publisher="key-b")
    assert a.status_code == b.status_code == 202 and a.json()["id"] != b.json()["id"]


@pytest.mark.parametrize("key", ["", "x" * 256, "ключ", "tab\there"])
def test_a_malformed_key_is_a_400(server, key):
    reply = requests.post(server.url + "/notify", json={"title": "t"}, timeout=10,
                          headers={"Idempotency-Key": key.encode("utf-8").decode("latin-1"),
                                   "Authorization": "Bearer key-a"})
    assert reply.status_code == 400 and "Idempotency-Key" in reply.json()["error"]


def test_publishers_retrying_with_their_keys_through_a_redis_stall_deliver_each_once(
        notifier_server, redis_server, closing):
    """Redis sleeps 5 s (DEBUG SLEEP): a publish stored meanwhile may answer 503 after the
    server's 3 s window. The Python client retries with the same key: every notification
    arrives exactly once."""
    server = notifier_server(redis=redis_server)
    listener = closing(SSEClient(server.url))
    sync_subscribers(server.url, [listener])
    titles = [f"stall-{i}" for i in range(12)]
    ids: dict[str, str] = {}

    def publish_one(title: str) -> None:
        ids[title] = client_publish(title, url=server.url, timeout=15, retries=6)

    slept = []
    stall = threading.Thread(target=lambda: slept.append(redis_command(redis_server.port, b"DEBUG SLEEP 5")))
    publishers = [threading.Thread(target=publish_one, args=(t,)) for t in titles]
    stall.start()
    time.sleep(0.2)
    for t in publishers:
        t.start()
        time.sleep(0.05)
    for t in publishers + [stall]:
        t.join(60)
    assert slept == [b"+OK\r\n"]  # Redis really slept
    assert sorted(ids) == sorted(titles)  # every publish answered 202 in the end
    got = []
    deadline = time.monotonic() + 20
    while len(got) < len(titles) and time.monotonic() < deadline:
        got.append(listener.next_notification(10)["title"])
    with pytest.raises(TimeoutError):
        got.append(listener.next_notification(1.5)["title"])  # and no second copy of any
    assert sorted(got) == sorted(titles)


def redis_command(port: int, command: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(command + b"\r\n")
        return s.recv(1024)
