"""The inbox over HTTP (GET /inbox, POST /inbox/read, DELETE /inbox/<id>) against a real
gunicorn, on a SQLite file and on a real PostgreSQL (tests/pg_server.py).

Most tests share one server per database (2 workers on Redis, NOTIFIER_INBOX_SIZE=3,
NOTIFIER_INBOX_TTL=1 day), each with users of its own; a restart, an outage and the CLI
get servers and databases of their own.
"""
from __future__ import annotations

import json
import time
import uuid

import pytest
import requests
from sqlalchemy import func, insert, inspect, select

from clients import SYNC_TYPE, WSClient, connect_until_spread, post_notify, publish, sync_subscribers
from conftest import cli_env, flask
from notifier.core.notification import format_id
from notifier.inbox.store import engine_for, inbox as inbox_table
from notifier.tokens import issue_token

SECRET = "inbox-test-secret-of-32-bytes-or-more"
SIZE = 3  # NOTIFIER_INBOX_SIZE of the shared servers
DAY_MS = 86_400_000


def inbox_env(url: str, **more) -> dict:
    return {"NOTIFIER_INBOX_URL": url, "NOTIFIER_SECRET": SECRET, **more}


def new_user() -> str:
    return f"u-{uuid.uuid4().hex[:10]}"


def auth(user: str) -> dict:
    return {"Authorization": f"Bearer {issue_token(SECRET, user)}"}


def get_inbox(server, user: str | None, **params) -> requests.Response:
    return requests.get(server.url + "/inbox", params=params, headers=auth(user) if user else {}, timeout=10)


def listing(server, user: str, **params) -> dict:
    r = get_inbox(server, user, **params)
    assert r.status_code == 200, r.text
    return r.json()


def ids_of(page: dict) -> list[str]:
    return [n["id"] for n in page["notifications"]]


def mark_read(server, user: str | None, body=None, *, raw: bytes | None = None,
              content_type: str = "application/json") -> requests.Response:
    data = raw if raw is not None else json.dumps(body).encode()
    return requests.post(server.url + "/inbox/read", data=data, timeout=10,
                         headers={**(auth(user) if user else {}), "Content-Type": content_type})


def remove(server, user: str | None, notification_id: str) -> requests.Response:
    return requests.delete(f"{server.url}/inbox/{notification_id}", headers=auth(user) if user else {}, timeout=10)


def stored(engine, notification_ids) -> set[tuple[str, str]]:
    """(user_id, id) rows of the real table among ``notification_ids``."""
    with engine.connect() as conn:
        return set(conn.execute(select(inbox_table.c.user_id, inbox_table.c.id)
                                .where(inbox_table.c.id.in_(list(notification_ids)))).all())


def insert_expired(engine, user: str, days_old: int = 2) -> str:
    """A row written straight into the table ``days_old`` days ago; returns its id."""
    ms = int(time.time() * 1000) - days_old * DAY_MS
    notification_id = format_id(ms, 0)
    body = json.dumps({"type": "old", "title": "expired", "message": "", "user_id": user})
    with engine.begin() as conn:
        conn.execute(insert(inbox_table).values(user_id=user, id=notification_id, type="old", body=body,
                                                read=False, created_ms=ms))
    return notification_id


# --------------------------------------------------------------------------------------------
# fixtures: one database and one server per backend
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database(request, tmp_path_factory) -> str:
    """The shared servers' database URL: a SQLite file, or a database on a private PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'inbox.db'}"
    return request.getfixturevalue("postgres_server").create_database("shared")


@pytest.fixture(scope="module")
def engine(database):
    """The test's own way into the real table (to look and to plant expired rows)."""
    eng = engine_for(database)
    yield eng
    eng.dispose()


@pytest.fixture(scope="module")
def server(server_factory, module_redis, database):
    srv = server_factory(workers=2, redis=module_redis,
                         env=inbox_env(database, NOTIFIER_INBOX_SIZE=SIZE, NOTIFIER_INBOX_TTL=1))
    yield srv
    srv.stop()  # the other backend's server does not run beside it


@pytest.fixture
def fresh_database(database, tmp_path, request) -> str:
    """A new empty database of the same kind as ``database``."""
    if database.startswith("sqlite"):
        return f"sqlite:///{tmp_path / 'fresh.db'}"
    return request.getfixturevalue("postgres_database")


# --------------------------------------------------------------------------------------------
# what is kept
# --------------------------------------------------------------------------------------------


