"""The drop-in where Flask developers start: ``flask run`` (OS threads, with and without
``--debug`` and its reloader) and gunicorn's gevent workers, on a plain app-factory app
(examples/factory_app) whose users have int ids and log in through its own session.

Alice's open page gets the notification the app publishes for her; Bob's does not.
"""
from __future__ import annotations

import os
import subprocess
import time

import pytest
import requests

from clients import SSEClient, WSClient, cookie_of, login
from conftest import _CURRENT_TEST, _SERVERS, PYTHON, ROOT, _stop_process, _tail, free_port

PREFIX = "/notifier"
APP = "examples.factory_app"


class FlaskRun:
    """``python -m flask --app APP run`` as a developer types it, on a free port."""

    workers = 1

    def __init__(self, workdir, debug: bool, env: dict | None = None):
        self.app = f"flask --app {APP} run" + (" --debug" if debug else "")
        self.started_by = _CURRENT_TEST["nodeid"]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"flask-run-{self.port}.log"
        args = [PYTHON, "-m", "flask", "--app", APP, *(["--debug"] if debug else []), "run", "--port", str(self.port)]
        environ = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_") and k != "REDIS_URL"}
        environ.update(env or {})
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(args, cwd=ROOT, env=environ, stdout=logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        _SERVERS.append(self)  # its log is shown when a test fails, and checked for tracebacks
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"flask run exited ({self.proc.returncode}):\n{_tail(self.log)}")
            try:
                if requests.get(self.url + PREFIX + "/healthz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"flask run not answering:\n{_tail(self.log)}")
            time.sleep(0.1)

    def log_tail(self, n: int = 60) -> str:
        return _tail(self.log, n)

    def stop(self) -> None:
        _stop_process(self.proc)


@pytest.fixture(params=["flask run", "flask run --debug", "gunicorn gevent"])
def host(request, tmp_path, notifier_server):
    if request.param == "gunicorn gevent":
        yield notifier_server(app=f"{APP}:create_app()", prefix=PREFIX)
        return
    server = FlaskRun(tmp_path, debug=request.param.endswith("--debug"))
    try:
        yield server
    finally:
        server.stop()


def test_the_apps_own_publish_reaches_alices_page_and_not_bobs(host, closing):
    alice, bob = login(host.url, "alice"), login(host.url, "bob")
    alice_ws = closing(WSClient(host.url, path=PREFIX + "/ws", cookie=cookie_of(alice)))
    alice_sse = closing(SSEClient(host.url, path=PREFIX + "/events", cookie=cookie_of(alice)))
    bob_ws = closing(WSClient(host.url, path=PREFIX + "/ws", cookie=cookie_of(bob)))
    bob_sse = closing(SSEClient(host.url, path=PREFIX + "/events", cookie=cookie_of(bob)))
    assert alice_sse.status == 200 and bob_sse.status == 200
    time.sleep(0.3)  # every connection registered with its hub (no sync marker: they are per user)

    created = alice.post(host.url + "/posts", json={"title": "Hello from Alice"}, timeout=5)
    assert created.status_code == 201, created.text  # an int user id, published after the commit
    for_bob = bob.post(host.url + "/posts", json={"title": "Bob's"}, timeout=5)
    assert for_bob.status_code == 201, for_bob.text

    for client in (alice_ws, alice_sse):
        got = client.next_notification(timeout=10)
        assert (got["id"], got["user_id"], got["message"]) == (created.json()["notification"], "1",
                                                               "Hello from Alice")
    for client in (bob_ws, bob_sse):
        got = client.next_notification(timeout=10)
        assert (got["user_id"], got["message"]) == ("2", "Bob's")  # his own, and not Alice's first


def test_a_websocket_client_can_subscribe_to_a_topic_on_flask_run(tmp_path, closing):
    server = FlaskRun(tmp_path, debug=False)
    try:
        ws = closing(WSClient(server.url, path=PREFIX + "/ws"))
        ws.send_json({"action": "subscribe", "topic": "news"})
        assert ws.recv_json(timeout=5) == {"ack": "subscribe", "topic": "news"}
        reply = requests.post(server.url + PREFIX + "/notify", json={"topic": "news", "title": "Extra"}, timeout=5)
        assert reply.status_code == 202
        assert ws.next_notification(timeout=10)["title"] == "Extra"
    finally:
        server.stop()
