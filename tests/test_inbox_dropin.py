"""The drop-in inbox in a host app's own database and transaction (tests/apps/inbox_app.py,
Flask-SQLAlchemy, under gunicorn's gevent worker): ``publish_after_commit`` keeps the
notification with the app's row and publishes it once both are committed; a rollback
leaves neither and publishes nothing. The user is the app's session, for the streams and
for the inbox alike.
"""
from __future__ import annotations

import pytest
import requests
from flask import Flask
from sqlalchemy import create_engine, text

from clients import SSEClient, WSClient, cookie_of, login, publish, sync_subscribers
from notifier import Notifier, NotifierError

PREFIX = "/notifier"
ALICE = "1"  # the app's int id, as notifier names users


class Shop:
    """The app's server and its database, looked into directly."""

    def __init__(self, server, database_url: str):
        self.server = server
        self.url = server.url
        self.engine = create_engine(database_url)

    def rows(self, user_id: str) -> tuple[list[int], list[str]]:
        """The user's order ids and inbox notification ids, straight from the database."""
        with self.engine.connect() as conn:
            orders = conn.execute(text('SELECT id FROM "order" WHERE user_id = :u ORDER BY id'), {"u": int(user_id)})
            kept = conn.execute(text("SELECT id FROM notifier_inbox WHERE user_id = :u ORDER BY id"), {"u": user_id})
            return [r[0] for r in orders], [r[0] for r in kept]

    def inbox(self, user: requests.Session) -> dict:
        r = user.get(self.url + PREFIX + "/inbox", timeout=5)
        assert r.status_code == 200, r.text
        return r.json()

    def orders(self, user: requests.Session) -> list[int]:
        r = user.get(self.url + "/orders", timeout=5)
        assert r.status_code == 200, r.text
        return [o["id"] for o in r.json()["orders"]]

    def marker(self) -> str:
        """A broadcast (kept in no inbox): what a stream gets next when nothing else came."""
        return publish(self.url, path=PREFIX + "/notify", title="marker")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def shop(request, server_factory, tmp_path_factory):
    if request.param == "postgresql":
        database_url = request.getfixturevalue("postgres_server").create_database("shop")
    else:
        database_url = f"sqlite:///{tmp_path_factory.mktemp('shop') / 'shop.db'}"
    server = server_factory(app="tests.apps.inbox_app:create_app()", prefix=PREFIX, env={"DATABASE_URL": database_url})
    shop = Shop(server, database_url)
    yield shop
    shop.engine.dispose()


def streams(shop: Shop, user: requests.Session, closing) -> list:
    """A WebSocket and an SSE stream opened with the user's session cookie, registered."""
    clients = [closing(WSClient(shop.url, path=PREFIX + "/ws", cookie=cookie_of(user))),
               closing(SSEClient(shop.url, path=PREFIX + "/events", cookie=cookie_of(user)))]
    sync_subscribers(shop.url, clients, path=PREFIX + "/notify")
    return clients


def test_a_committed_order_keeps_its_notification_and_delivers_it_live(shop, closing):
    alice, bob = login(shop.url, "alice"), login(shop.url, "bob")
    alices = streams(shop, alice, closing)
    bobs = streams(shop, bob, closing)

    r = alice.post(shop.url + "/orders", json={"item": "pen"}, timeout=5)
    assert r.status_code == 201, r.text
    order = r.json()["id"]

    assert order in shop.orders(alice)
    inbox = shop.inbox(alice)
    kept = inbox["notifications"][0]
    assert (kept["type"], kept["title"], kept["user_id"], kept["data"], kept["read"]) == \
        ("order.created", "Order received", ALICE, {"order": order}, False)
    assert inbox["unread"] >= 1
    orders, kept_ids = shop.rows(ALICE)
    assert order in orders and kept["id"] in kept_ids, "both rows in the app's own database"

    for stream in alices:
        live = stream.next_notification(5)
        assert live["id"] == kept["id"], f"live {live!r} is not the kept {kept!r}"
        assert {k: live[k] for k in ("type", "title", "user_id", "data")} == \
            {k: kept[k] for k in ("type", "title", "user_id", "data")}
    marker = shop.marker()
    for stream in bobs:
        assert stream.next_notification(5)["id"] == marker, "bob must not get alice's order"


def test_a_rolled_back_order_leaves_neither_row_and_publishes_nothing(shop, closing):
    alice = login(shop.url, "alice")
    alices = streams(shop, alice, closing)
    orders_before, inbox_before = shop.orders(alice), shop.inbox(alice)
    rows_before = shop.rows(ALICE)

    r = alice.post(shop.url + "/orders?fail=1", json={"item": "pen"}, timeout=5)
    assert r.status_code == 402, r.text

    assert shop.orders(alice) == orders_before
    assert shop.inbox(alice) == inbox_before
    assert shop.rows(ALICE) == rows_before, "neither the order nor its notification in the database"
    marker = shop.marker()
    for stream in alices:
        assert stream.next_notification(5)["id"] == marker, "a rolled-back notification was delivered"


def test_the_session_inbox_refuses_a_page_of_another_origin(shop):
    alice = login(shop.url, "alice")
    assert alice.post(shop.url + "/orders", json={"item": "cup"}, timeout=5).status_code == 201
    unread = shop.inbox(alice)["unread"]
    assert unread >= 1

    read_all = shop.url + PREFIX + "/inbox/read"
    r = alice.post(read_all, json={"all": True}, headers={"Origin": "https://evil.example"}, timeout=5)
    assert r.status_code == 403, r.text
    assert shop.inbox(alice)["unread"] == unread, "a refused request changed nothing"

    r = alice.post(read_all, json={"all": True}, headers={"Origin": shop.url}, timeout=5)
    assert (r.status_code, r.json()) == (200, {"unread": 0})


def test_publish_after_commit_without_the_apps_database_says_what_is_missing():
    app = Flask(__name__)
    notifier = Notifier(app)

    @app.post("/orders")
    def create_order():
        notifier.publish_after_commit(user_id=1, title="Order received")
        return "", 201

    app.testing = True  # the view's exception reaches the test
    with pytest.raises(NotifierError, match=r"inbox=db"):
        app.test_client().post("/orders")