def test_only_user_targeted_notifications_are_kept(server, engine):
    user = new_user()
    kept = publish(server.url, user_id=user, type="order.shipped", title="Shipped", data={"n": 1})
    topic = publish(server.url, topic="news", title="for a topic")
    broadcast = publish(server.url, title="for everyone")
    not_kept = publish(server.url, user_id=user, title="live only", inbox=False)

    page = listing(server, user)
    assert ids_of(page) == [kept]
    first = page["notifications"][0]
    assert (first["type"], first["title"], first["data"], first["user_id"], first["read"]) == \
        ("order.shipped", "Shipped", {"n": 1}, user, False)
    assert page["unread"] == 1 and page["more"] is False
    assert stored(engine, [kept, topic, broadcast, not_kept]) == {(user, kept)}

    r = post_notify(server.url, {"topic": "news", "title": "x", "inbox": True})
    assert r.status == 400, r.text
    assert "inbox" in r.error, r.text


def test_batch_keeps_every_user_targeted_item(server, engine):
    a, b = new_user(), new_user()
    r = post_notify(server.url, [{"user_id": a, "title": "a1"}, {"user_id": b, "title": "b1"},
                                 {"topic": "news", "title": "t"}, {"user_id": a, "title": "a2"},
                                 {"user_id": a, "title": "a3 live only", "inbox": False}])
    assert r.status == 202, r.text
    a1, b1, t, a2, a3 = r.body["ids"]
    assert ids_of(listing(server, a)) == [a2, a1]
    assert ids_of(listing(server, b)) == [b1]
    assert stored(engine, [a1, b1, t, a2, a3]) == {(a, a1), (b, b1), (a, a2)}


def test_retention_keeps_the_newest(server, engine):
    user = new_user()
    sent = [publish(server.url, user_id=user, title=f"n{i}") for i in range(SIZE + 2)]
    assert ids_of(listing(server, user)) == sent[::-1][:SIZE]
    assert stored(engine, sent) == {(user, i) for i in sent[-SIZE:]}  # trimmed on write, not hidden


# --------------------------------------------------------------------------------------------
# reading it
# --------------------------------------------------------------------------------------------


def test_paging_newest_first(server):
    user = new_user()
    n1, n2, n3 = (publish(server.url, user_id=user, title=f"n{i}") for i in range(3))
    assert ids_of(listing(server, user)) == [n3, n2, n1]

    first = listing(server, user, limit=2)
    assert (ids_of(first), first["more"], first["unread"]) == ([n3, n2], True, 3)
    second = listing(server, user, limit=2, before=n2)
    assert (ids_of(second), second["more"]) == ([n1], False)
    one = listing(server, user, limit=1, before=n3)
    assert (ids_of(one), one["more"]) == ([n2], True)
    assert ids_of(listing(server, user, before=n1)) == []


def test_read_state_and_unread_count(server):
    user = new_user()
    n1, n2, n3 = (publish(server.url, user_id=user, title=f"n{i}") for i in range(3))

    r = mark_read(server, user, {"ids": [n1, n3]})
    assert (r.status_code, r.json()) == (200, {"unread": 1})
    page = listing(server, user)
    assert {n["id"]: n["read"] for n in page["notifications"]} == {n1: True, n2: False, n3: True}
    assert page["unread"] == 1
    r = mark_read(server, user, {"ids": [n1]})  # already read: fine, nothing changes
    assert (r.status_code, r.json()) == (200, {"unread": 1})

    r = mark_read(server, user, {"all": True})
    assert (r.status_code, r.json()) == (200, {"unread": 0})
    page = listing(server, user)
    assert page["unread"] == 0 and all(n["read"] for n in page["notifications"])


def test_delete(server, engine):
    user = new_user()
    n1, n2 = (publish(server.url, user_id=user, title=f"n{i}") for i in range(2))
    r = remove(server, user, n2)
    assert (r.status_code, r.content) == (204, b"")
    page = listing(server, user)
    assert (ids_of(page), page["unread"]) == ([n1], 1)
    assert stored(engine, [n2]) == set()
    assert remove(server, user, n2).status_code == 404  # gone already


def test_another_users_notification_is_404_and_unchanged(server):
    owner, other = new_user(), new_user()
    theirs = publish(server.url, user_id=owner, title="owner's")
    mine = publish(server.url, user_id=other, title="other's")

    for body in ({"ids": [theirs]}, {"ids": [mine, theirs]}):
        r = mark_read(server, other, body)
        assert r.status_code == 404, r.text
        assert theirs in r.json()["error"]
    r = remove(server, other, theirs)
    assert r.status_code == 404, r.text

    assert [(n["id"], n["read"]) for n in listing(server, owner)["notifications"]] == [(theirs, False)]
    assert [(n["id"], n["read"]) for n in listing(server, other)["notifications"]] == [(mine, False)]


