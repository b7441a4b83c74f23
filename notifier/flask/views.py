"""The HTTP routes, as module-level views: POST /notify, POST /disconnect, GET /presence, GET /events, GET /ws, GET /notifications,
/healthz, /readyz, /metrics, /openapi.json. ``blueprint.py`` mounts them; every error is JSON.
"""
from __future__ import annotations

import json
import logging
import os
import time
from functools import partial
from typing import TYPE_CHECKING, Any

from flask import Response, current_app, jsonify, request

from .. import metrics
from ..auth import check_metrics_reader, check_origin, check_publisher, check_session_origin, \
    subscriber_grant, subscriber_topics
from ..core.closing import TOO_SLOW
from ..core.notification import Notification
from ..core.subscriber import Subscriber, entitled_keys
from ..errors import BrokerUnavailable, IdentifyFailed, InvalidNotification, NotifierError, ServerUnsupported, \
    ShuttingDown
from ..ratelimit import publisher_id
from ..service import Service, check_last_id
from ..transports import handoff, sse
from ..validation import check_topic, user_id_of
from . import ws_actions
from .body import read_json_body

if TYPE_CHECKING:
    from ..transports.websocket import WebSocketSession

log = logging.getLogger(__name__)

MAX_LIMIT = 1000


def service() -> Service:
    return current_app.extensions["notifier"]


