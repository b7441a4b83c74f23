"""The drop-in's rules, each against the real thing: several apps in one process, int user
ids, settings read in one place (app.config and gunicorn agree), the route switches, the
clear error for a server that cannot stream, and notifier.testing for the host's tests."""
from __future__ import annotations

import subprocess
import time

import pytest
import websocket
import requests
from flask import Flask

from clients import SSEClient, WSClient, cookie_of, login, sync_subscribers
from conftest import PYTHON, ROOT, free_port
from examples.factory_app import create_app
from notifier import Notifier, NotifierError
from notifier.config import SentinelURL, Settings
from notifier.errors import ConfigError
from notifier.testing import captured

PREFIX = "/notifier"


def test_two_apps_in_one_process_each_have_their_own_hub_and_hooks(notifier_server, closing):
    server = notifier_server(app="tests.apps.two_apps:app", prefix=PREFIX)
    alice_a = login(server.url, "alice")
    alice_b = login(server.url + "/b", "alice")
    on_a = closing(SSEClient(server.url, path=PREFIX + "/events", cookie=cookie_of(alice_a)))
    on_b = closing(WSClient(server.url + "/b", path=PREFIX + "/ws", cookie=cookie_of(alice_b)))
    anon_b = closing(SSEClient(server.url + "/b", path=PREFIX + "/events"))
    sync_subscribers(server.url, [on_a], path=PREFIX + "/notify")
    sync_subscribers(server.url + "/b", [on_b, anon_b], path=PREFIX + "/notify")

    assert alice_b.post(server.url + "/b/posts", json={"title": "on b"}, timeout=5).status_code == 201
    assert alice_a.post(server.url + "/posts", json={"title": "on a"}, timeout=5).status_code == 201
    broadcast_b = requests.post(server.url + "/b" + PREFIX + "/notify", json={"title": "b only"}, timeout=5)
    assert broadcast_b.status_code == 202

    assert on_b.next_notification(timeout=10)["message"] == "on b"  # b's identify hook named her on b
    assert on_a.next_notification(timeout=10)["message"] == "on a"  # and a's post never reached b
    assert on_b.next_notification(timeout=10)["title"] == "b only"
    assert anon_b.next_notification(timeout=10)["title"] == "b only"
    with pytest.raises(TimeoutError):  # b's broadcast stayed on b
        on_a.next_notification(timeout=1)


def test_publish_resolves_the_current_app_and_refuses_to_guess_between_two():
    ext = Notifier()
    first, second = Flask("first"), Flask("second")
    ext.init_app(first)
    with captured(first) as on_first:
        assert ext.publish("only app", user_id=7)  # outside any app context: the only app it serves
    ext.init_app(second)
    with pytest.raises(NotifierError, match="several apps"):
        ext.publish("which one?")
    with captured(first) as again_first, captured(second) as on_second, second.app_context():
        ext.publish("to second", user_id=8)
    assert [(n["title"], n["user_id"]) for n in on_first] == [("only app", "7")]
    assert again_first == [] and [(n["title"], n["user_id"]) for n in on_second] == [("to second", "8")]
    assert first.extensions["notifier"].hub is not second.extensions["notifier"].hub


def test_int_user_ids_are_taken_the_same_way_everywhere():
    app = create_app({"TESTING": True, "NOTIFIER_SECRET": "s" * 32})
    client = app.test_client()
    with captured(app) as published:
        reply = client.post(PREFIX + "/notify", json={"user_id": 42, "title": "from another backend"})
        assert reply.status_code == 202, reply.get_json()
        client.get("/login?user=alice")
        assert client.post("/posts", json={"title": "mine"}).status_code == 201
    assert [n["user_id"] for n in published] == ["42", "1"]
    for bad in (True, 1.5, "", "u" * 129, None):
        reply = client.post(PREFIX + "/notify", json={"user_id": bad, "title": "x"})
        assert reply.status_code == 400 and "user_id" in reply.get_json()["error"]
    from examples.factory_app import notifier
    from notifier.tokens import verify_token

    with app.app_context():
        token = notifier.issue_token(42)
    assert verify_token(app.extensions["notifier"].settings.secret, token).user_id == "42"


