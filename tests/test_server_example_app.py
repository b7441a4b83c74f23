"""The drop-in example: notifier mounted at /notifier in an existing Flask app.

The host app's session names the user (``identify`` hook), so a logged-in
browser needs no token to get its own notifications.
"""

from __future__ import annotations

import pytest
import requests

from clients import SSEClient, StreamClosed, WSClient, connect_until_spread, publish, sync_subscribers

PREFIX = "/notifier"


@pytest.fixture(scope="module", params=["in-process", "redis-2-workers"])
def server(request, server_factory, redis_factory):
    if request.param == "in-process":
        srv = server_factory(app="examples.flask_app:app", prefix=PREFIX)
    else:
        srv = server_factory(app="examples.flask_app:app", prefix=PREFIX, workers=2, redis=redis_factory())
    yield srv
    srv.stop()


def login(server, user) -> str:
    """Log in through the host app; returns the Cookie header value of its session."""
    s = requests.Session()
    r = s.get(server.url + "/login", params={"user": user}, timeout=5)
    assert r.status_code == 200, r.text
    cookie = "; ".join(f"{c.name}={c.value}" for c in s.cookies)
    assert cookie, "login did not set a session cookie"
    return cookie


def pub(server, **fields):
    return publish(server.url, path=PREFIX + "/notify", **fields)


def test_mounted_health_endpoints(server):
    assert requests.get(server.url + PREFIX + "/healthz", timeout=5).status_code == 200
    assert requests.get(server.url + PREFIX + "/readyz", timeout=5).status_code == 200


def test_session_user_gets_own_notifications_and_not_others(server, closing):
    alice, bob = login(server, "alice"), login(server, "bob")
    alice_ws = closing(WSClient(server.url, path=PREFIX + "/ws", cookie=alice))
    alice_sse = closing(SSEClient(server.url, path=PREFIX + "/events", cookie=alice))
    bob_ws = closing(WSClient(server.url, path=PREFIX + "/ws", cookie=bob))
    bob_sse = closing(SSEClient(server.url, path=PREFIX + "/events", cookie=bob))
    anon_ws = closing(WSClient(server.url, path=PREFIX + "/ws"))
    anon_sse = closing(SSEClient(server.url, path=PREFIX + "/events"))
    everyone = [alice_ws, alice_sse, bob_ws, bob_sse, anon_ws, anon_sse]
    assert all(c.status == 200 for c in everyone if isinstance(c, SSEClient))
    sync_subscribers(server.url, everyone, path=PREFIX + "/notify")

    for_alice = pub(server, user_id="alice", title="Hi Alice")
    for_bob = pub(server, user_id="bob", title="Hi Bob")
    for_all = pub(server, title="Everyone")

    def ids(client, n):
        return [m["id"] for m in client.notifications(n, timeout=10)]

    for c in (alice_ws, alice_sse):
        got = c.notifications(2, timeout=10)
        assert [m["id"] for m in got] == [for_alice, for_all]
        assert got[0]["user_id"] == "alice" and got[0]["title"] == "Hi Alice"
    for c in (bob_ws, bob_sse):
        assert ids(c, 2) == [for_bob, for_all]
    for c in (anon_ws, anon_sse):
        assert ids(c, 1) == [for_all]


def test_host_app_routes_still_serve_next_to_notifier(server):
    r = requests.get(server.url + "/login", params={"user": "carol"}, timeout=5)
    assert r.status_code == 200
    r = requests.get(server.url + PREFIX + "/no-such-route", timeout=5)
    assert r.status_code == 404


def test_host_app_code_publishes_from_python_to_the_session_user(server, closing):
    alice = login(server, "alice")
    alice_ws = closing(WSClient(server.url, path=PREFIX + "/ws", cookie=alice))
    bob_sse = closing(SSEClient(server.url, path=PREFIX + "/events", cookie=login(server, "bob")))
    sync_subscribers(server.url, [alice_ws, bob_sse], path=PREFIX + "/notify")

    r = requests.post(server.url + "/orders", headers={"Cookie": alice}, timeout=5)
    assert r.status_code == 201, r.text
    got = alice_ws.next_notification(5)
    assert got["type"] == "order.created" and got["user_id"] == "alice"
    assert got["title"] == "Order received" and got["data"] == r.json()

    sentinel = pub(server, title="sentinel")
    assert bob_sse.next_notification(5)["id"] == sentinel, "bob must not get alice's order"


def test_a_host_websocket_route_keeps_its_reader_next_to_notifiers(notifier_server, closing):
    import websocket

    server = notifier_server(workers=1, app="tests.apps.host_sock_app:app", prefix="/n")
    sub = closing(WSClient(server.url, path="/n/ws"))
    sync_subscribers(server.url, [sub], path="/n/notify")
    echo = websocket.create_connection(server.url.replace("http", "ws", 1) + "/echo", timeout=5)
    try:
        for text in ("one", "two"):
            echo.send(text)
            assert echo.recv() == "echo:" + text
    finally:
        echo.close()
    nid = publish(server.url, path="/n/notify", title="still here")
    assert sub.next_notification(5)["id"] == nid


def test_logout_disconnects_the_users_streams_on_every_worker_and_no_one_elses(server, closing):
    """The example's logout calls ``notifier.disconnect(user)``: every stream opened with
    alice's session ends (WebSocket 4001, SSE a last notifier.disconnect event), on both
    workers; bob's carry on."""
    alice, bob = login(server, "alice"), login(server, "bob")

    def make(i):
        if i % 2:
            return closing(SSEClient(server.url, path=PREFIX + "/events", cookie=alice))
        return closing(WSClient(server.url, path=PREFIX + "/ws", cookie=alice))

    alices = connect_until_spread(server, make) if server.workers > 1 else [make(0), make(1)]
    bobs = [closing(WSClient(server.url, path=PREFIX + "/ws", cookie=bob)),
            closing(SSEClient(server.url, path=PREFIX + "/events", cookie=bob))]
    sync_subscribers(server.url, alices + bobs, path=PREFIX + "/notify")
    r = requests.post(server.url + "/logout", headers={"Cookie": alice}, timeout=5)
    assert r.status_code == 200, r.text
    for c in alices:
        if isinstance(c, WSClient):
            assert c.drain_until_closed(timeout=10)[1] == 4001
        else:
            last = c.next_event(10)
            assert (last.event, last.id, last.json["type"]) == ("notifier.disconnect", None, "notifier.disconnect")
            with pytest.raises(StreamClosed):
                c.next_event(10)
    after = pub(server, title="still here")
    for c in bobs:
        assert c.next_notification(10)["id"] == after
