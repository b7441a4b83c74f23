"""Who may listen to what, and who may publish: every rule, allowed and refused, on both transports."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import jwt
import pytest
import requests
import websocket

from clients import SSEClient, StreamClosed, WSClient, post_notify, publish, sync_subscribers, unix_request
from conftest import ROOT

SECRET = "test-secret-that-is-long-enough-for-hs256"


def token(sub="alice", ttl=60, secret=SECRET, **claims):
    return jwt.encode({"sub": sub, "exp": int(time.time()) + ttl, **claims}, secret, algorithm="HS256")


def refused(server, transport, status, **kw):
    """Open a subscription that must be refused with ``status`` and a JSON error, before any stream."""
    if transport == "sse":
        client = SSEClient(server.url, **kw)
        client.close()
        assert client.status == status, client.headers
        return
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        WSClient(server.url, **kw)
    assert info.value.status_code == status
    assert b'"error"' in info.value.resp_body


def open_client(server, transport, **kw):
    return WSClient(server.url, **kw) if transport == "ws" else SSEClient(server.url, **kw)


@pytest.fixture(scope="module")
def server(server_factory):
    return server_factory(workers=1, env={"NOTIFIER_SECRET": SECRET, "NOTIFIER_MAX_TOPICS": 3,
                                          "NOTIFIER_MAX_CONNECTIONS_PER_USER": 3,
                                          "NOTIFIER_MAX_MESSAGE_BYTES": 2048})


TRANSPORTS = ["ws", "sse"]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("where", ["query", "header"])
def test_a_valid_token_receives_its_users_notifications_and_others_do_not(server, transport, where, closing):
    t = token("alice")
    kw = {"token": t} if where == "query" else {"headers": ([f"Authorization: Bearer {t}"] if transport == "ws"
                                                            else {"Authorization": f"Bearer {t}"})}
    alice = closing(open_client(server, transport, **kw))
    anonymous = closing(open_client(server, transport))
    bob = closing(open_client(server, transport, token=token("bob")))
    sync_subscribers(server.url, [alice, anonymous, bob])
    mine = publish(server.url, title="for alice", user_id="alice")
    everyone = publish(server.url, title="for all")
    assert [m["id"] for m in alice.notifications(2)] == [mine, everyone]
    assert anonymous.next_notification(5)["id"] == everyone  # alice's never reached it
    assert bob.next_notification(5)["id"] == everyone


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("bad", ["expired", "wrong-signature", "alg-none", "garbage", "no-exp", "no-sub"])
def test_a_bad_token_is_refused_with_401_before_the_stream(server, transport, bad):
    tokens = {
        "expired": token(ttl=-10),
        "wrong-signature": token(secret="another-secret-that-is-long-enough-too"),
        "alg-none": jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, None, algorithm="none"),
        "garbage": "not.a.token",
        "no-exp": jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256"),
        "no-sub": jwt.encode({"exp": int(time.time()) + 60}, SECRET, algorithm="HS256"),
    }
    refused(server, transport, 401, token=tokens[bad])


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_private_topics_need_a_token_that_grants_them(server, transport, closing):
    refused(server, transport, 403, topics=["private-ops"])
    refused(server, transport, 403, topics=["private-ops"], token=token())
    refused(server, transport, 403, topics=["private-other"], token=token(topics=["private-ops*"]))
    exact = closing(open_client(server, transport, topics=["private-ops"], token=token(topics=["private-ops"])))
    prefix = closing(open_client(server, transport, topics=["private-ops-eu"], token=token(topics=["private-ops*"])))
    sync_subscribers(server.url, [exact, prefix])
    ops = publish(server.url, title="ops", topic="private-ops")
    eu = publish(server.url, title="eu", topic="private-ops-eu")
    assert exact.next_notification(5)["id"] == ops
    assert prefix.next_notification(5)["id"] == eu


def test_websocket_subscribe_action_obeys_the_same_rules(server, closing):
    ws = closing(WSClient(server.url, token=token(topics=["private-ops*"])))
    ws.send_json({"action": "subscribe", "topic": "private-ops-1"})
    assert ws.recv_json() == {"ack": "subscribe", "topic": "private-ops-1"}
    ws.send_json({"action": "subscribe", "topic": "private-hr"})
    assert "private" in ws.recv_json()["error"]
    anon = closing(WSClient(server.url))
    anon.send_json({"action": "subscribe", "topic": "private-ops-1"})
    assert "error" in anon.recv_json()
    hr = publish(server.url, title="hr", topic="private-hr")
    ops = publish(server.url, title="ops", topic="private-ops-1")
    assert ws.next_notification(5)["id"] == ops  # never the hr one
    with pytest.raises(TimeoutError):
        anon.next_notification(0.5)
    assert hr < ops


def test_tokens_are_refused_when_the_server_has_no_secret(notifier_server):
    plain = notifier_server(workers=1)
    refused(plain, "sse", 401, token=token())
    refused(plain, "ws", 401, token=token())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_token_expiring_on_an_open_connection_ends_it(server, transport, closing):
    client = closing(open_client(server, transport, token=token(ttl=2)))
    t0 = time.monotonic()
    if transport == "ws":
        _, code = client.drain_until_closed(timeout=10)
        assert code == 1008
    else:
        client.drain_until_closed(timeout=10)
        assert client.closed
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_topics_per_connection_are_limited(server, transport, closing):
    refused(server, transport, 400, topics=["a", "b", "c", "d"])
    client = closing(open_client(server, transport, topics=["a", "b", "c"]))
    if transport == "ws":
        client.send_json({"action": "subscribe", "topic": "d"})
        assert "too many topics" in client.recv_json()["error"]
        client.send_json({"action": "subscribe", "topic": "a"})  # already there: fine
        assert client.recv_json() == {"ack": "subscribe", "topic": "a"}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_connections_per_user_are_limited(server, transport, closing):
    t = token("carol")
    for _ in range(3):
        closing(open_client(server, transport, token=t))
    refused(server, transport, 429, token=t)
    closing(open_client(server, transport, token=token("dave")))  # others are not affected


def test_an_oversized_websocket_message_closes_with_1009(server, closing):
    ws = closing(WSClient(server.url))
    ws.send_text('{"action": "subscribe", "topic": "' + "x" * 4000 + '"}')
    with pytest.raises(StreamClosed) as closed:
        ws.recv_json(5)
    assert closed.value.code == 1009


@pytest.fixture(scope="module")
def origin_server(server_factory):
    return server_factory(workers=1, env={"NOTIFIER_ALLOWED_ORIGINS": "https://app.example, https://admin.example"})


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_other_origins_are_refused_and_allowed_ones_get_cors(origin_server, transport, closing):
    def with_origin(origin):
        if transport == "ws":  # websocket-client adds an Origin of its own unless told not to
            return {"headers": [f"Origin: {origin}"], "suppress_origin": True}
        return {"headers": {"Origin": origin}}

    refused(origin_server, transport, 403, **with_origin("https://evil.example"))
    allowed = closing(open_client(origin_server, transport, **with_origin("https://admin.example")))
    # no Origin: not a browser page, allowed
    closing(open_client(origin_server, transport, **({"suppress_origin": True} if transport == "ws" else {})))
    if transport == "sse":
        assert allowed.headers["access-control-allow-origin"] == "https://admin.example"
        assert allowed.headers["access-control-allow-credentials"] == "true"


def test_without_an_origin_list_sse_allows_any_origin_without_credentials(server, closing):
    client = closing(SSEClient(server.url, headers={"Origin": "https://anywhere.example"}))
    assert client.status == 200
    assert client.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in client.headers


def test_publish_rate_is_limited_per_key_with_retry_after(notifier_server):
    server = notifier_server(workers=1, env={"NOTIFIER_PUBLISH_RATE": 5, "NOTIFIER_API_KEYS": "k1,k2"})
    while time.time() % 1 > 0.3:  # start early in a second so the burst fits in one window
        time.sleep(0.01)
    statuses = [post_notify(server.url, {"title": "x"}, headers={"Authorization": "Bearer k1"}) for _ in range(8)]
    assert [r.status for r in statuses].count(202) == 5
    limited = [r for r in statuses if r.status == 429]
    assert limited and all(int(r.headers["retry-after"]) >= 1 and "rate" in r.error for r in limited)
    assert post_notify(server.url, {"title": "x"}, headers={"Authorization": "Bearer k2"}).status == 202


def test_publish_rate_holds_across_workers_with_redis(notifier_server, redis_server):
    server = notifier_server(workers=2, redis=redis_server, env={"NOTIFIER_PUBLISH_RATE": 5})
    while time.time() % 1 > 0.2:
        time.sleep(0.01)
    # a new connection per request, so the kernel spreads them over both workers
    statuses = [requests.post(server.url + "/notify", json={"title": "x"}, timeout=5,
                              headers={"Connection": "close"}).status_code for _ in range(12)]
    assert statuses.count(202) == 5, statuses


def test_loopback_rule_uses_the_socket_even_behind_proxyfix(notifier_server, short_tmp):
    sock_path = str(short_tmp / "n.sock")
    server = notifier_server(workers=1, app="tests.apps.proxied_app:app", bind=[f"unix:{sock_path}"])
    # Over TCP from 127.0.0.1, as is: a loopback peer, even with ProxyFix in the app.
    r = post_notify(server.url, {"title": "x"})
    assert r.status == 202
    # The same peer forwarding for someone (ProxyFix would rewrite REMOTE_ADDR from it): a proxy.
    r = post_notify(server.url, {"title": "x"}, headers={"X-Forwarded-For": "127.0.0.1"})
    assert r.status == 403
    # Through the unix socket (as from a local proxy) claiming 127.0.0.1: not loopback.
    r = unix_request(sock_path, "POST", "/notify", {"title": "x"}, headers={"X-Forwarded-For": "127.0.0.1"})
    assert r.status == 403 and "NOTIFIER_API_KEYS" in r.body["error"]


def test_the_cli_mints_tokens_the_server_accepts(server, closing):
    env = {**os.environ, "NOTIFIER_SECRET": SECRET}
    out = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "notifier", "token", "erin",
                          "--topic", "private-ops*", "--ttl", "120"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    minted = out.stdout.strip()
    claims = jwt.decode(minted, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "erin" and claims["topics"] == ["private-ops*"]
    assert 100 < claims["exp"] - time.time() <= 120
    client = closing(WSClient(server.url, topics=["private-ops-x"], token=minted))
    sync_subscribers(server.url, [client])
    nid = publish(server.url, title="x", user_id="erin")
    assert client.next_notification(5)["id"] == nid
    no_secret = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "notifier", "token", "erin"],
                               cwd=ROOT, env={k: v for k, v in os.environ.items() if k != "NOTIFIER_SECRET"},
                               capture_output=True, text=True, timeout=30)
    assert no_secret.returncode != 0 and "NOTIFIER_SECRET" in no_secret.stderr


def test_issue_token_from_python():
    from flask import Flask

    from notifier import Notifier

    app = Flask(__name__)
    app.config["NOTIFIER_SECRET"] = SECRET
    n = Notifier(app)
    with app.app_context():
        minted = n.issue_token("frank", topics=["private-a"], ttl=30)
    claims = jwt.decode(minted, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "frank" and claims["topics"] == ["private-a"]


def test_a_full_worker_refuses_subscribers_but_still_publishes(notifier_server, closing):
    server = notifier_server(workers=1, env={"NOTIFIER_WORKER_CONNECTIONS": 30})  # room for 20 subscribers
    clients = [closing(open_client(server, "ws" if i % 2 else "sse")) for i in range(20)]
    refused(server, "sse", 503)
    refused(server, "ws", 503)
    sync_subscribers(server.url, clients[:2])
    nid = publish(server.url, title="still publishing")
    assert all(c.next_notification(5)["id"] == nid for c in clients[2:4])
    assert requests.get(server.url + "/readyz", timeout=5).status_code == 200