def test_the_demo_is_off_in_a_host_app_and_every_extra_route_can_be_switched():
    client = create_app({"TESTING": True}).test_client()
    assert client.get(PREFIX + "/demo").status_code == 404
    assert client.get(PREFIX + "/openapi.json").status_code == 200
    assert client.get(PREFIX + "/notifier.js").status_code == 200
    switched = create_app({"NOTIFIER_DEMO": "true", "NOTIFIER_METRICS": "false",
                           "NOTIFIER_OPENAPI": "false"}).test_client()
    assert switched.get(PREFIX + "/demo").status_code == 200
    assert switched.get(PREFIX + "/metrics").status_code == 404
    assert switched.get(PREFIX + "/openapi.json").status_code == 404
    from notifier import create_app as standalone

    assert standalone().test_client().get("/demo").status_code == 200  # notifier's own server shows it


def test_notifiers_own_redis_url_wins_over_the_host_apps(monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("NOTIFIER_REDIS_URL", raising=False)
    host_cache, ours = "redis://cache.internal:6379/0", "redis://notify.internal:6379/1"
    settings = Settings.load({"REDIS_URL": host_cache, "NOTIFIER_REDIS_URL": ours})
    assert (settings.redis_url, settings.redis_url_key) == (ours, "NOTIFIER_REDIS_URL")
    assert Settings.load({"REDIS_URL": host_cache}).redis_url_key == "REDIS_URL"
    monkeypatch.setenv("NOTIFIER_REDIS_URL", ours)  # the environment's own key beats app.config's generic one
    assert Settings.load({"REDIS_URL": host_cache}).redis_url == ours
    with pytest.raises(ConfigError, match="NOTIFIER_REDIS_URL"):
        Settings.load({"NOTIFIER_REDIS_URL": "redis://host:port/0"})


def test_redis_set_in_app_config_serves_two_workers(notifier_server, redis_server, closing):
    server = notifier_server(app="examples.factory_app:create_app()", prefix=PREFIX, workers=2,
                             env={"FACTORY_REDIS_URL": redis_server.url})
    clients = []
    while len(set(server.worker_of_ports().values())) < 2:  # until both workers hold some
        assert len(clients) < 200, "every connection went to one worker"
        clients.append(closing(SSEClient(server.url, path=PREFIX + "/events")))
        time.sleep(0.02)
    sync_subscribers(server.url, clients, path=PREFIX + "/notify")
    requests.post(server.url + PREFIX + "/notify", json={"title": "across"}, timeout=5).raise_for_status()
    assert all(c.next_notification(timeout=10)["title"] == "across" for c in clients)


def test_two_workers_without_redis_refuse_to_start_with_one_clear_line(notifier_server):
    server = notifier_server(app="examples.factory_app:create_app()", prefix=PREFIX, workers=2, wait=False)
    assert server.proc.wait(timeout=30) != 0
    log = server.log.read_text()
    assert "notifier cannot start: REDIS_URL: 2 workers need a Redis URL" in log and "Traceback" not in log


def test_a_malformed_redis_url_is_one_line_and_no_traceback(notifier_server):
    server = notifier_server(env={"REDIS_URL": "redis://localhost:port/0"}, wait=False)
    assert server.proc.wait(timeout=30) != 0
    log = server.log.read_text()
    assert "notifier cannot start: REDIS_URL: is not a valid Redis URL" in log and "Traceback" not in log
    flask_run = subprocess.run([PYTHON, "-m", "flask", "--app", "wsgi", "run"], cwd=ROOT, capture_output=True,
                               text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "REDIS_URL": "redis://h:p/0"})
    assert flask_run.returncode != 0 and "REDIS_URL: is not a valid Redis URL" in flask_run.stderr
    assert "Traceback" not in flask_run.stderr, flask_run.stderr


