"""The inbox in SQL: every user's notifications, kept beyond history, with read state.

History is a stream capped in size and age, made for resuming; the inbox is the bell's list:
a row per (user, notification) in one table, through SQLAlchemy Core, so it works on the
SQLite file of a laptop and on the PostgreSQL Heroku gives, and, in a host app, on the
app's own Flask-SQLAlchemy database and transaction.

Retention needs no cron job: writes trim the users they wrote to down to
NOTIFIER_INBOX_SIZE (every tenth of it, see TRIM_SHARE), and at most once a minute a write
also drops every row older than NOTIFIER_INBOX_TTL days; reads never show an expired row.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from sqlalchemy import (BigInteger, Boolean, Column, Index, Integer, MetaData, String, Table, Text, and_, create_engine,
                        delete, event, func, insert, select, update)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from ..errors import BrokerUnavailable, ConfigError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
"""What ``init`` creates; a database of a later version is refused, an older one migrated."""
SWEEP_EVERY = 60.0
"""Seconds between drops of expired rows (NOTIFIER_INBOX_TTL), done by a write."""
TRIM_SHARE = 10
"""A user's inbox is trimmed once every NOTIFIER_INBOX_SIZE / TRIM_SHARE writes of this
process to it (every write when the size is under TRIM_SHARE): a trim reads the user's
newest SIZE rows, and doing it on every write made a batch to many users cost 12-21 times
one without the inbox. So an inbox holds up to SIZE plus a tenth for a while."""
MAX_COUNTED = 100_000
"""Users whose writes since their last trim this process remembers; beyond, it starts over."""

metadata = MetaData()
"""notifier's tables, for a host app's migrations (Alembic: include it in target_metadata)."""

inbox = Table(
    "notifier_inbox", metadata,
    Column("user_id", String(128), primary_key=True),
    Column("id", String(32), primary_key=True),  # the notification id: sorts as text, oldest first
    Column("type", String(64), nullable=False),
    Column("body", Text, nullable=False),  # the notification's fields as JSON, as published
    Column("read", Boolean, nullable=False, default=False),
    Column("created_ms", BigInteger, nullable=False),
    Index("notifier_inbox_created", "created_ms"),
    # The unread count reads only this index: a user's unread, unexpired rows, not all of them.
    Index("notifier_inbox_unread", "user_id", "read", "created_ms"),
)

schema = Table("notifier_inbox_schema", metadata, Column("version", Integer, nullable=False))


@dataclass(frozen=True)
class Row:
    """One notification for one user's inbox."""

    user_id: str
    id: str
    type: str
    body: str
    created_ms: int


@dataclass(frozen=True)
class Page:
    rows: list[dict[str, Any]]  # newest first: id, type, body (JSON text), read
    unread: int
    more: bool


