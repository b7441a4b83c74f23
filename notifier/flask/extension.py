"""``Notifier``: the Flask extension, for the standalone app and for drop-in use.

Flask's extension pattern: ``Notifier(app)``, or ``Notifier()`` and ``init_app(app)`` in
an app factory. Each app gets its own ``Service`` (hub, broker, hooks) in
``app.extensions["notifier"]``, never on ``self``; ``publish()`` and ``issue_token()``
work on the current app (or the only one this extension was given).
"""
from __future__ import annotations

import logging
import weakref
from typing import Any, Callable

from flask import Flask, current_app, has_app_context

from ..config import Settings
from ..errors import NotifierError
from ..service import Service
from ..tokens import DEFAULT_TTL, issue_token
from ..validation import check_topic, user_id_of
from .blueprint import create_blueprint

log = logging.getLogger(__name__)

Identify = Callable[[], Any]


class Notifier:
    """Real-time notifications for a Flask app: routes, publishing, and who the user is."""

    def __init__(self, app: Flask | None = None, *, url_prefix: str | None = None,
                 identify: Identify | None = None, inbox: Any = None) -> None:
        self._identify = identify
        self._inbox = inbox
        self._services: "weakref.WeakSet[Service]" = weakref.WeakSet()
        if app is not None:
            self.init_app(app, url_prefix=url_prefix)

    def init_app(self, app: Flask, url_prefix: str | None = None, *, identify: Identify | None = None,
                 standalone: bool = False, inbox: Any = None) -> None:
        """Mount the routes (under ``url_prefix``) and give ``app`` its own hub, broker and hooks.

        ``identify``: this app's own hook; without one, the app uses the extension's
        (``Notifier(identify=...)`` or ``@notifier.identify``). ``inbox``: the app's
        Flask-SQLAlchemy ``db`` (or an SQLAlchemy Engine), to keep users' notifications in
        the app's own database; without it, NOTIFIER_INBOX_URL says where, if anywhere.
        """
        settings = Settings.load(app.config, standalone=standalone)
        service = Service(settings)
        service.identify = identify or self._identify
        service.own_identify = identify is not None
        inbox = inbox if inbox is not None else self._inbox
        if inbox is not None:
            # Flask-SQLAlchemy's engine exists within an app context: taken at first use.
            service.use_inbox((lambda: inbox.engine) if hasattr(inbox, "session") else inbox)
            service.inbox_session = getattr(inbox, "session", None)
        app.extensions["notifier"] = service
        app.register_blueprint(create_blueprint(settings), url_prefix=url_prefix)
        self._services.add(service)
        inbox_in = ("the app's database" if inbox is not None else
                    settings.inbox_url.split(":", 1)[0] if settings.inbox_url else None)  # the scheme: no password
        log.info("notifier on %s: %s broker%s, %s runtime%s", app.name, "Redis" if settings.redis_url else "in-process",
                 f" from {settings.redis_url_key}" if settings.redis_url else "", service.runtime.name,
                 f", inbox in {inbox_in}" if inbox_in else "")

    def identify(self, hook: Identify) -> Identify:
        """Decorator: ``hook()`` returns the current user's id (or None) from the host app's session.

        It serves every app of this extension that was not given a hook of its own in ``init_app``.
        """
        self._identify = hook
        for service in list(self._services):
            if not service.own_identify:
                service.identify = hook
        return hook

    def publish(self, title: str | None = None, message: str | None = None, *, type: str | None = None,
                user_id: str | int | None = None, topic: str | None = None, data: dict | None = None,
                idempotency_key: str | None = None, inbox: bool = True) -> str:
        """Publish from Python code, with the same rules as ``POST /notify``; returns the id.

        Raises ``InvalidNotification`` for bad fields and ``BrokerUnavailable`` when the
        broker did not take it (nothing was published: retry, with the same
        ``idempotency_key`` if one was given, and it is published once). With the inbox on,
        a notification for a ``user_id`` is kept in it unless ``inbox=False``.
        """
        payload = _payload(title, message, type, user_id, topic, data, inbox)
        return self.service().publish(payload, idempotency_key=idempotency_key).id

    def publish_after_commit(self, title: str | None = None, message: str | None = None, *, user_id: str | int,
                             type: str | None = None, data: dict | None = None, session: Any = None) -> None:
        """Keep a notification for ``user_id`` in the inbox within the app's current database
        transaction, and publish it once that transaction commits (the outbox pattern): a
        rollback drops both the app's change and the notification. ``session``: the
        SQLAlchemy session (default: the ``db.session`` given as ``inbox``)."""
        from ..inbox.outbox import publish_after_commit

        service = self.service()
        session = session if session is not None else getattr(service, "inbox_session", None)
        if service.inbox is None or session is None:
            raise NotifierError("publish_after_commit needs the inbox in the app's database: Notifier(app, inbox=db)")
        publish_after_commit(service, session, _payload(title, message, type, user_id, None, data, True))

    def publish_many(self, notifications: list[dict[str, Any]], *, idempotency_key: str | None = None) -> list[str]:
        """Publish a batch (dicts with the fields of ``POST /notify``), all or none; their ids.

        Raises ``InvalidNotification`` (with ``index``, the first bad item) and nothing is
        published, or ``BrokerUnavailable`` (nothing was published).
        """
        return self.service().publish(list(notifications), idempotency_key=idempotency_key).ids

    def disconnect(self, user_id: str | int) -> None:
        """End every open connection of ``user_id`` on every worker and host, within a
        second (a logout, a revoked permission); ``notifier.js`` and
        ``notifier.client.subscribe`` do not reconnect after it. New connections are judged
        by the app's session or token as usual. Raises ``BrokerUnavailable`` when the
        broker did not take it: retry."""
        self.service().disconnect(user_id)

    def presence(self, topic: str, limit: int = 1000) -> dict[str, Any]:
        """Who is on ``topic``, across every worker and host: ``{"topic", "users" (sorted, at
        most ``limit``), "connections"}``. Identified connections count, and anonymous ones
        on topics with presence events (NOTIFIER_PRESENCE_EVENTS)."""
        return self.service().presence.topic(check_topic(topic), limit)

    def online(self, user_id: str | int) -> int:
        """How many connections ``user_id`` has open, across every worker and host (0: offline)."""
        return self.service().presence.online(user_id_of(user_id))

    def issue_token(self, user_id: str | int, topics: tuple[str, ...] | list[str] = (), ttl: int = DEFAULT_TTL) -> str:
        """A subscriber token for ``user_id`` granting private ``topics``, signed with NOTIFIER_SECRET."""
        return issue_token(self.service().settings.secret, user_id, topics, ttl)

    def service(self) -> Service:
        """The current app's notifier; outside an app context, the only app this extension serves."""
        if has_app_context():
            service = current_app.extensions.get("notifier")
            if service is not None:
                return service
        services = list(self._services)
        if len(services) == 1:
            return services[0]
        if not services:
            raise NotifierError("Notifier is not initialised: call Notifier(app) or notifier.init_app(app) first")
        raise NotifierError("this Notifier serves several apps: call it inside an app context "
                            "(with app.app_context(): ...) to say which")


def _payload(title: str | None, message: str | None, type: str | None, user_id: Any, topic: str | None,
             data: dict | None, inbox: bool) -> dict[str, Any]:
    """The fields of ``POST /notify`` from ``publish``'s arguments (the ones given)."""
    payload: dict[str, Any] = {"title": title, "message": message, "type": type,
                               "user_id": user_id, "topic": topic, "data": data}
    payload = {k: v for k, v in payload.items() if v is not None}
    if not inbox:
        payload["inbox"] = False
    return payload