def test_no_user_bad_body_not_json(server):
    user = new_user()
    n1 = publish(server.url, user_id=user, title="n1")

    wrong_secret = {"Authorization": f"Bearer {issue_token('another-secret-of-32-bytes-or-more', user)}"}
    for r in (get_inbox(server, None), mark_read(server, None, {"all": True}), remove(server, None, n1),
              requests.get(server.url + "/inbox", headers=wrong_secret, timeout=10)):
        assert r.status_code == 401, (r.request.method, r.text)
    assert requests.get(server.url + "/inbox", params={"token": issue_token(SECRET, user)},
                        timeout=10).status_code == 200  # ?token= as on the streams

    bad_bodies = [{"ids": []}, {"ids": n1}, {"ids": ["not-an-id"]}, {"ids": [1]}, {"all": False},
                  {"all": True, "ids": [n1]}, {"ids": [n1], "extra": 1}, [n1], {}, {"ids": [n1] * 1001}]
    for body in bad_bodies:
        r = mark_read(server, user, body)
        assert r.status_code == 400, (body, r.text)
    assert mark_read(server, user, raw=b'{"all": tru').status_code == 400
    for params in ({"limit": 0}, {"limit": "x"}, {"before": "yesterday"}):
        assert get_inbox(server, user, **params).status_code == 400, params

    r = mark_read(server, user, raw=b'{"all": true}', content_type="text/plain")
    assert r.status_code == 415, r.text
    assert listing(server, user)["unread"] == 1  # none of these changed anything


