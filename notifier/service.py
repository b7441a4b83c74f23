"""One app's notifier, without the web: its hub and broker, publishing, resuming, and the
subscribe policy (who may attach, and how many). The Flask views and the CLI call it.
"""
from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterable

from . import metrics
from .brokers import create_broker
from .config import Settings
from .core.closing import RESTART
from .core.hub import Hub
from .core.presence import PresenceRules
from .core.notification import BROADCAST, DISCONNECT, Notification, disconnect_fields, encode_fields, format_id, now_iso, parse_id, \
    target_key, user_key
from .core.subscriber import Subscriber, entitled_keys
from .brokers.base import Entry
from .errors import BrokerUnavailable, InvalidNotification, NotifierError, NotKept, PayloadTooLarge, TooManyRequests, \
    WorkerFull
from .idempotency import Published, idempotency
from .runtime import Runtime, detect
from .validation import user_id_of, validate_batch, validate_publish

if TYPE_CHECKING:
    from .inbox.store import InboxStore
    from .transports.socket_writer import SocketWriter

log = logging.getLogger(__name__)

SERVICES: "weakref.WeakSet[Service]" = weakref.WeakSet()
"""Every Service of this process, so a gunicorn hook can start and stop them all."""

Listener = Callable[[dict[str, Any], str], None]