def test_a_server_that_runs_one_request_at_a_time_is_told_what_to_run(notifier_server):
    server = notifier_server(app="examples.factory_app:create_app()", prefix=PREFIX,
                             env={"GUNICORN_CMD_ARGS": "--worker-class sync"})
    reply = requests.get(server.url + PREFIX + "/events", timeout=5)
    assert reply.status_code == 500 and "gevent" in reply.json()["error"]
    published = requests.post(server.url + PREFIX + "/notify", json={"title": "still fine"}, timeout=5)
    assert published.status_code == 202


def test_each_app_can_have_its_own_identify_hook_next_to_the_extensions():
    from notifier.flask.views import identified_user

    ext = Notifier()
    first, second, third = Flask("first"), Flask("second"), Flask("third")
    ext.init_app(first, identify=lambda: 1)
    ext.init_app(second)

    @ext.identify
    def shared():
        return "shared"

    ext.init_app(third)
    seen = []
    for app in (first, second, third):
        with app.test_request_context():
            seen.append(identified_user(app.extensions["notifier"]))
    assert seen == ["1", "shared", "shared"]


def test_a_host_apps_own_gunicorn_takes_notifiers_settings_as_a_module(tmp_path):
    """``gunicorn -c python:notifier.gunicorn_conf`` from the host's own directory: its
    hooks run (here: two workers without Redis are refused, with one line)."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "WEB_CONCURRENCY": "2",
           "PORT": str(free_port()), "PYTHONUNBUFFERED": "1"}
    run = subprocess.run([PYTHON, "-m", "gunicorn", "-c", "python:notifier.gunicorn_conf",
                          "examples.factory_app:create_app()"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode != 0
    assert "notifier cannot start: REDIS_URL: 2 workers need a Redis URL" in run.stderr, run.stderr[-2000:]
    assert "Using worker: gevent" in run.stderr and "Traceback" not in run.stderr


def test_identify_may_return_a_uuid_and_a_broken_hook_is_a_server_error_that_is_logged():
    import uuid

    who = {"value": uuid.UUID("12345678-1234-5678-1234-567812345678")}
    app = create_app({"TESTING": True})
    app.extensions["notifier"].identify = lambda: who["value"]
    client = app.test_client()
    with captured(app) as published:
        app.extensions["notifier"].publish({"title": "t", "user_id": who["value"]})
    assert published[0]["user_id"] == "12345678-1234-5678-1234-567812345678"
    head = client.head(PREFIX + "/events")
    assert head.status_code == 200 and head.headers["Content-Type"].startswith("text/event-stream")
    who["value"] = object()
    reply = client.get(PREFIX + "/events")
    assert reply.status_code == 500 and "identify() returned" in reply.get_json()["error"]


def test_a_head_request_for_the_stream_gets_the_same_refusals_as_a_get():
    client = create_app({"TESTING": True, "NOTIFIER_SECRET": "s" * 32}).test_client()
    assert client.head(PREFIX + "/events?token=not-a-token").status_code == 401
    assert client.head(PREFIX + "/events?topic=private-ops").status_code == 403


def test_a_host_can_keep_notifier_off_its_own_redis_and_urls_read_as_redis_py_reads_them(monkeypatch):
    monkeypatch.delenv("NOTIFIER_REDIS_URL", raising=False)
    assert Settings.load({"REDIS_URL": "redis://cache:6379/0", "NOTIFIER_REDIS_URL": "none"}).redis_url is None
    for url in ("redis://:pw@/0", "redis://h:6379/0/", "redis://h:6379/x?db=2", "unix:///tmp/redis.sock"):
        assert Settings.load({"REDIS_URL": url}).redis_url == url
    for url in ("redis://h:port/0", "redis://h:6379/x", "http://h:6379/0"):
        with pytest.raises(ConfigError, match="REDIS_URL"):
            Settings.load({"REDIS_URL": url})


def test_a_sentinel_url_names_the_sentinels_the_service_and_the_db_and_a_bad_one_is_refused_at_start():
    url = "redis+sentinel://:pw@10.0.0.1:26380,10.0.0.2,[::1]:5000/mymaster/2?sentinel_password=sp"
    assert Settings.load({"REDIS_URL": url}).redis_url == url
    assert SentinelURL.parse(url) == SentinelURL(
        (("10.0.0.1", 26380), ("10.0.0.2", 26379), ("::1", 5000)), "mymaster", 2, None, "pw", "sp")
    assert SentinelURL.parse("redis+sentinel://s1:1/m") == SentinelURL((("s1", 1),), "m")
    for bad, why in [("redis+sentinel://s1:1", "service"), ("redis+sentinel://s1:1/m/x", "database"),
                     ("redis+sentinel://s1:x,s2:2/m", "host:port"), ("redis+sentinel://,s2/m", "host:port"),
                     ("redis+sentinel://s1:70000/m", "host:port")]:
        with pytest.raises(ConfigError, match=f"REDIS_URL.*{why}"):
            Settings.load({"REDIS_URL": bad})
    assert Settings.load({}).redis_min_replicas == 0
    settings = Settings.load({"NOTIFIER_REDIS_MIN_REPLICAS": "1", "NOTIFIER_REDIS_REPLICA_WAIT": "0.5"})
    assert (settings.redis_min_replicas, settings.redis_replica_wait) == (1, 0.5)
    with pytest.raises(ConfigError, match="NOTIFIER_REDIS_MIN_REPLICAS"):
        Settings.load({"NOTIFIER_REDIS_MIN_REPLICAS": "-1"})


@pytest.fixture(scope="module")
def session_app(server_factory):
    return server_factory(app="examples.factory_app:create_app()", prefix=PREFIX, env={"NOTIFIER_SECRET": "s" * 32})


def open_as(server, transport, cookie=None, origin=None, **params):
    if transport == "ws":
        headers = [f"Origin: {origin}"] if origin else []
        return WSClient(server.url, path=PREFIX + "/ws", cookie=cookie, headers=headers,
                        suppress_origin=True, **params)
    return SSEClient(server.url, path=PREFIX + "/events", cookie=cookie,
                     headers={"Origin": origin} if origin else None, **params)


@pytest.mark.parametrize("transport", ["ws", "sse"])
def test_a_page_of_another_site_cannot_borrow_the_users_session(session_app, transport, closing):
    """Cross-site WebSocket hijacking: a page on evil.example opening /ws with the user's
    cookie gets a 403, before any stream; the app's own pages and listed origins get in."""
    alice = cookie_of(login(session_app.url, "alice"))
    assert status_of(session_app, transport, cookie=alice, origin="http://evil.example") == 403
    for origin in (session_app.url, None):  # its own pages (Origin = its Host), and non-browsers
        assert status_of(session_app, transport, cookie=alice, origin=origin) == 200


