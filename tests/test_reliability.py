"""Faults against the real thing: a resume storm on a small Redis pool, a Redis that stops
answering (SIGSTOP, as in a network partition), and 503s that say when to retry."""
from __future__ import annotations

import os
import socket
import signal
import threading
import time

import requests

from clients import publish, wait_until


def test_a_resume_storm_waits_for_pooled_connections_instead_of_failing(notifier_server, redis_server):
    """Every connection of a worker resumes at once (its worker was killed, say): with a pool
    of 4 Redis connections, 200 resumes wait their turn and none is refused."""
    server = notifier_server(workers=1, redis=redis_server, env={"NOTIFIER_REDIS_POOL": 4})
    last = publish(server.url, title="before")
    for i in range(20):
        publish(server.url, title=f"missed {i}")
    statuses: list[int] = []
    barrier = threading.Barrier(200, timeout=20)

    def resume() -> None:
        with requests.Session() as s:
            barrier.wait()
            with s.get(server.url + "/events", params={"last_event_id": last}, stream=True, timeout=20) as r:
                statuses.append(r.status_code)
                if r.status_code == 200:
                    seen = b""
                    for chunk in r.iter_content(65536):
                        seen += chunk
                        if seen.count(b"\nid: ") + seen.startswith(b"id: ") >= 20 or seen.count(b"event: ") >= 20:
                            break

    threads = [threading.Thread(target=resume) for _ in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(statuses) == 200 and set(statuses) == {200}, sorted(set(statuses))
    assert "Too many connections" not in server.log.read_text()


def test_a_redis_that_stops_answering_is_noticed_within_about_two_seconds(notifier_server, redis_server):
    server = notifier_server(workers=1, redis=redis_server)
    os.kill(redis_server.proc.pid, signal.SIGSTOP)  # no reset, no answer: a partition
    stopped = time.monotonic()
    try:
        wait_until(lambda: "redis follower lost connection" in server.log.read_text(), timeout=6,
                   message="the follower noticing")
        noticed = time.monotonic() - stopped
        reply = requests.post(server.url + "/notify", json={"title": "x"}, timeout=15)
        assert reply.status_code == 503 and int(reply.headers["Retry-After"]) >= 1
        ready = requests.get(server.url + "/readyz", timeout=10)
        assert ready.status_code == 503 and int(ready.headers["Retry-After"]) >= 1
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)
    assert noticed < 3.5, f"noticed after {noticed:.1f}s"
    wait_until(lambda: requests.post(server.url + "/notify", json={"title": "back"}, timeout=5).status_code == 202,
               timeout=15, message="publishing again")


def test_slow_publish_bodies_get_408_and_never_take_the_slots_health_checks_need(notifier_server, closing):
    """Subscribers at the worker's cap, then 40 clients sending a publish body a byte a
    second: each gets 408 after NOTIFIER_BODY_TIMEOUT (or 503 at once when more than half
    the reserve already reads bodies), and meanwhile /healthz, /readyz and publishes answer."""
    from clients import SSEClient

    server = notifier_server(env={"NOTIFIER_WORKER_CONNECTIONS": 40, "NOTIFIER_BODY_TIMEOUT": 2})
    subscribers = [closing(SSEClient(server.url)) for _ in range(30)]  # 40 - a reserve of 10
    assert all(s.status == 200 for s in subscribers)
    host, port = server.url.rsplit("/", 1)[1].split(":")
    answers: list[bytes] = []

    def slow_sender() -> None:
        with socket.create_connection((host, int(port)), timeout=20) as s:
            s.sendall(b"POST /notify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 1000\r\n\r\n{")
            deadline = time.monotonic() + 12
            s.settimeout(1.0)
            while time.monotonic() < deadline:
                try:
                    data = s.recv(4096)
                except socket.timeout:
                    try:
                        s.sendall(b" ")
                    except OSError:
                        break
                    continue
                except OSError:
                    break
                s.settimeout(2.0)
                while data:  # the rest of the answer (gunicorn sends headers and body apart)
                    try:
                        more = s.recv(4096)
                    except OSError:
                        break
                    if not more:
                        break
                    data += more
                answers.append(data)
                break

    senders = [threading.Thread(target=slow_sender) for _ in range(40)]
    for t in senders:
        t.start()
    time.sleep(0.5)
    for _ in range(5):  # while they dribble
        started = time.monotonic()
        assert requests.get(server.url + "/healthz", timeout=3).status_code == 200
        assert requests.get(server.url + "/readyz", timeout=3).status_code == 200
        assert requests.post(server.url + "/notify", json={"title": "still"}, timeout=3).status_code == 202
        assert time.monotonic() - started < 3
        time.sleep(0.3)
    for t in senders:
        t.join(20)
    statuses = sorted({a.split(b" ", 2)[1] for a in answers if a.startswith(b"HTTP/1.1 ")})
    assert len(answers) == 40 and statuses in ([b"408"], [b"408", b"503"]), (len(answers), statuses)
    assert any(b'"error"' in a and b"NOTIFIER_BODY_TIMEOUT" in a for a in answers)