def limit_arg(default: int) -> int:
    """The request's ``?limit=``: a whole number from 1 to MAX_LIMIT, else a 400."""
    limit = request.args.get("limit", str(default))
    if not (limit.isascii() and limit.isdigit()) or not 1 <= int(limit) <= MAX_LIMIT:
        raise InvalidNotification(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return int(limit)


def json_bytes(body: bytes) -> Response:
    """A JSON response from bytes already serialized (notification bodies are, once per worker)."""
    return Response(body, mimetype="application/json")


class Subscription:
    """Who is asking and what they may get; every check is made before any stream starts."""

    def __init__(self, svc: Service, *, live: bool = True, stream: bool = True) -> None:
        settings = svc.settings
        if live:
            if svc.hub.closing:  # a stopping worker takes no new subscribers: retry elsewhere
                raise ShuttingDown("server shutting down: reconnect")
            check_origin(settings, request.headers.get("Origin"), request.host)
        self.grant = subscriber_grant(settings, request.args.get("token"), request.headers.get("Authorization"))
        self.user_id = self.grant.user_id if self.grant is not None else identified_user(svc)
        if self.grant is None and self.user_id is not None:  # named by the session cookie
            check_session_origin(settings, request.headers.get("Origin"), request.host)
        self.topics = subscriber_topics(settings, request.args.getlist("topic"), self.grant)
        # Taken as it comes: one that cannot be resumed from gets a reset, never a 4xx.
        self.last_id = request.headers.get("Last-Event-ID") or request.args.get("last_event_id") or None
        if live:
            svc.check_room(self.user_id)
        if live and stream and svc.runtime.name == "threads" and not request.environ.get("wsgi.multithread"):
            raise ServerUnsupported("this server runs one request at a time, so a stream would block it: run "
                                    "gunicorn -k gevent (or flask run, which is threaded)")

    @property
    def expires_at(self) -> float | None:
        return self.grant.expires_at if self.grant is not None else None


def identified_user(svc: Service) -> str | None:
    """The host app's user for this request, through its ``identify`` hook, if any."""
    if svc.identify is None:
        return None
    user = svc.identify()
    if user is None:
        return None
    try:
        return user_id_of(user, "identify() returned a user id that")
    except InvalidNotification as exc:  # the host app's bug, not the client's
        raise IdentifyFailed(exc.message) from None


def notify() -> tuple[Response, int]:
    svc = service()
    key = check_publisher(request.environ, svc.settings.api_keys)
    payload = read_json_body(svc)
    published = svc.publish(payload, publisher_id(key, request.environ),
                            idempotency_key=request.headers.get("Idempotency-Key"))
    answer = {"ids": published.ids} if isinstance(payload, list) else {"id": published.id}
    response = json_bytes(json.dumps(answer, separators=(",", ":")).encode())
    if published.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response, 202


def disconnect() -> tuple[Response, int]:
    """POST /disconnect {"user_id": U}: end every connection of U, on every worker and host."""
    svc = service()
    key = check_publisher(request.environ, svc.settings.api_keys)
    payload = read_json_body(svc)
    if not isinstance(payload, dict) or set(payload) != {"user_id"}:
        raise InvalidNotification('body must be {"user_id": ...}')
    svc.disconnect(payload["user_id"], publisher_id(key, request.environ))
    return json_bytes(b"{}"), 202


def presence() -> Response:
    """GET /presence?topic=T (users and connections) or ?user_id=U (online?), for publishers."""
    svc = service()
    check_publisher(request.environ, svc.settings.api_keys)
    args = request.args
    if ("topic" in args) == ("user_id" in args):
        raise InvalidNotification("give topic or user_id")
    if "user_id" in args:
        user_id = user_id_of(args["user_id"])
        connections = svc.presence.online(user_id)
        return jsonify(user_id=user_id, online=connections > 0, connections=connections)
    return jsonify(svc.presence.topic(check_topic(args["topic"]), limit_arg(MAX_LIMIT)))


def events() -> Response:
    started = time.monotonic()
    svc = service()
    headers = {**sse.HEADERS, **cors_headers(svc)}
    svc.start()
    asked = Subscription(svc, stream=request.method != "HEAD")
    if request.method == "HEAD":  # what a stream would answer, without the stream
        return Response(b"", mimetype="text/event-stream", headers=headers)
    writer = svc.writer("sse_chunk", asked.expires_at)
    session = sse.SSESession(writer, request.environ)
    sub, replay, floor = svc.attach(writer, "sse", asked.user_id, asked.topics, asked.grant, asked.last_id)
    if svc.presence.counts(sub):
        session.watch_close()
    runtime = svc.runtime if handoff.possible(request.environ, svc.runtime) else None
    return sse.EventStream(session, svc.settings.heartbeat, replay, floor, partial(svc.hub.unsubscribe, sub), headers,
                           runtime, started)


def ws() -> Any:
    # simple-websocket and wsproto load with the first WebSocket, not with the app: the
    # CLI and publish-only processes never pay for them.
    from ..transports import wsadapter
    from ..transports.websocket import WIRE, WebSocketSession

    svc = service()
    svc.start()
    check_handshake(request.headers)
    if not wsadapter.can_accept(request.environ):
        raise ServerUnsupported("this server does not hand WebSocket sockets over: run gunicorn -k gevent or flask run")
    asked = Subscription(svc)
    writer = svc.writer(WIRE, asked.expires_at)
    session = WebSocketSession(writer, request.environ, svc.settings.max_message_bytes)
    started = time.monotonic()
    try:
        sub, replay, floor = svc.attach(writer, "ws", asked.user_id, asked.topics, asked.grant, asked.last_id)
    except NotifierError as exc:
        session.refuse(TOO_SLOW, exc.message)  # 1013: try again later
        return session.response()
    if handoff.possible(request.environ, svc.runtime):  # the rest on a greenlet of its own
        try:
            session.hand_over()
        except BaseException:
            svc.hub.unsubscribe(sub)
            raise
        svc.runtime.start_connection(serve_ws, svc, session, sub, replay, floor, request.path, started)
    else:
        serve_ws(svc, session, sub, replay, floor, request.path, started)
    return session.response()


def serve_ws(svc: Service, session: WebSocketSession, sub: Subscriber, replay: list[Notification], floor: str | None,
             path: str, started: float) -> None:
    """An accepted WebSocket's life, on its request's greenlet (or thread), or one of its own."""
    try:
        # released as soon as writing stops, before the close lingers (run's own finally)
        session.run(svc.settings.heartbeat, partial(ws_actions.answer, svc, sub), replay, floor,
                    on_end=partial(svc.hub.unsubscribe, sub))
    except Exception:  # nobody above to log it: no HTTP answer is possible after the upgrade anyway
        log.exception("websocket %s failed", path)
    finally:
        # gunicorn writes no access-log line for an upgraded connection: one line here
        # (the path only: query strings may carry tokens).
        log.info("websocket %s 101 closed %s after %.1fs", path, session.writer.close_code or "by client",
                 time.monotonic() - started)


def error(status: int, message: str, index: int | None = None) -> Response:
    """The JSON error answer; ``index``: the item of a batch it is about."""
    response = jsonify(error=message) if index is None else jsonify(error=message, index=index)
    response.status_code = status
    return response


def ws_without_upgrade() -> Response:
    return error(426, "this endpoint speaks WebSocket: connect with a WebSocket client (Upgrade: websocket)")


def check_handshake(headers: Any) -> None:
    """Refuse a malformed WebSocket handshake with a JSON 400 instead of a failed upgrade."""
    if not headers.get("Sec-WebSocket-Key") or headers.get("Sec-WebSocket-Version") != "13":
        raise InvalidNotification("bad WebSocket handshake: Sec-WebSocket-Key and Sec-WebSocket-Version: 13 required")
    if not all(value.isascii() for _, value in headers.items()):
        raise InvalidNotification("bad WebSocket handshake: header values must be ASCII")


def cors_headers(svc: Service) -> dict[str, str]:
    """CORS for EventSource: the allowed origin, with credentials; or any origin, without."""
    origin = request.headers.get("Origin")
    if not svc.settings.allowed_origins:
        return {"Access-Control-Allow-Origin": "*"}
    if origin in svc.settings.allowed_origins:
        return {"Access-Control-Allow-Origin": origin, "Access-Control-Allow-Credentials": "true", "Vary": "Origin"}
    return {}


def notifications() -> Response:
    """History as JSON, for polling clients: the same entitlement rules as the streams."""
    svc = service()
    asked = Subscription(svc, live=False)
    keys = entitled_keys(asked.user_id, asked.topics)
    since = check_last_id(request.args.get("since"))
    limit = limit_arg(100)
    history = svc.broker.history(since)
    if history is None:
        return json_bytes(b'{"notifications":[],"reset":true,"more":false}')
    entitled = [n for n in history if n.target in keys]
    page = entitled[:limit] if since else entitled[-limit:]
    more = b"true" if since and len(entitled) > len(page) else b"false"
    return json_bytes(b'{"notifications":[' + b",".join(n.body for n in page) + b'],"reset":false,"more":' + more
                      + b"}")


def openapi() -> Response:
    from ..openapi import spec  # a big literal, built for the rare reader of /openapi.json only

    rule = request.url_rule.rule if request.url_rule is not None else ""
    prefix = rule[: -len("/openapi.json")]
    return jsonify(spec(request.script_root + prefix))


def healthz() -> Response:
    return jsonify(status="ok", pid=os.getpid())


def readyz() -> Response:
    if service().broker.ready():
        return jsonify(status="ready")
    raise BrokerUnavailable("broker unavailable")  # 503 with Retry-After, like every 503


def metrics_text() -> Response:
    """Prometheus text, summed over every worker of this server."""
    check_metrics_reader(request.environ, service().settings)
    body, content_type = metrics.render()
    return Response(body, content_type=content_type)
