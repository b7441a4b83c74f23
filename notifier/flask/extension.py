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
                 identify: Identify | None = None) -> None:
        self._identify = identify
        self._services: "weakref.WeakSet[Service]" = weakref.WeakSet()
        if app is not None:
            self.init_app(app, url_prefix=url_prefix)

    def init_app(self, app: Flask, url_prefix: str | None = None, *, identify: Identify | None = None,
                 standalone: bool = False) -> None:
        """Mount the routes (under ``url_prefix``) and give ``app`` its own hub, broker and hooks.

        ``identify``: this app's own hook; without one, the app uses the extension's
        (``Notifier(identify=...)`` or ``@notifier.identify``).
        """
        settings = Settings.load(app.config, standalone=standalone)
        service = Service(settings)
        service.identify = identify or self._identify
        service.own_identify = identify is not None
        app.extensions["notifier"] = service
        app.register_blueprint(create_blueprint(settings), url_prefix=url_prefix)
        self._services.add(service)
        log.info("notifier on %s: %s broker%s, %s runtime", app.name, "Redis" if settings.redis_url else "in-process",
                 f" from {settings.redis_url_key}" if settings.redis_url else "", service.runtime.name)

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
                idempotency_key: str | None = None) -> str:
        """Publish from Python code, with the same rules as ``POST /notify``; returns the id.

        Raises ``InvalidNotification`` for bad fields and ``BrokerUnavailable`` when the
        broker did not take it (nothing was published: retry, with the same
        ``idempotency_key`` if one was given, and it is published once).
        """
        payload: dict[str, Any] = {"title": title, "message": message, "type": type,
                                   "user_id": user_id, "topic": topic, "data": data}
        return self.service().publish({k: v for k, v in payload.items() if v is not None},
                                      idempotency_key=idempotency_key).id

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
