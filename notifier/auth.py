"""Who may publish, and who may subscribe to what.

Publishing: a bearer key from NOTIFIER_API_KEYS, or (with none set) a loopback peer,
judged by the socket address: never by ``X-Forwarded-For``, and not by a
``REMOTE_ADDR`` that ProxyFix rewrote from it.

Subscribing: anyone gets broadcasts and public topics; a token (or the host app's
``identify`` hook) names the user; ``private-…`` topics need a token that grants them;
a browser's ``Origin`` must be allowed when NOTIFIER_ALLOWED_ORIGINS is set. All of it
is decided before a stream starts (before the WebSocket upgrade).
"""
from __future__ import annotations

import hmac
import ipaddress
from typing import Any, Mapping
from urllib.parse import urlsplit

from .config import Settings
from .errors import Forbidden, InvalidNotification, Unauthorized
from .tokens import Grant, verify_token
from .validation import PRIVATE_PREFIX, check_topic


def socket_peer(environ: Mapping[str, Any]) -> str:
    """The address of the socket's other end, as the server saw it."""
    sock = environ.get("gunicorn.socket")
    if sock is not None:
        peer = environ.get("notifier.peer")
        if peer is None:  # asked once a request: it is a system call
            try:
                address = sock.getpeername()
            except OSError:
                address = None
            peer = address[0] if isinstance(address, tuple) else ""  # a unix socket has no address
            if isinstance(environ, dict):
                environ["notifier.peer"] = peer
        return peer
    original = environ.get("werkzeug.proxy_fix.orig") or {}
    return original.get("REMOTE_ADDR") or environ.get("REMOTE_ADDR") or ""


def is_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


PROXY_HEADERS = ("HTTP_FORWARDED", "HTTP_X_FORWARDED_FOR", "HTTP_X_REAL_IP")
"""A request that came through a proxy on this host carries one of these: its socket peer
is loopback, but the client is not."""


def is_local(environ: Mapping[str, Any]) -> bool:
    """A loopback peer that is not a proxy passing a request on (no forwarding headers)."""
    return is_loopback(socket_peer(environ)) and not any(environ.get(h) for h in PROXY_HEADERS)


def check_publisher(environ: Mapping[str, Any], api_keys: tuple[str, ...]) -> str | None:
    """The publisher key of this request (None for a local peer), or Unauthorized/Forbidden."""
    if not api_keys:
        if is_local(environ):
            return None
        raise Forbidden("publishing is only allowed from this host (loopback, not through a proxy); "
                        "set NOTIFIER_API_KEYS to publish from elsewhere")
    key = bearer(environ.get("HTTP_AUTHORIZATION"))
    if key is None:
        raise Unauthorized("missing publisher key: send Authorization: Bearer <key>")
    matched = False
    for candidate in api_keys:  # compare against every key: constant time in which one matched
        matched |= hmac.compare_digest(key.encode(), candidate.encode())
    if not matched:
        raise Forbidden("wrong publisher key")
    return key


def check_metrics_reader(environ: Mapping[str, Any], settings: Settings) -> None:
    """/metrics: open with NOTIFIER_METRICS_PUBLIC; else a loopback peer, or a publisher key."""
    if settings.metrics_public or is_local(environ):
        return
    if not settings.api_keys:
        raise Forbidden("metrics are served to loopback peers only; scrape with a key from NOTIFIER_API_KEYS "
                        "as a bearer token, or set NOTIFIER_METRICS_PUBLIC=true on a private network")
    check_publisher(environ, settings.api_keys)


def check_origin(settings: Settings, origin: str | None, host: str) -> None:
    """With NOTIFIER_ALLOWED_ORIGINS set, refuse a browser page from any other origin than
    those and this host's own."""
    if settings.allowed_origins and origin is not None and origin not in settings.allowed_origins \
            and not same_origin(origin, host):
        raise Forbidden("origin not allowed (NOTIFIER_ALLOWED_ORIGINS)")


def same_origin(origin: str, host: str) -> bool:
    """The page's origin is this host (the scheme may differ behind a TLS proxy)."""
    return urlsplit(origin).netloc.lower() == host.lower()


def check_session_origin(settings: Settings, origin: str | None, host: str) -> None:
    """A connection the host app identified from its cookie or session (``identify``) is an
    ambient credential: a page of another site must not borrow it. Its ``Origin`` must be
    this host's own, or one in NOTIFIER_ALLOWED_ORIGINS. (No ``Origin``: not a cross-site
    browser request. A token is no ambient credential and may come from anywhere.)"""
    if origin is None or origin in settings.allowed_origins:
        return
    if not same_origin(origin, host):
        raise Forbidden("a page of another origin cannot use this site's session: "
                        "list it in NOTIFIER_ALLOWED_ORIGINS, or connect with a token")


def subscriber_grant(settings: Settings, query_token: str | None, authorization: str | None) -> Grant | None:
    """The verified token of a subscribe request, from ``?token=`` or ``Authorization: Bearer``."""
    token = query_token or bearer(authorization)
    return verify_token(settings.secret, token) if token else None


def check_topic_access(topic: Any, grant: Grant | None) -> str:
    """A valid topic this subscriber may listen to, or InvalidNotification / Forbidden."""
    topic = check_topic(topic)
    if topic.startswith(PRIVATE_PREFIX) and (grant is None or not grant.allows(topic)):
        raise Forbidden(f"topic {topic!r} is private: it needs a token that grants it")
    return topic


def subscriber_topics(settings: Settings, values: list[str], grant: Grant | None) -> list[str]:
    topics = list(dict.fromkeys(check_topic_access(value, grant) for value in values))
    if len(topics) > settings.max_topics:
        raise InvalidNotification(f"too many topics: at most {settings.max_topics} (NOTIFIER_MAX_TOPICS)")
    return topics
