"""``flask --app wsgi notifier send`` and ``listen``, run as a user runs them, against real servers."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time

import pytest

from clients import SSEClient, WSClient, connect_until_spread, publish, sync_subscribers
from conftest import PYTHON, ROOT, cli_env, flask

KEY = "cli-test-key"




class Listen:
    """``notifier listen`` in a subprocess; its stdout lines land in a queue read with deadlines."""

    def __init__(self, *args, env):
        self.proc = subprocess.Popen([PYTHON, "-m", "flask", "--app", "wsgi", "notifier", "listen", *args],
                                     cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def next(self, timeout=10.0, skip_sync=True) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            assert line is not None, f"listen exited: {self.stop()}"
            notification = json.loads(line)
            if not (skip_sync and notification["type"] == "test.sync"):
                return notification

    def ready(self, url, timeout=15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            publish(url, type="test.sync", title="sync")
            try:
                if self.next(0.5, skip_sync=False)["type"] == "test.sync":
                    return
            except queue.Empty:
                continue
        raise TimeoutError(f"listen never printed a sync marker: {self.stop()}")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=5)
        return err


@pytest.fixture
def listens():
    started = []
    yield lambda *args, env: started.append(Listen(*args, env=env)) or started[-1]
    for listen in started:
        listen.stop()


def test_send_through_redis_reaches_every_worker(notifier_server, redis_server, closing):
    server = notifier_server(workers=2, redis=redis_server)
    clients = connect_until_spread(
        server, lambda i: closing((WSClient if i % 2 else SSEClient)(server.url, topics=["ops"])))
    sync_subscribers(server.url, clients)
    # no --url: the CLI process publishes into Redis itself; both workers follow it
    out = flask("send", "Deploy finished", "v42 is live", "--topic", "ops", "--type", "deploy.done",
                "--data", '{"version": 42}', env=cli_env(REDIS_URL=redis_server.url))
    assert out.returncode == 0, out.stderr
    nid = out.stdout.strip()
    for client in clients:
        got = client.next_notification(10)
        assert (got["id"], got["title"], got["message"], got["type"], got["data"], got["topic"]) == (
            nid, "Deploy finished", "v42 is live", "deploy.done", {"version": 42}, "ops")


def test_send_over_http_with_a_key(notifier_server, closing):
    server = notifier_server(workers=1, env={"NOTIFIER_API_KEYS": KEY})
    client = closing(WSClient(server.url))
    # sync markers need a key on this server: publish them through the CLI itself
    out = flask("send", "hello", "--user", "alice", "--url", server.url, "--key", KEY)
    assert out.returncode == 0, out.stderr
    wrong = flask("send", "hello", "--url", server.url, "--key", "nope")
    assert wrong.returncode != 0 and "403" in wrong.stderr and "wrong publisher key" in wrong.stderr
    # without --key the CLI uses the app's own NOTIFIER_API_KEYS
    ok = flask("send", "for everyone", "--url", server.url, env=cli_env(NOTIFIER_API_KEYS=KEY))
    assert ok.returncode == 0, ok.stderr
    assert client.next_notification(10)["id"] == ok.stdout.strip()


def test_send_without_redis_or_url_goes_to_this_hosts_server(notifier_server, closing):
    server = notifier_server(workers=1)
    client = closing(SSEClient(server.url))
    sync_subscribers(server.url, [client])
    out = flask("send", "local", env=cli_env(PORT=server.port))
    assert out.returncode == 0, out.stderr
    assert client.next_notification(10)["id"] == out.stdout.strip()


@pytest.mark.parametrize("args, message", [
    (["t", "--data", "{not json"], "not valid JSON"),
    (["t", "--data", "[1, 2]"], "must be a JSON object"),
    (["t", "--user", "a", "--topic", "b"], "not both"),
    (["t", "--type", "notifier.reset", "--url", "http://127.0.0.1:1"], None),
    (["t", "--url", "ftp://example"], "--url"),
])
def test_send_refuses_bad_input_with_a_clear_error(args, message):
    out = flask("send", *args)
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
    if message:
        assert out.returncode == 2 and message in out.stderr, out.stderr


def test_send_with_bad_fields_through_redis_is_a_usage_error(redis_server):
    out = flask("send", "t", "--type", "notifier.reset", env=cli_env(REDIS_URL=redis_server.url))
    assert out.returncode == 2 and "type" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_send_when_redis_is_down_fails_without_a_traceback(redis_server):
    redis_server.stop()
    out = flask("send", "t", env=cli_env(REDIS_URL=redis_server.url))
    assert out.returncode == 1 and "not sent" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_listen_prints_one_line_per_notification_and_resumes_after_a_drop(notifier_server, redis_server, listens):
    followed = notifier_server(workers=1, redis=redis_server)
    other = notifier_server(workers=1, redis=redis_server)
    listen = listens("--url", followed.url, "--topic", "ops", env=cli_env())
    listen.ready(followed.url)
    first = publish(other.url, title="first", topic="ops")
    publish(other.url, title="not for this listener", topic="elsewhere")
    assert listen.next()["id"] == first

    followed.stop()
    missed = [publish(other.url, title=f"missed {i}", topic="ops") for i in range(3)]
    followed.start()
    got = [listen.next(20) for _ in range(3)]
    assert [n["id"] for n in got] == missed and got[0]["title"] == "missed 0"


def test_listen_as_a_user_with_a_minted_token_resumes_and_stops_after_count(notifier_server, listens):
    secret = "s" * 32
    server = notifier_server(workers=1, env={"NOTIFIER_SECRET": secret})
    base = publish(server.url, title="before")
    for_alice = publish(server.url, title="alice", user_id="alice")
    publish(server.url, title="bob", user_id="bob")
    private = publish(server.url, title="ops", topic="private-ops")
    listen = listens("--user", "alice", "--topic", "private-ops", "--count", "2", "--last-event-id", base,
                     "--url", server.url, env=cli_env(NOTIFIER_SECRET=secret))
    assert [listen.next()["id"], listen.next()["id"]] == [for_alice, private]
    assert listen.proc.wait(10) == 0


def test_listen_refusals_are_clean_errors(notifier_server):
    no_secret = flask("listen", "--user", "alice", "--url", "http://127.0.0.1:1")
    assert no_secret.returncode == 2 and "NOTIFIER_SECRET" in no_secret.stderr, no_secret.stderr
    server = notifier_server(workers=1, env={"NOTIFIER_SECRET": "s" * 32})
    refused = flask("listen", "--token", "bad", "--url", server.url)
    assert refused.returncode == 1 and "401" in refused.stderr and "Traceback" not in refused.stderr