def status_of(server, transport, **kwargs) -> int:
    try:
        client = open_as(server, transport, **kwargs)
    except websocket.WebSocketBadStatusException as exc:
        return exc.status_code
    try:
        return getattr(client, "status", 200)
    finally:
        client.close()


def test_origins_listed_may_use_the_session_and_the_list_holds_for_tokens_too(server_factory):
    server = server_factory(app="examples.factory_app:create_app()", prefix=PREFIX,
                            env={"NOTIFIER_SECRET": "s" * 32, "NOTIFIER_ALLOWED_ORIGINS": "https://partner.example"})
    alice = cookie_of(login(server.url, "alice"))
    from notifier.tokens import issue_token

    for transport in ("ws", "sse"):
        assert status_of(server, transport, cookie=alice, origin="https://partner.example") == 200
        assert status_of(server, transport, cookie=alice, origin=server.url) == 200
        assert status_of(server, transport, origin="http://evil.example", token=issue_token("s" * 32, "a")) == 403


@pytest.mark.parametrize("transport", ["ws", "sse"])
def test_a_token_is_no_ambient_credential_and_an_anonymous_page_gets_broadcasts_from_anywhere(
        session_app, transport, closing):
    from notifier.tokens import issue_token

    token = issue_token("s" * 32, "alice")
    for params in ({"token": token}, {}):
        assert status_of(session_app, transport, origin="http://elsewhere.example", **params) == 200
