"""The HTTP routes: POST /notify, GET /events, GET /ws, GET /notifications, /healthz, /readyz, /metrics, /openapi.json.

The browser routes (/notifier.js, /notifier.d.ts, /demo) are in ``browser.py``.

Built as a blueprint so the same routes mount on the standalone app and, through
``Notifier.init_app(url_prefix=...)``, on an existing Flask app. Every error is JSON.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request
from flask_sock import Sock
from werkzeug.exceptions import HTTPException
from werkzeug.wsgi import ClosingIterator

from . import browser, cli, metrics, transport_sse, transport_ws
from .auth import check_metrics_reader, check_origin, check_publisher, socket_peer, subscriber_grant, subscriber_topics
from .errors import (
    InvalidNotification,
    NotifierError,
    PayloadTooLarge,
    TooManyRequests,
    UnsupportedMediaType,
    WorkerFull,
)
from .hub import TOO_SLOW, Subscriber, entitled_keys
from .openapi import spec
from .ratelimit import publisher_id
from .state import State, check_last_id
from .tokens import Grant

log = logging.getLogger(__name__)

MAX_LIMIT = 1000


def bp_prefix(req: Any) -> str:
    """The URL prefix the notifier blueprint is mounted under in this app."""
    rule = req.url_rule.rule if req.url_rule is not None else ""
    return rule[: -len("/openapi.json")] if rule.endswith("/openapi.json") else ""


def state() -> State:
    return current_app.extensions["notifier"]


def error(status: int, message: str) -> Response:
    response = jsonify(error=message)
    response.status_code = status
    return response


def json_bytes(body: bytes) -> Response:
    """A JSON response from bytes already serialized (notification bodies are, once per worker)."""
    return Response(body, mimetype="application/json")


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def read_publish_body(max_bytes: int) -> Any:
    """The request's JSON body, within the size limit, or the matching NotifierError."""
    mimetype = request.mimetype or ""
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise UnsupportedMediaType("Content-Type must be application/json")
    if request.content_length is not None and request.content_length > max_bytes:
        raise PayloadTooLarge(f"body larger than {max_bytes} bytes (NOTIFIER_MAX_MESSAGE_BYTES)")
    body = request.stream.read(max_bytes + 1)
    if len(body) > max_bytes:
        raise PayloadTooLarge(f"body larger than {max_bytes} bytes (NOTIFIER_MAX_MESSAGE_BYTES)")
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise InvalidNotification(f"body is not valid JSON: {exc}") from None


class SubscribeRequest:
    """Everything that decides what a subscribe request may get; built before any stream starts."""

    def __init__(self, st: State, *, check_limits: bool = True) -> None:
        settings = st.settings
        if check_limits:
            check_origin(settings, request.headers.get("Origin"))
        self.grant: Grant | None = subscriber_grant(
            settings, request.args.get("token"), request.headers.get("Authorization")
        )
        self.user_id = self.grant.user_id if self.grant is not None else st.identify_user()
        self.topics = subscriber_topics(settings, request.args.getlist("topic"), self.grant)
        if check_limits and len(st.hub) >= settings.max_subscribers:
            raise WorkerFull(f"this worker is full ({settings.max_subscribers} subscribers): retry, or add workers")
        if check_limits and self.user_id is not None:
            if st.hub.user_connections(self.user_id) >= settings.max_connections_per_user:
                raise TooManyRequests(
                    f"too many connections for this user: at most {settings.max_connections_per_user} "
                    "(NOTIFIER_MAX_CONNECTIONS_PER_USER)"
                )

    def subscribe(self, st: State, transport: str) -> Subscriber:
        sub = st.hub.subscribe(transport, self.user_id, self.topics)
        sub.grant = self.grant
        return sub


def check_handshake(headers: Any) -> None:
    """Refuse a malformed WebSocket handshake with a JSON 400 instead of a failed upgrade."""
    if not headers.get("Sec-WebSocket-Key") or headers.get("Sec-WebSocket-Version") != "13":
        raise InvalidNotification("bad WebSocket handshake: Sec-WebSocket-Key and Sec-WebSocket-Version: 13 required")
    if not all(value.isascii() for _, value in headers.items()):
        raise InvalidNotification("bad WebSocket handshake: header values must be ASCII")


def cors_headers(st: State) -> dict[str, str]:
    """CORS for EventSource: the allowed origin, with credentials; or any origin, without."""
    origin = request.headers.get("Origin")
    if not st.settings.allowed_origins:
        return {"Access-Control-Allow-Origin": "*"}
    if origin in st.settings.allowed_origins:
        return {"Access-Control-Allow-Origin": origin, "Access-Control-Allow-Credentials": "true", "Vary": "Origin"}
    return {}