def test_a_page_of_another_origin_uses_the_inbox_with_a_token_after_a_preflight(server):
    user, origin = new_user(), "https://app.example"
    publish(server.url, user_id=user, title="cross-origin")
    preflight = requests.options(server.url + "/inbox/read", timeout=10, headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert {"POST", "DELETE"} <= set(preflight.headers["Access-Control-Allow-Methods"].replace(" ", "").split(","))
    assert "authorization" in preflight.headers["Access-Control-Allow-Headers"].lower()
    page = requests.get(server.url + "/inbox", headers={**auth(user), "Origin": origin}, timeout=10)
    assert page.status_code == 200 and page.headers["Access-Control-Allow-Origin"] == "*"
    assert page.json()["unread"] == 1
    refused = requests.get(server.url + "/inbox", headers={"Origin": origin}, timeout=10)
    assert refused.status_code == 401 and refused.headers["Access-Control-Allow-Origin"] == "*"  # readable error


def test_expired_rows_are_not_listed_nor_counted(server, engine):
    user = new_user()
    old = insert_expired(engine, user)
    fresh = publish(server.url, user_id=user, title="fresh")

    page = listing(server, user)
    assert (ids_of(page), page["unread"]) == ([fresh], 1)
    assert mark_read(server, user, {"ids": [old]}).status_code == 404
    assert remove(server, user, old).status_code == 404


# --------------------------------------------------------------------------------------------
# live: the user's other connections follow
# --------------------------------------------------------------------------------------------


def next_message(client, timeout: float = 5.0) -> dict:
    """The next message that is not a sync marker."""
    deadline = time.monotonic() + timeout
    while True:
        msg = client.recv_json(max(deadline - time.monotonic(), 0.001))
        if msg.get("type") != SYNC_TYPE:
            return msg


def test_changes_reach_the_users_connections_on_every_worker(server, closing):
    user, stranger = new_user(), new_user()
    conns = connect_until_spread(server, lambda i: closing(WSClient(server.url, token=issue_token(SECRET, user))),
                                 limit=40)
    owners = server.worker_of_ports()
    first = conns[0]
    elsewhere = next(c for c in conns if owners[c.local_port] != owners[first.local_port])
    watched = [first, elsewhere]  # one on each worker
    bystander = closing(WSClient(server.url, token=issue_token(SECRET, stranger)))
    sync_subscribers(server.url, conns, user_id=user, inbox=False)
    sync_subscribers(server.url, [bystander], user_id=stranger, inbox=False)

    n1, n2 = (publish(server.url, user_id=user, title=f"n{i}") for i in range(2))
    for c in watched:
        assert [m["id"] for m in c.notifications(2)] == [n1, n2]

    assert mark_read(server, user, {"ids": [n1]}).json() == {"unread": 1}
    for c in watched:
        msg = next_message(c)
        assert (msg["type"], msg["data"]) == ("notifier.read", {"ids": [n1], "unread": 1}), msg
        assert "id" not in msg  # ephemeral: not in history

    assert remove(server, user, n2).status_code == 204
    for c in watched:
        msg = next_message(c)
        assert (msg["type"], msg["data"]) == ("notifier.deleted", {"ids": [n2], "unread": 0}), msg

    assert mark_read(server, user, {"all": True}).json() == {"unread": 0}
    for c in watched:
        msg = next_message(c)
        assert (msg["type"], msg["data"]) == ("notifier.read", {"ids": "all", "unread": 0}), msg

    # the stranger's next message is one published after all that: nothing of the user's came before it
    later = publish(server.url, user_id=stranger, title="yours", inbox=False)
    assert next_message(bystander)["id"] == later


# --------------------------------------------------------------------------------------------
# durability, retention, outage
# --------------------------------------------------------------------------------------------


def test_survives_a_restart_and_a_fresh_server_sweeps_expired_rows(notifier_server, fresh_database):
    env = inbox_env(fresh_database, NOTIFIER_INBOX_TTL=1)
    user, ancient = new_user(), new_user()
    before = notifier_server(workers=1, env=env)
    n1, n2, n3 = (publish(before.url, user_id=user, title=f"n{i}") for i in range(3))
    assert mark_read(before, user, {"ids": [n2]}).status_code == 200
    assert remove(before, user, n1).status_code == 204
    before.stop()

    engine = engine_for(fresh_database)
    try:
        expired = {insert_expired(engine, user, days_old=3), insert_expired(engine, ancient)}
        after = notifier_server(workers=1, env=env)
        page = listing(after, user)
        assert [(n["id"], n["read"]) for n in page["notifications"]] == [(n3, False), (n2, True)]
        assert page["unread"] == 1
        assert listing(after, ancient) == {"notifications": [], "unread": 0, "more": False}
        with engine.connect() as conn:  # hidden, not yet deleted: reads never sweep
            assert conn.execute(select(func.count()).select_from(inbox_table)
                                .where(inbox_table.c.id.in_(expired))).scalar() == 2

        n4 = publish(after.url, user_id=user, title="the fresh server's first write sweeps")
        assert stored(engine, expired) == set()
        assert ids_of(listing(after, user)) == [n4, n3, n2]
    finally:
        engine.dispose()


def test_database_down_is_503_and_a_keyed_retry_keeps_it_once(notifier_server, postgres_server, postgres_database):
    srv = notifier_server(workers=1, env=inbox_env(postgres_database))
    user = new_user()
    warm = publish(srv.url, user_id=user, title="before the outage")  # the tables exist, the pool is warm
    key = {"Idempotency-Key": f"k-{uuid.uuid4().hex}"}
    body = {"user_id": user, "title": "during the outage"}

    postgres_server.stop()
    try:
        r = post_notify(srv.url, body, headers=key)
        assert r.status == 503, r.text
        assert r.headers.get("retry-after"), r.headers
        r = get_inbox(srv, user)
        assert r.status_code == 503 and r.headers.get("Retry-After"), r.text
    finally:
        postgres_server.start()

    r = post_notify(srv.url, body, headers=key)  # the pool reconnects (pre-ping)
    assert r.status == 202, r.text
    assert r.headers.get("idempotent-replayed") == "true", r.headers
    again = post_notify(srv.url, body, headers=key)
    assert (again.status, again.body) == (202, r.body)
    page = listing(srv, user)
    assert ids_of(page) == [r.body["id"], warm]  # kept once
    assert page["unread"] == 2


# --------------------------------------------------------------------------------------------
# the CLI
# --------------------------------------------------------------------------------------------


def test_cli_inbox_init_creates_the_tables(fresh_database):
    for _ in range(2):  # idempotent
        out = flask("inbox", "init", env=cli_env(NOTIFIER_INBOX_URL=fresh_database))
        assert out.returncode == 0, out.stderr
        assert "schema version 1" in out.stdout, out.stdout
    engine = engine_for(fresh_database)
    try:
        assert {"notifier_inbox", "notifier_inbox_schema"} <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_a_busy_inbox_is_trimmed_every_tenth_of_its_size_and_keeps_the_newest(tmp_path):
    """Each process trims a user once every SIZE/10 writes to it (a trim reads the user's newest
    SIZE rows): the table holds at most SIZE plus a tenth, always the newest."""
    from notifier.inbox.store import InboxStore, Row, engine_for, inbox

    store = InboxStore(engine_for(f"sqlite:///{tmp_path / 'trim.db'}"), ttl_days=1, size=100)
    now = int(time.time() * 1000)
    ids = [format_id(now, i) for i in range(250)]
    for start in range(0, 250, 7):  # batches of 7, as publishes come
        store.add([Row("u", i, "notification", '{"type":"notification"}', now) for i in ids[start:start + 7]])
    with store.engine.connect() as conn:
        kept = sorted(i for (i,) in conn.execute(select(inbox.c.id).where(inbox.c.user_id == "u")))
    assert 100 <= len(kept) <= 110 and kept == ids[-len(kept):]