class Service:
    """Lives in ``app.extensions["notifier"]``: one per Flask app."""

    def __init__(self, settings: Settings, runtime: Runtime | None = None) -> None:
        self.settings = settings
        self.runtime = runtime or detect()
        self.hub = Hub(self.runtime, settings.flush_interval, on_flush=metrics.written)
        self.broker = create_broker(settings, self.runtime)
        self.presence = self.broker.presence(PresenceRules(settings.presence_events), self.hub, self._presence_event)
        self.hub.presence = self.presence
        self.broker.follow_keys(self.hub)
        self.started = False
        self.listeners: list[Listener] = []  # told (fields, id) of each publish: notifier.testing
        self.identify: Callable[[], Any] | None = None  # the host app's hook: who the user is
        self.own_identify = False  # given to init_app for this app alone
        self.body_readers = 0  # publish bodies being read now (flask.body caps them)
        self.inbox: InboxStore | None = None
        self.inbox_session: Any = None  # the host app's SQLAlchemy session, for publish_after_commit
        if settings.inbox_url:
            self.use_inbox(settings.inbox_url)
        SERVICES.add(self)

    def use_inbox(self, engine: Any) -> None:
        """Keep users' notifications in the database at ``engine`` (a URL, an Engine, or a
        callable giving one once an app context is there). SQLAlchemy loads only then."""
        from .inbox.store import InboxStore, engine_for

        settings = self.settings
        self.inbox = InboxStore(engine_for(engine) if isinstance(engine, str) else engine,
                                settings.inbox_ttl, settings.inbox_size)

    def start(self) -> None:
        """Connect the broker to this worker's hub (idempotent; cheap to call per request)."""
        if not self.started:
            self.started = True
            self.broker.start(self.hub.dispatch, self._gap, self.hub.wants)
            self.presence.start()
            metrics.watch(self.hub, self.broker)
            log.info("notifier started: %s broker, %s runtime", type(self.broker).__name__, self.runtime.name)

    def _gap(self, lost_at: float) -> None:
        # The broker lost its place: every connection that attached before then resumes
        # from its own last id (later ones already did, from history as it is now; closing
        # them again would only make them resume twice).
        self.hub.close_all(RESTART, "history moved on: reconnect and resume", final=False, attached_before=lost_at)

    def stop(self) -> None:
        self.hub.close_all()
        self.broker.stop()
        self.presence.stop()

    def _presence_event(self, kind: str, topic: str, user_id: str) -> None:
        """A join or leave for ``topic``'s subscribers, through the broker (not kept)."""
        fields = {"type": kind, "title": "", "message": "", "ts": now_iso(), "topic": topic, "data": {"user_id": user_id}}
        try:
            self.broker.publish([(topic, kind, encode_fields(fields))])
        except NotifierError as exc:  # presence stays right; only this event is missed
            log.warning("presence event not sent: %s", exc)

    def publish(self, payload: Any, publisher: str | None = None, *, start: bool = True,
                idempotency_key: str | None = None, ts: str | None = None) -> Published:
        """Validate and publish one notification (an object) or a batch (a list of 1 to
        MAX_BATCH of them, all stored or none); returns the ids once they are in history.

        The first invalid item of a batch raises its error with its ``index``. A
        ``publisher`` is held to the publish rate (TooManyRequests when over it). With an
        ``idempotency_key`` seen before from the same publisher, nothing is published again
        and the first ids come back (``replayed``). ``start=False`` publishes as a client
        of the broker, not as a server: without following it (a CLI process has no
        subscribers of its own) and without counting it in ``notifier_published_total``
        (which counts what servers accepted; nothing scrapes a CLI process, and this keeps
        prometheus_client out of it). ``ts``: the time to stamp (default: now), for a
        notification kept before it was published (``publish_after_commit``).
        """
        items = validate_batch(payload, ts) if isinstance(payload, list) else [validate_publish(payload, ts)]
        once = idempotency(idempotency_key, publisher, items, self.settings.idempotency_ttl)
        kept = [fields.pop("inbox", True) and "user_id" in fields for fields in items]
        entries = [self._entry(fields, i if isinstance(payload, list) else None) for i, fields in enumerate(items)]
        if start:
            self.start()
        published = self.broker.publish(entries, publisher, once)
        if self.inbox is not None and any(kept):
            # After the broker gave the ids (they are the inbox's too); a replay stores what
            # is missing, so the retry of a NotKept keeps it once.
            self._keep([(fields, entry, i) for fields, entry, i, keep in zip(items, entries, published.ids, kept)
                        if keep])
        if not published.replayed:
            if start:
                metrics.published(len(items))
            for listener in list(self.listeners):
                for fields, notification_id in zip(items, published.ids):
                    listener(fields, notification_id)
        return published

    def _keep(self, published: list[tuple[dict[str, Any], Entry, str]]) -> None:
        from .inbox.store import Row

        rows = [Row(fields["user_id"], notification_id, fields["type"], entry[2].decode(), parse_id(notification_id)[0])
                for fields, entry, notification_id in published]
        try:
            self.inbox.add(rows)  # type: ignore[union-attr]
        except BrokerUnavailable as exc:
            raise NotKept("published, but the inbox database did not store it: not accepted; retry with the same "
                          "Idempotency-Key to keep it once") from exc

    def inbox_changed(self, user_id: str, kind: str, ids: list[str] | str, unread: int) -> None:
        """Tell every connection of the user, on every worker and host, that its inbox
        changed (``notifier.read`` / ``notifier.deleted``), so other tabs update at once."""
        fields = {"type": kind, "title": "", "message": "", "ts": now_iso(), "user_id": user_id,
                  "data": {"ids": ids, "unread": unread}}
        try:
            self.broker.publish([(user_key(user_id), kind, encode_fields(fields))])
        except NotifierError as exc:  # the change is made; other tabs see it when they reconnect
            log.warning("inbox change not sent to the user's connections: %s", exc)

    def disconnect(self, user_id: Any, publisher: str | None = None, *, start: bool = True) -> str:
        """End every open connection of ``user_id`` on every worker and host (WebSocket 4001,
        SSE a last ``notifier.disconnect`` event); returns the id of the entry that carries it.

        It goes through the broker like a notification (held to the publish rate), so a
        worker that was away from Redis still gets it when it catches up; history skips it.
        """
        user = user_id_of(user_id)
        fields = {**disconnect_fields(), "user_id": user}
        if start:
            self.start()
        return self.broker.publish([(user_key(user), DISCONNECT, encode_fields(fields))], publisher).id

    def _entry(self, fields: dict[str, Any], index: int | None) -> Entry:
        """What the broker stores for one notification; each keeps NOTIFIER_MAX_MESSAGE_BYTES."""
        try:
            encoded = encode_fields(fields)
        except InvalidNotification as exc:
            raise (exc.at(index) if index is not None else exc) from None
        limit = self.settings.max_message_bytes
        if index is not None and len(encoded) > limit:
            raise PayloadTooLarge(f"notification larger than {limit} bytes (NOTIFIER_MAX_MESSAGE_BYTES)").at(index)
        return target_key(fields), fields["type"], encoded

    def check_room(self, user_id: str | None) -> None:
        """Refuse a new subscriber this worker has no room for (503) or a user with too many (429)."""
        settings = self.settings
        if len(self.hub) >= settings.max_subscribers:
            raise WorkerFull(f"this worker is full ({settings.max_subscribers} subscribers): retry, or add workers")
        if user_id is not None and self.hub.user_connections(user_id) >= settings.max_connections_per_user:
            raise TooManyRequests(f"too many connections for this user: at most {settings.max_connections_per_user} "
                                  "(NOTIFIER_MAX_CONNECTIONS_PER_USER)")

    def writer(self, wire: str, expires_at: float | None = None) -> SocketWriter:
        """A new connection's writer: its send queue, sized by NOTIFIER_QUEUE_SIZE."""
        from .transports.socket_writer import SocketWriter  # with the first connection: a CLI makes none

        return SocketWriter(self.runtime, self.settings.queue_size, wire, expires_at)

    def attach(self, writer: SocketWriter, transport: str, user_id: str | None, topics: Iterable[str],
               grant: Any, last_id: str | None) -> tuple[Subscriber, list[Notification], str | None]:
        """Subscribe, then resume: (the subscriber, what it missed, the floor for live ones).

        Subscribing first means nothing published meanwhile is missed; live ones up to
        the floor are covered by the replay, so the writer skips them. If reading
        history fails, the subscriber is released and the error raised.
        """
        topics = list(topics)
        # Before it attaches: no notification published after this is below it.
        fresh_floor = self.broker.live_floor(entitled_keys(user_id, topics)) if last_id is None else None
        sub = self.hub.subscribe(writer, transport, user_id, topics, grant)
        try:
            replay, floor = self.resume(sub.keys, last_id)
            floor = floor or fresh_floor
        except BaseException:
            self.hub.unsubscribe(sub)
            raise
        return sub, replay, floor

    def resume(self, keys: set[str], last_id: str | None) -> tuple[list[Notification], str | None]:
        """What a connection resuming after ``last_id`` gets first, and the floor for live ones.

        Without ``last_id`` there is nothing to replay. A ``last_id`` that cannot be resumed
        from (no longer in history, Redis restarted empty, ahead of history, or not an id
        of ours at all) gets a ``notifier.reset`` first — never an error, which a browser's
        EventSource would take as the end — and then every notification history still
        holds after it: what was accepted after Redis restarted empty is never skipped.
        """
        if last_id is None:
            return [], None
        valid = is_id(last_id)
        missed = self.broker.history(last_id) if valid else None
        if missed is not None:
            entitled = [n for n in missed if n.target in keys]
            metrics.resumed(len(entitled), reset=False)
            return entitled, (missed[-1].id if missed else last_id)
        kept = self.broker.history(None) or []
        newer = [n for n in kept if n.id > last_id] if valid else []
        newest = kept[-1].id if kept else None
        # The reset's id is where the client's resume point moves to: just before what is
        # replayed after it (clients drop ids at or below their resume point).
        reset_id = last_id if newer else (newest or (last_id if valid else format_id(0, 0)))
        entitled = [n for n in newer if n.target in keys]
        metrics.resumed(len(entitled), reset=True)
        return [reset_notification(reset_id, last_id[:MAX_ECHOED_ID]), *entitled], newest


MAX_ECHOED_ID = 256
"""Characters of a client's unusable resume point echoed back in its reset."""


def is_id(value: str) -> bool:
    try:
        parse_id(value)
    except ValueError:
        return False
    return True


def check_last_id(value: str | None) -> str | None:
    """A client's resume point, or InvalidNotification if it is not an id we issued."""
    if value is None or value == "":
        return None
    if not is_id(value):
        raise InvalidNotification("last event id is not a notification id")
    return value


def reset_notification(newest: str, last_id: str) -> Notification:
    """Tells a client its resume point is gone: refetch state, then follow live from ``newest``."""
    fields = {
        "type": "notifier.reset",
        "title": "",
        "message": "history no longer holds the last event id: refetch state",
        "ts": now_iso(),
        "data": {"last_event_id": last_id},
    }
    return Notification(newest, BROADCAST, "notifier.reset", encode_fields(fields))
