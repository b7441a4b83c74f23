"""``Notifier``: the Flask extension, for the standalone app and for drop-in use.

Follows Flask's extension pattern: ``Notifier(app)`` or ``init_app`` later, state in
``app.extensions["notifier"]`` (never on ``self``), routes on a blueprint.
"""
from __future__ import annotations

from typing import Any

from flask import Flask, current_app, has_app_context

from .api import create_blueprint
from .config import Settings
from .errors import NotifierError
from .state import Identify, State
from .tokens import DEFAULT_TTL, issue_token


class Notifier:
    """Real-time notifications for a Flask app: routes, publishing, and who the user is."""

    def __init__(self, app: Flask | None = None, *, url_prefix: str | None = None,
                 identify: Identify | None = None) -> None:
        self._identify = identify
        self._state: State | None = None
        if app is not None:
            self.init_app(app, url_prefix=url_prefix)

    def init_app(self, app: Flask, url_prefix: str | None = None) -> None:
        """Mount the routes (under ``url_prefix``) and set up this app's hub and broker."""
        state = State(Settings.load(app.config), self._identify)
        app.extensions["notifier"] = state
        app.register_blueprint(create_blueprint(), url_prefix=url_prefix)
        self._state = state  # the last app, for publish() outside an app context

    def identify(self, hook: Identify) -> Identify:
        """Decorator: ``hook()`` returns the current user's id (or None) from the host app's session."""
        self._identify = hook
        if self._state is not None:
            self._state.identify = hook
        return hook

    def publish(self, title: str | None = None, message: str | None = None, *, type: str | None = None,
                user_id: str | None = None, topic: str | None = None, data: dict | None = None) -> str:
        """Publish from Python code, with the same rules as ``POST /notify``; returns the id.

        Raises ``InvalidNotification`` for bad fields, ``BrokerUnavailable`` if not accepted.
        """
        payload: dict[str, Any] = {"title": title, "message": message, "type": type,
                                   "user_id": user_id, "topic": topic, "data": data}
        return self._current().publish_payload({k: v for k, v in payload.items() if v is not None})

    def issue_token(self, user_id: str, topics: tuple[str, ...] | list[str] = (), ttl: int = DEFAULT_TTL) -> str:
        """A subscriber token for ``user_id`` granting private ``topics``, signed with NOTIFIER_SECRET."""
        return issue_token(self._current().settings.secret, user_id, topics, ttl)

    def _current(self) -> State:
        if has_app_context() and "notifier" in current_app.extensions:
            return current_app.extensions["notifier"]
        if self._state is None:
            raise NotifierError("Notifier is not initialised: call Notifier(app) or init_app(app) first")
        return self._state
