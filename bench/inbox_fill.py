"""Fill an inbox database fast, for bench/inbox.py: ``users`` × ``per_user`` notifications
in notifier's own tables (created by ``InboxStore.init()``), written straight into the
database (PostgreSQL: COPY; SQLite: executemany in big transactions), not through
``POST /notify``, which would take hours at 10,000,000 rows.

The rows are what the server would have stored: notification ``k`` (0 = oldest) of the
whole stream is for user ``u{k % users}``, published ``days`` days ago plus k steps, with an
id made by ``format_id`` and a body as ``encode_fields`` writes it (checked against it). They
go in in publish order, as a real inbox fills, so one user's rows are spread over the table
as they would be. Every user's newest ``unread`` are unread, the rest read.

notifier is imported from the copy bench/inbox.py runs (it puts that on ``sys.path`` first).
"""
from __future__ import annotations

import os
import sqlite3
import threading
import time
from datetime import datetime, timezone
from typing import Iterator

import bench as b

CHUNK = 100_000
"""Rows per executemany / COPY write."""
BODY = ('{"type":"notification","title":"New comment","message":"Someone commented on your post #%d",'
        '"ts":"%s%03dZ","user_id":"u%d","data":{"post":%d,"url":"/posts/%d"}}')


class Plan:
    """Which rows: the same for both stores, so both answer the same requests."""

    def __init__(self, users: int, per_user: int, unread: int, days: float, now_ms: int) -> None:
        self.users, self.per_user, self.unread = users, per_user, min(unread, per_user)
        self.total = users * per_user
        self.start_ms = now_ms - int(days * 86_400_000)
        self.step_ms = max(1, int(days * 86_400_000) // self.total)

    def ms(self, k: int) -> int:
        return self.start_ms + k * self.step_ms

    def k(self, user: int, j: int) -> int:
        """The stream position of the user's j-th notification (0 = its oldest)."""
        return j * self.users + user

    def id(self, k: int) -> str:
        from notifier.core.notification import format_id

        return format_id(self.ms(k), 0)

    def newest_ids(self, user: int, n: int) -> list[str]:
        """The user's ``n`` newest ids, newest first: what its pages must show."""
        return [self.id(self.k(user, j)) for j in range(self.per_user - 1, self.per_user - 1 - n, -1)]

    def rows(self, stop: threading.Event | None = None) -> Iterator[list[tuple]]:
        """(user_id, id, type, body, read, created_ms) in publish order, ``CHUNK`` at a time;
        ``stop`` set: ends with an error between two chunks."""
        from notifier.core.notification import format_id

        users, read_below = self.users, self.per_user - self.unread
        second, prefix, chunk = -1, "", []
        for k in range(self.total):
            ms = self.start_ms + k * self.step_ms
            s, millis = divmod(ms, 1000)
            if s != second:
                second = s
                prefix = datetime.fromtimestamp(s, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.")
            u = k % users
            chunk.append((f"u{u}", format_id(ms, 0), "notification", BODY % (k, prefix, millis, u, k, k),
                          k // users < read_below, ms))
            if len(chunk) == CHUNK:
                if stop is not None and stop.is_set():
                    raise RuntimeError("fill stopped")
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def check_body(self) -> None:
        """The bodies are byte for byte what notifier stores for such a publish."""
        from notifier.core.notification import encode_fields
        from notifier.validation import validate_publish

        first = next(self.rows())[0]
        ts = first[3].split('"ts":"')[1].split('"')[0]
        fields = validate_publish({"user_id": "u0", "title": "New comment",
                                   "message": "Someone commented on your post #0",
                                   "data": {"post": 0, "url": "/posts/0"}}, ts)
        fields.pop("inbox", None)
        want = encode_fields(fields).decode()
        if first[3] != want:
            raise AssertionError(f"bench body {first[3]} is not notifier's {want}")


def init_schema(url: str, per_user: int) -> None:
    """notifier's own tables, as the server would make them."""
    from notifier.inbox.store import InboxStore, engine_for

    engine = engine_for(url)
    try:
        InboxStore(engine, ttl_days=90, size=per_user).init()
    finally:
        engine.dispose()


def fill_sqlite(path: str, plan: Plan, stop: threading.Event) -> dict:
    """executemany, a transaction per chunk, with no journal while loading (a failed load is
    thrown away anyway), then back to the WAL the server uses."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-2000000")  # 2 GB: the indexes stay in memory while loading
        t0 = time.monotonic()
        for chunk in plan.rows(stop):
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO notifier_inbox (user_id, id, type, body, read, created_ms) "
                             "VALUES (?, ?, ?, ?, ?, ?)", chunk)
            conn.execute("COMMIT")
        load_s = time.monotonic() - t0
        conn.execute("PRAGMA journal_mode=WAL")
        count = conn.execute("SELECT count(*) FROM notifier_inbox").fetchone()[0]
    finally:
        conn.close()
    return {"rows": count, "load_s": round(load_s, 1), "after_s": 0.0, "bytes": os.path.getsize(path)}


def fill_postgres(pg, plan: Plan, stop: threading.Event) -> dict:
    """COPY in one transaction, then VACUUM ANALYZE (what autovacuum would have done by the
    time a table is this big: planner statistics, hint bits, the visibility map)."""
    with pg.connect() as conn:
        t0 = time.monotonic()
        with conn.transaction(), conn.cursor() as cur:
            with cur.copy("COPY notifier_inbox (user_id, id, type, body, read, created_ms) FROM STDIN") as copy:
                for chunk in plan.rows(stop):
                    copy.write("".join(f"{u}\t{i}\t{t}\t{body}\t{'t' if r else 'f'}\t{ms}\n"
                                       for u, i, t, body, r, ms in chunk))
        load_s = time.monotonic() - t0
        t1 = time.monotonic()
        conn.execute("VACUUM (ANALYZE) notifier_inbox")
        conn.execute("CHECKPOINT")
        after_s = time.monotonic() - t1
        count = conn.execute("SELECT count(*) FROM notifier_inbox").fetchone()[0]
        size = conn.execute("SELECT pg_total_relation_size('notifier_inbox')").fetchone()[0]
    return {"rows": count, "load_s": round(load_s, 1), "after_s": round(after_s, 1), "bytes": size}


def fill(store: str, url: str, plan: Plan, pg=None, stop: threading.Event | None = None) -> dict:
    """Create the tables and load ``plan``'s rows; what it took."""
    b.log(f"{store}: filling {plan.users:,} users × {plan.per_user:,} = {plan.total:,} notifications")
    plan.check_body()
    init_schema(url, plan.per_user)
    stop = stop or threading.Event()
    out = fill_sqlite(url.split("sqlite:///", 1)[1], plan, stop) if store == "sqlite" else fill_postgres(pg, plan, stop)
    if out["rows"] != plan.total:
        raise AssertionError(f"{store}: {out['rows']} rows loaded, {plan.total} planned")
    b.log(f"{store}: {out['rows']:,} rows in {out['load_s']} s (+ {out['after_s']} s vacuum/analyze), "
          f"{out['bytes'] / 1e9:.2f} GB")
    return out
