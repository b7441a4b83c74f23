"""One app's notifier: its settings, hub and broker, and the operations the routes share."""
from __future__ import annotations

import json
import logging
import weakref
from typing import Any, Callable

from . import metrics
from .auth import check_topic_access
from .broker import create_broker
from .config import Settings
from .errors import InvalidNotification, NotifierError
from .hub import RESTART, Hub, Subscriber
from .notification import BROADCAST, Notification, encode_fields, now_iso, parse_id, target_key
from .validation import check_topic, validate_publish

log = logging.getLogger(__name__)

Identify = Callable[[], Any]

STATES: "weakref.WeakSet[State]" = weakref.WeakSet()
"""Every State of this process, so a gunicorn hook can start and stop them all."""


class State:
    """Lives in ``app.extensions["notifier"]``; one per Flask app."""

    def __init__(self, settings: Settings, identify: Identify | None = None) -> None:
        self.settings = settings
        self.hub = Hub(settings.queue_size, settings.flush_interval, on_flush=metrics.written)
        self.broker = create_broker(settings)
        self.identify = identify
        self.started = False
        STATES.add(self)

    def start(self) -> None:
        """Connect the broker to this worker's hub (idempotent; cheap to call per request)."""
        if not self.started:
            self.started = True
            self.broker.start(self.hub.dispatch, self._gap)
            metrics.watch(self.hub, self.broker)
            log.info("notifier started: %s", type(self.broker).__name__)

    def _gap(self) -> None:
        # The broker lost its place: every connection resumes from its own last id.
        self.hub.close_all(RESTART, "history moved on: reconnect and resume", final=False)

    def stop(self) -> None:
        self.hub.close_all()
        self.broker.stop()

    def publish_payload(self, payload: Any, publisher: str | None = None, *, start: bool = True) -> str:
        """Validate and publish one notification; returns its id once it is in history.

        A ``publisher`` is held to the publish rate (TooManyRequests when over it).
        ``start=False`` publishes without following the broker (a CLI process has no
        subscribers of its own).
        """
        fields = validate_publish(payload)
        if start:
            self.start()
        notification_id = self.broker.publish(target_key(fields), fields["type"], encode_fields(fields), publisher)
        metrics.published()
        return notification_id

    def resume(self, keys: set[str], last_id: str | None) -> tuple[list[Notification], str | None]:
        """What a connection resuming after ``last_id`` gets first, and the floor for live ones.

        Call after subscribing: live notifications up to the floor are already covered by
        this answer, so the transport skips them (no gap, no duplicate at the hand-over).
        Without ``last_id`` there is nothing to replay. If ``last_id`` is no longer in
        history the answer is a single ``notifier.reset``.
        """
        if last_id is None:
            return [], None
        missed = self.broker.history(last_id)
        if missed is None:
            # The reset carries the newest id, so a reconnect resumes from there; with an
            # empty history, the stale id itself, so a reconnect is reset again (never "").
            newest = self.broker.newest_id()
            metrics.resumed(0, reset=True)
            return [reset_notification(newest or last_id, last_id)], newest
        entitled = [n for n in missed if n.target in keys]
        metrics.resumed(len(entitled), reset=False)
        return entitled, (missed[-1].id if missed else last_id)

    def identify_user(self) -> str | None:
        """The host app's user for this request, through its ``identify`` hook, if any."""
        if self.identify is None:
            return None
        user = self.identify()
        return None if user is None else str(user)

    def handle_client_message(self, sub: Subscriber, raw: Any) -> dict[str, Any]:
        """Answer one WebSocket client message: an ack, or an error (the connection stays)."""
        try:
            if not isinstance(raw, str):
                return {"error": "binary messages are not supported; send JSON text"}
            try:
                message = json.loads(raw)
            except (ValueError, RecursionError):
                return {"error": "message is not valid JSON"}
            if not isinstance(message, dict):
                return {"error": "message must be a JSON object"}
            action = message.get("action")
            if action not in ("subscribe", "unsubscribe"):
                return {"error": "action must be 'subscribe' or 'unsubscribe'"}
            if action == "subscribe":
                topic = check_topic_access(message.get("topic"), sub.grant)
                topics = len(sub.keys) - 1 - (sub.user_id is not None)  # less broadcast and user keys
                if topic not in sub.keys and topics >= self.settings.max_topics:
                    return {"error": f"too many topics: at most {self.settings.max_topics} (NOTIFIER_MAX_TOPICS)"}
                self.hub.add_topic(sub, topic)
            else:
                topic = check_topic(message.get("topic"))
                self.hub.remove_topic(sub, topic)
            return {"ack": action, "topic": topic}
        except NotifierError as exc:
            return {"error": exc.message}


def check_last_id(value: str | None) -> str | None:
    """A client's resume point, or InvalidNotification if it is not an id we issued."""
    if value is None or value == "":
        return None
    try:
        parse_id(value)
    except ValueError:
        raise InvalidNotification("last event id is not a notification id") from None
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