def sqlalchemy_url(url: str) -> str:
    """A database URL as Heroku writes it (``postgres://``) or plain ``postgresql://``, for
    SQLAlchemy with psycopg 3 (the driver notifier installs); others as they are. A host
    app can give its Flask-SQLAlchemy ``DATABASE_URL`` the same way."""
    for scheme in ("postgres://", "postgresql://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme):]
    return url


def engine_for(url: str) -> Engine:
    """An engine for NOTIFIER_INBOX_URL (see ``sqlalchemy_url``); a SQLite file waits for its
    lock instead of failing, and writes through a WAL so readers are not blocked."""
    url = sqlalchemy_url(url)
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": 10, "check_same_thread": False})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = create_engine(url, pool_pre_ping=True, pool_timeout=5, pool_size=10, max_overflow=20)
    except (SQLAlchemyError, ValueError, ImportError) as exc:
        raise ConfigError("NOTIFIER_INBOX_URL", f"is not a database URL SQLAlchemy can use ({exc})") from None
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def unavailable(exc: Exception) -> BrokerUnavailable:
    log.warning("inbox database unavailable: %s", exc)
    return BrokerUnavailable("inbox database unavailable: retry later")


class InboxStore:
    """Reads and writes one database's inbox table (``engine``: where it is)."""

    def __init__(self, engine: Engine | Callable[[], Engine], ttl_days: int, size: int) -> None:
        self._engine = engine  # or how to get it once an app context is there (Flask-SQLAlchemy's db.engine)
        self.ttl_ms = ttl_days * 86_400_000
        self.size = size
        self._ready = False
        self._lock = threading.Lock()
        self._next_sweep = 0.0
        self._writes: dict[str, int] = {}  # writes to each user since its last trim (TRIM_SHARE)

    @property
    def engine(self) -> Engine:
        if not isinstance(self._engine, Engine):
            self._engine = self._engine()
        return self._engine

    # -- schema ----------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._ready

    def init(self, conn: Connection | None = None) -> int:
        """Create the tables if missing, and record the schema version; returns it. Idempotent.
        In ``conn``'s transaction if given."""
        if conn is None:
            with self.engine.begin() as own:
                return self.init(own)
        metadata.create_all(conn, checkfirst=True)
        version = conn.execute(select(func.max(schema.c.version))).scalar()
        if version is None:
            conn.execute(insert(schema).values(version=SCHEMA_VERSION))
            version = SCHEMA_VERSION
        if version > SCHEMA_VERSION:
            raise ConfigError("NOTIFIER_INBOX_URL", f"the inbox tables are at schema version {version}, newer than "
                              f"this notifier's {SCHEMA_VERSION}: upgrade notifier")
        self._ready = True
        return version

    def _ensure(self) -> None:
        """The tables exist (made on first use, so trying it needs no extra step)."""
        if not self._ready:
            with self._lock:
                if not self._ready:
                    self.init()

    # -- writes ----------------------------------------------------------------------------------
    def add(self, rows: Sequence[Row], conn: Connection | None = None) -> None:
        """Store ``rows`` (one multi-row insert; rows already there, a replayed publish, are
        left as they are), then trim their users. In ``conn``'s transaction if given."""
        if not rows:
            return
        self._ensure()
        try:
            if conn is not None:
                self._add(conn, rows)
            else:
                with self.engine.begin() as own:
                    self._add(own, rows)
        except SQLAlchemyError as exc:
            raise unavailable(exc) from exc

    def _add(self, conn: Connection, rows: Sequence[Row]) -> None:
        values = [{"user_id": r.user_id, "id": r.id, "type": r.type, "body": r.body, "read": False,
                   "created_ms": r.created_ms} for r in rows]
        dialect = conn.dialect.name
        if dialect in ("postgresql", "sqlite"):
            if dialect == "postgresql":
                from sqlalchemy.dialects.postgresql import insert as dialect_insert
            else:
                from sqlalchemy.dialects.sqlite import insert as dialect_insert
            conn.execute(dialect_insert(inbox).on_conflict_do_nothing(), values)
        else:  # another database: skip the rows already there, then insert
            have = {(u, i) for u, i in conn.execute(select(inbox.c.user_id, inbox.c.id).where(
                inbox.c.id.in_({r.id for r in rows})))}
            values = [v for v in values if (v["user_id"], v["id"]) not in have]
            if values:
                conn.execute(insert(inbox), values)
        for user_id in self._due_for_trim(rows):
            self._trim(conn, user_id)
        if time.monotonic() >= self._next_sweep:
            conn.execute(delete(inbox).where(inbox.c.created_ms < self._cutoff()))
            self._next_sweep = time.monotonic() + SWEEP_EVERY  # not before: a failed sweep is tried again

    def _due_for_trim(self, rows: Sequence[Row]) -> list[str]:
        """The users of ``rows`` whose writes since their last trim reach SIZE / TRIM_SHARE."""
        every = max(1, self.size // TRIM_SHARE)
        due = []
        with self._lock:
            if len(self._writes) > MAX_COUNTED:
                self._writes.clear()
            for row in rows:
                count = self._writes.get(row.user_id, 0) + 1
                if count >= every:
                    count = 0
                    due.append(row.user_id)
                self._writes[row.user_id] = count
        return list(dict.fromkeys(due))

    def _trim(self, conn: Connection, user_id: str) -> None:
        """Keep the user's newest ``size`` rows."""
        oldest_kept = (select(inbox.c.id).where(inbox.c.user_id == user_id).order_by(inbox.c.id.desc())
                       .limit(1).offset(self.size - 1).scalar_subquery())
        conn.execute(delete(inbox).where(inbox.c.user_id == user_id, inbox.c.id < oldest_kept))

    def rename(self, user_id: str, old_id: str, new_id: str) -> None:
        """Give a row written before its notification had an id (``publish_after_commit``) its id."""
        self._ensure()
        try:
            with self.engine.begin() as conn:
                conn.execute(update(inbox).where(inbox.c.user_id == user_id, inbox.c.id == old_id).values(id=new_id))
        except SQLAlchemyError as exc:
            raise unavailable(exc) from exc

    def mark_read(self, user_id: str, ids: Iterable[str] | None) -> tuple[int, list[str]]:
        """Mark ``ids`` (None: all) of the user read: (the unread count after, the ids not in
        the user's inbox). Any id not there: nothing is changed."""
        self._ensure()
        try:
            with self.engine.begin() as conn:
                mine = and_(inbox.c.user_id == user_id, inbox.c.created_ms >= self._cutoff())
                if ids is None:
                    conn.execute(update(inbox).where(mine, inbox.c.read.is_(False)).values(read=True))
                else:
                    wanted = list(dict.fromkeys(ids))
                    have = {i for (i,) in conn.execute(select(inbox.c.id).where(mine, inbox.c.id.in_(wanted)))}
                    missing = [i for i in wanted if i not in have]
                    if missing:
                        return self._unread(conn, user_id), missing
                    conn.execute(update(inbox).where(mine, inbox.c.read.is_(False), inbox.c.id.in_(wanted))
                                 .values(read=True))
                return self._unread(conn, user_id), []
        except SQLAlchemyError as exc:
            raise unavailable(exc) from exc

    def remove(self, user_id: str, notification_id: str) -> int | None:
        """Delete one of the user's notifications: the unread count after, or None if the user has no such one."""
        self._ensure()
        try:
            with self.engine.begin() as conn:
                gone = conn.execute(delete(inbox).where(inbox.c.user_id == user_id, inbox.c.id == notification_id,
                                                        inbox.c.created_ms >= self._cutoff())).rowcount
                return self._unread(conn, user_id) if gone else None
        except SQLAlchemyError as exc:
            raise unavailable(exc) from exc

    # -- reads -----------------------------------------------------------------------------------
    def page(self, user_id: str, limit: int, before: str | None = None) -> Page:
        """The user's notifications, newest first, ``limit`` of them older than ``before``."""
        self._ensure()
        try:
            with self.engine.connect() as conn:
                where = [inbox.c.user_id == user_id, inbox.c.created_ms >= self._cutoff()]
                if before is not None:
                    where.append(inbox.c.id < before)
                found = conn.execute(select(inbox.c.id, inbox.c.type, inbox.c.body, inbox.c.read).where(*where)
                                     .order_by(inbox.c.id.desc()).limit(limit + 1)).all()
                rows = [{"id": r.id, "type": r.type, "body": r.body, "read": bool(r.read)} for r in found[:limit]]
                return Page(rows, self._unread(conn, user_id), len(found) > limit)
        except SQLAlchemyError as exc:
            raise unavailable(exc) from exc

    def unread(self, user_id: str) -> int:
        self._ensure()
        try:
            with self.engine.connect() as conn:
                return self._unread(conn, user_id)
        except SQLAlchemyError as exc:
            raise unavailable(exc) from exc

    def _unread(self, conn: Connection, user_id: str) -> int:
        return int(conn.execute(select(func.count()).select_from(inbox).where(
            inbox.c.user_id == user_id, inbox.c.read.is_(False), inbox.c.created_ms >= self._cutoff())).scalar() or 0)

    def _cutoff(self) -> int:
        return int(time.time() * 1000) - self.ttl_ms
