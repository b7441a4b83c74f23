"""notifier.client against real servers: publish, errors, subscribe, reconnect and resume, reset."""

from __future__ import annotations

import http.server
import queue
import subprocess
import sys
import threading
import time

import pytest

from clients import publish as post
from conftest import PYTHON, ROOT
from notifier.client import RESET, ClientError, publish, subscribe

KEY = "client-test-key"


class Listener:
    """Runs a Subscription in a thread; notifications land in a queue read with deadlines."""

    def __init__(self, subscription):
        self.subscription = subscription
        self.items: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            for notification in self.subscription:
                self.items.put(notification)
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.items.put(None)

    def next(self, timeout=10.0, skip=("test.sync",)):
        deadline = time.monotonic() + timeout
        while True:
            item = self.items.get(timeout=max(deadline - time.monotonic(), 0.01))
            if item is None:
                raise AssertionError(f"subscription ended: {self.error!r}")
            if item.get("type") not in skip:
                return item

    def ready(self, url, timeout=15.0):
        """Publish sync markers until this listener gets one: it is registered."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            post(url, type="test.sync", title="sync")
            try:
                if self.next(0.5, skip=()).get("type") == "test.sync":
                    return
            except queue.Empty:
                continue
        raise TimeoutError("listener never got a sync marker")

    def close(self):
        self.subscription.close()
        self.thread.join(5)
        assert not self.thread.is_alive(), "subscription did not end on close()"


@pytest.fixture
def listeners():
    opened = []
    yield lambda sub: opened.append(Listener(sub)) or opened[-1]
    for listener in opened:
        listener.close()


def test_importing_the_client_loads_neither_flask_nor_gevent():
    code = ("import sys, notifier.client; "
            "bad = [m for m in ('flask', 'gevent', 'werkzeug', 'redis') if m in sys.modules]; "
            "assert not bad, bad")
    out = subprocess.run([PYTHON, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr


def test_publish_returns_the_id_and_the_subscriber_gets_it(notifier_server, listeners):
    server = notifier_server(workers=1)
    listener = listeners(subscribe(server.url, topics=["orders"]))
    listener.ready(server.url)
    nid = publish("New order", "It is being prepared", topic="orders", type="order.created",
                  data={"id": 17}, url=server.url)
    got = listener.next()
    assert got["id"] == nid and got["type"] == "order.created" and got["data"] == {"id": 17}
    assert got["title"] == "New order" and got["topic"] == "orders"
    assert listener.subscription.last_event_id == nid


def test_publish_raises_the_servers_error_and_status(notifier_server):
    server = notifier_server(workers=1, env={"NOTIFIER_API_KEYS": KEY})
    with pytest.raises(ClientError) as missing:
        publish("x", url=server.url)
    assert missing.value.status == 401 and missing.value.error  # the server's own words
    with pytest.raises(ClientError) as wrong:
        publish("x", url=server.url, key="nope")
    assert wrong.value.status == 403
    with pytest.raises(ClientError) as bad:
        publish("x", user="alice", topic="orders", url=server.url, key=KEY)
    assert bad.value.status == 400 and "user_id" in bad.value.error and "topic" in bad.value.error
    assert publish("x", user="alice", url=server.url, key=KEY)


def test_publish_to_nothing_fails_fast_without_a_status():
    from conftest import free_port

    started = time.monotonic()
    with pytest.raises(ClientError) as unreachable:
        publish("x", url=f"http://127.0.0.1:{free_port()}", timeout=2)
    assert unreachable.value.status is None and time.monotonic() - started < 5


def test_a_bad_token_ends_the_subscription_with_the_servers_error(notifier_server):
    server = notifier_server(workers=1, env={"NOTIFIER_SECRET": "s" * 32})
    with pytest.raises(ClientError) as refused:
        next(iter(subscribe(server.url, token="not-a-jwt", max_retries=0)))
    assert refused.value.status == 401


def test_subscribing_to_something_that_is_not_notifier_fails_at_once(notifier_server):
    server = notifier_server(workers=1)
    with pytest.raises(ClientError) as missing:
        next(iter(subscribe(server.url + "/elsewhere", max_retries=0)))  # /elsewhere/events: a JSON 404
    assert missing.value.status == 404

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # a web page answering 200 to everything
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", "6")
            self.end_headers()
            self.wfile.write(b"<html>")

        def log_message(self, *args):
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page) as page:
        threading.Thread(target=page.serve_forever, daemon=True).start()
        try:
            with pytest.raises(ClientError, match="not a notifier server"):
                next(iter(subscribe(f"http://127.0.0.1:{page.server_address[1]}", max_retries=0)))
        finally:
            page.shutdown()


def test_subscription_reconnects_and_resumes_without_gap_or_duplicate(notifier_server, redis_server, listeners):
    # Two servers on one Redis: the one the client follows restarts while the other publishes.
    followed = notifier_server(workers=1, redis=redis_server)
    other = notifier_server(workers=1, redis=redis_server)
    listener = listeners(subscribe(followed.url, read_timeout=10, max_backoff=1))
    listener.ready(followed.url)
    before = publish("before", url=other.url)
    assert listener.next()["id"] == before

    followed.stop()  # SIGTERM: the stream ends, the client retries against a closed port
    missed = [publish(f"missed {i}", url=other.url) for i in range(5)]
    followed.start()
    after = publish("after", url=other.url)

    got = [listener.next(20)["id"] for _ in range(6)]
    assert got == missed + [after]
    assert listener.subscription.reconnects >= 1
    with pytest.raises(queue.Empty):
        listener.next(0.5)  # and nothing twice


def test_a_resume_point_no_longer_in_history_starts_with_a_reset(notifier_server, listeners):
    server = notifier_server(workers=1)
    newest = publish("first", url=server.url)
    listener = listeners(subscribe(server.url, last_event_id="0000000000001-000000"))
    reset = listener.next()
    assert reset["type"] == RESET and reset["data"] == {"last_event_id": "0000000000001-000000"}
    assert listener.subscription.last_event_id == newest
    listener.ready(server.url)
    live = publish("live", url=server.url)
    assert listener.next()["id"] == live
