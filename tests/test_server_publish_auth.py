"""Who may publish: loopback peers only by default, API keys when configured.

The server listens on 127.0.0.1 and on a unix socket at once. A client on the
unix socket is not a loopback TCP peer, so it stands in for "any non-local
client"; proxy headers must never change who the peer is.
"""

from __future__ import annotations

import pytest
import requests

from clients import post_notify, unix_request

BODY = {"title": "t"}
SPOOF_LOCAL = {"X-Forwarded-For": "127.0.0.1", "X-Real-IP": "127.0.0.1", "Forwarded": "for=127.0.0.1"}


@pytest.fixture(scope="module")
def open_server(short_tmp, server_factory):
    sock = short_tmp / "open.sock"
    srv = server_factory(workers=1, bind=[f"unix:{sock}"])
    srv.sock = str(sock)
    return srv


@pytest.fixture(scope="module")
def keyed_server(short_tmp, server_factory):
    sock = short_tmp / "keyed.sock"
    srv = server_factory(workers=1, bind=[f"unix:{sock}"], env={"NOTIFIER_API_KEYS": "k1,k2"})
    srv.sock = str(sock)
    return srv


def assert_error(reply, status, mentions=None):
    assert reply.status == status, f"expected {status}, got {reply.status} {reply.text!r}"
    assert isinstance(reply.error, str) and reply.error, reply.text
    if mentions:
        assert mentions in reply.error, f"error should mention {mentions}: {reply.error!r}"


# -- no keys configured: loopback peers only ------------------------------------------------

def test_unix_socket_serves_reads(open_server):
    r = unix_request(open_server.sock, "GET", "/healthz")
    assert r.status == 200, r.text


def test_non_loopback_peer_is_refused_and_told_to_set_api_keys(open_server):
    assert_error(unix_request(open_server.sock, "POST", "/notify", BODY), 403, mentions="NOTIFIER_API_KEYS")


def test_forwarded_headers_do_not_make_a_peer_local(open_server):
    r = unix_request(open_server.sock, "POST", "/notify", BODY, headers=SPOOF_LOCAL)
    assert_error(r, 403, mentions="NOTIFIER_API_KEYS")


def test_loopback_peer_may_publish(open_server):
    r = post_notify(open_server.url, BODY)
    assert r.status == 202, r.text


@pytest.mark.parametrize("header", ["X-Forwarded-For", "X-Real-IP", "Forwarded"])
@pytest.mark.parametrize("claims", ["203.0.113.9", "127.0.0.1", "for=127.0.0.1"])
def test_a_loopback_peer_passing_a_request_on_is_a_proxy_not_a_local_publisher(open_server, header, claims):
    """nginx on the same host connects from 127.0.0.1 for everyone: without keys, a request
    that came through a proxy (it carries a forwarding header) may not publish."""
    r = post_notify(open_server.url, BODY, headers={header: claims})
    assert_error(r, 403, mentions="NOTIFIER_API_KEYS")
    metrics = requests.get(open_server.url + "/metrics", headers={header: claims}, timeout=5)
    assert metrics.status_code == 403


def test_a_bearer_key_is_not_needed_and_not_checked_without_keys(open_server):
    r = post_notify(open_server.url, BODY, headers={"Authorization": "Bearer whatever"})
    assert r.status == 202, r.text


# -- NOTIFIER_API_KEYS set ------------------------------------------------------------------

def test_without_authorization_is_401(keyed_server):
    assert_error(post_notify(keyed_server.url, BODY), 401)


@pytest.mark.parametrize("auth", ["Bearer nope", "Bearer k1k2", "Bearer k1,k2", "Bearer K1"])
def test_wrong_key_is_403(keyed_server, auth):
    assert_error(post_notify(keyed_server.url, BODY, headers={"Authorization": auth}), 403)


@pytest.mark.parametrize("key", ["k1", "k2"])
def test_each_configured_key_may_publish(keyed_server, key):
    r = post_notify(keyed_server.url, BODY, headers={"Authorization": f"Bearer {key}"})
    assert r.status == 202, r.text


def test_loopback_is_not_enough_once_keys_are_set(keyed_server):
    r = post_notify(keyed_server.url, BODY, headers=SPOOF_LOCAL)
    assert_error(r, 401)


def test_right_key_works_from_a_non_loopback_peer(keyed_server):
    r = unix_request(keyed_server.sock, "POST", "/notify", BODY, headers={"Authorization": "Bearer k2"})
    assert r.status == 202, r.text
    assert isinstance(r.body.get("id"), str)


def test_non_loopback_peer_without_key_is_401(keyed_server):
    assert_error(unix_request(keyed_server.sock, "POST", "/notify", BODY), 401)


def test_auth_is_checked_before_the_body(keyed_server):
    r = requests.post(keyed_server.url + "/notify", data=b"not json",
                      headers={"Content-Type": "application/json"}, timeout=5)
    assert r.status_code == 401, r.text