def create_blueprint() -> Blueprint:
    bp = Blueprint("notifier", __name__)
    sock = Sock()

    @bp.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        return error(exc.code or 500, exc.description or exc.name)

    @bp.errorhandler(Exception)
    def unexpected_error(exc: Exception) -> Response:
        log.exception("unexpected error in %s %s", request.method, request.path)
        return error(500, "internal error")

    @bp.errorhandler(NotifierError)
    def notifier_error(exc: NotifierError) -> Response:
        response = error(exc.status, exc.message)
        if isinstance(exc, (TooManyRequests, WorkerFull)):
            response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @bp.before_request
    def before() -> Response | None:
        st = state()
        st.start()
        if request.endpoint in ("notifier.ws", "notifier.events") and st.hub.closing:
            # A stopping worker takes no new subscribers: the client retries elsewhere.
            response = error(503, "server shutting down: reconnect")
            response.headers["Retry-After"] = "1"
            return response
        if request.endpoint == "notifier.ws":
            # Everything that can refuse a WebSocket happens here, before the upgrade
            # (a NotifierError raised here becomes its JSON error response).
            check_handshake(request.headers)
            g.notifier_ws = True  # simple-websocket starts no reader: transport_ws reads
            # (set here, per handshake: the host app may replace SOCK_SERVER_OPTIONS any time)
            transport_ws.install_reader(current_app.config.setdefault("SOCK_SERVER_OPTIONS", {}))
            g.notifier_request = SubscribeRequest(st)
            g.notifier_last_id = check_last_id(request.headers.get("Last-Event-ID") or request.args.get("last_event_id"))
            # permessage-deflate costs ~170 KB and 2x CPU per connection: never offer it.
            request.environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)
        return None

    @bp.post("/notify")
    def notify() -> tuple[Response, int]:
        st = state()
        key = check_publisher(request.environ, st.settings.api_keys)
        payload = read_publish_body(st.settings.max_message_bytes)
        notification_id = st.publish_payload(payload, publisher_id(key, socket_peer(request.environ)))
        return jsonify(id=notification_id), 202

    @bp.get("/events")
    def events() -> Response:
        st = state()
        subscribe = SubscribeRequest(st)
        last_id = check_last_id(request.headers.get("Last-Event-ID") or request.args.get("last_event_id"))
        sub = subscribe.subscribe(st, "sse")
        try:
            replay, floor = st.resume(sub.keys, last_id)
        except BaseException:
            st.hub.unsubscribe(sub)
            raise
        body = transport_sse.event_stream(
            st.hub, sub, st.settings.heartbeat, request.environ.get("gunicorn.socket"), replay, floor,
            chunked=request.environ.get("SERVER_PROTOCOL") == "HTTP/1.1",
        )
        # ClosingIterator: the subscriber is released even if the body is never started.
        body = ClosingIterator(body, [lambda: st.hub.unsubscribe(sub)])
        headers = {**transport_sse.HEADERS, **cors_headers(st)}
        return Response(body, mimetype="text/event-stream", headers=headers, direct_passthrough=True)

    @sock.route("/ws", bp=bp)
    def ws(connection: Any) -> None:
        st = state()
        connection.max_message_size = st.settings.max_message_bytes
        sub = g.notifier_request.subscribe(st, "ws")
        try:
            replay, floor = st.resume(sub.keys, g.notifier_last_id)
        except NotifierError as exc:
            st.hub.unsubscribe(sub)
            transport_ws.close(connection, TOO_SLOW, exc.message)  # 1013: try again later
            transport_ws.finish(connection)
            return
        except BaseException:
            st.hub.unsubscribe(sub)
            raise
        started = time.monotonic()
        try:
            transport_ws.serve(connection, st.hub, sub, st.settings.heartbeat, st.handle_client_message,
                               replay, floor)
        finally:
            # gunicorn writes no access-log line for an upgraded connection: one line here
            # (the path only: query strings may carry tokens).
            log.info("websocket %s 101 closed %s after %.1fs", request.path,
                     sub.close_code or "by client", time.monotonic() - started)

    @bp.get("/notifications")
    def notifications() -> Response:
        """History as JSON, for polling clients and inbox views: the same entitlement rules."""
        st = state()
        subscribe = SubscribeRequest(st, check_limits=False)
        keys = entitled_keys(subscribe.user_id, subscribe.topics)
        since = check_last_id(request.args.get("since"))
        limit = request.args.get("limit", "100")
        if not (limit.isascii() and limit.isdigit()) or not 1 <= int(limit) <= MAX_LIMIT:
            raise InvalidNotification(f"limit must be a whole number from 1 to {MAX_LIMIT}")
        history = st.broker.history(since)
        if history is None:
            return json_bytes(b'{"notifications":[],"reset":true,"more":false}')
        entitled = [n for n in history if n.target in keys]
        page = entitled[: int(limit)] if since else entitled[-int(limit):]
        more = b"true" if since and len(entitled) > len(page) else b"false"
        return json_bytes(b'{"notifications":[' + b",".join(n.body for n in page) + b'],"reset":false,"more":' + more + b"}")

    @bp.get("/ws", endpoint="ws_plain")
    def ws_without_upgrade() -> Response:
        return error(426, "this endpoint speaks WebSocket: connect with a WebSocket client (Upgrade: websocket)")

    @bp.get("/openapi.json")
    def openapi() -> Response:
        return jsonify(spec(request.script_root + (bp_prefix(request) or "")))

    cli.register(bp)

    browser.register(bp)  # /notifier.js, /notifier.d.ts, /demo

    @bp.get("/healthz")
    def healthz() -> Response:
        return jsonify(status="ok", pid=os.getpid())

    @bp.get("/metrics")
    def metrics_text() -> Response:
        """Prometheus text, summed over every worker of this server."""
        check_metrics_reader(request.environ, state().settings)
        body, content_type = metrics.render()
        return Response(body, content_type=content_type)

    @bp.get("/readyz")
    def readyz() -> Response:
        if state().broker.ready():
            return jsonify(status="ready")
        return error(503, "broker unavailable")

    return bp
