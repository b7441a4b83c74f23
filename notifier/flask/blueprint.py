"""The notifier blueprint: the views of ``views.py`` and the browser files, mounted by
``Notifier.init_app`` (under its ``url_prefix``), with JSON errors.

The demo page, /metrics and /openapi.json are switched by NOTIFIER_DEMO,
NOTIFIER_METRICS and NOTIFIER_OPENAPI (the demo is off by default in a host app).

``views.py`` (with the auth, body and transport code it imports) loads with the first
request, not with the app: a process that never serves one (``flask notifier send``)
does not pay for it.
"""
from __future__ import annotations

import logging
from importlib import import_module
from types import ModuleType
from typing import Any, Callable

from flask import Blueprint, Response, request
from werkzeug.exceptions import HTTPException

from .. import browser, cli
from ..config import Settings
from ..errors import IdentifyFailed, NotifierError, ServerUnsupported

log = logging.getLogger(__name__)


def _views(module: str = "views") -> ModuleType:
    return import_module(f"{__package__}.{module}")


def _view(name: str, module: str = "views") -> Callable[..., Any]:
    """``<module>.<name>`` (``views`` or ``inbox_views``), looked up when a request comes."""
    def view(**kwargs: Any) -> Any:
        return getattr(_views(module), name)(**kwargs)

    view.__name__ = view.__qualname__ = name
    return view


def create_blueprint(settings: Settings) -> Blueprint:
    bp = Blueprint("notifier", __name__)
    bp.register_error_handler(HTTPException, http_error)
    bp.register_error_handler(NotifierError, notifier_error)
    bp.register_error_handler(Exception, unexpected_error)
    bp.add_url_rule("/notify", view_func=_view("notify"), methods=["POST"])
    bp.add_url_rule("/disconnect", view_func=_view("disconnect"), methods=["POST"])
    bp.add_url_rule("/presence", view_func=_view("presence"))
    bp.add_url_rule("/events", view_func=_view("events"))
    bp.add_url_rule("/ws", view_func=_view("ws"), websocket=True)
    bp.add_url_rule("/ws", endpoint="ws_plain", view_func=_view("ws_without_upgrade"))
    bp.add_url_rule("/notifications", view_func=_view("notifications"))
    bp.add_url_rule("/inbox", view_func=_view("inbox_list", "inbox_views"))
    bp.add_url_rule("/inbox/read", view_func=_view("inbox_read", "inbox_views"), methods=["POST"])
    bp.add_url_rule("/inbox/<notification_id>", view_func=_view("inbox_delete", "inbox_views"), methods=["DELETE"])
    bp.add_url_rule("/healthz", view_func=_view("healthz"))
    bp.add_url_rule("/readyz", view_func=_view("readyz"))
    if settings.metrics_route:
        bp.add_url_rule("/metrics", view_func=_view("metrics_text"))
    if settings.openapi_route:
        bp.add_url_rule("/openapi.json", view_func=_view("openapi"))
    bp.after_request(_inbox_cors)
    browser.register(bp, demo=settings.demo)  # /notifier.js, /notifier.d.ts, /demo
    cli.register(bp)
    return bp


INBOX_ENDPOINTS = ("notifier.inbox_list", "notifier.inbox_read", "notifier.inbox_delete")


def _inbox_cors(response: Response) -> Response:
    """The inbox's answers (errors and preflights included) carry the streams' CORS rule,
    so a page of another origin can use it with a token (or its allowed origin with cookies)."""
    if request.endpoint in INBOX_ENDPOINTS and request.headers.get("Origin"):
        from flask import current_app

        response.headers.update(_views().cors_headers(current_app.extensions["notifier"]))
        if request.method == "OPTIONS":
            response.headers.update({"Access-Control-Allow-Methods": "GET, POST, DELETE",
                                     "Access-Control-Allow-Headers": "Authorization, Content-Type",
                                     "Access-Control-Max-Age": "600"})
    return response


def http_error(exc: HTTPException) -> Response:
    return _views().error(exc.code or 500, exc.description or exc.name)


def notifier_error(exc: NotifierError) -> Response:
    if isinstance(exc, (ServerUnsupported, IdentifyFailed)):  # the operator must hear of it, not only the client
        log.error("notifier refused a stream: %s", exc.message)
    response = _views().error(exc.status, exc.message, exc.index)
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


def unexpected_error(exc: Exception) -> Response:
    if isinstance(exc, HTTPException):  # Flask picks the most specific handler; be safe
        return http_error(exc)
    log.exception("unexpected error in %s %s", request.method, request.path)
    return _views().error(500, "internal error")
