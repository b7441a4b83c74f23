"""Who may publish: a bearer key from NOTIFIER_API_KEYS, or (with none set) a loopback peer.

The peer is judged by the socket address: never by ``X-Forwarded-For``, and not by a
``REMOTE_ADDR`` that ProxyFix rewrote from it.
"""
from __future__ import annotations

import hmac
import ipaddress
from typing import Any, Mapping

from .errors import Forbidden, Unauthorized


def socket_peer(environ: Mapping[str, Any]) -> str:
    """The address of the socket's other end, as the server saw it."""
    sock = environ.get("gunicorn.socket")
    if sock is not None:
        try:
            peer = sock.getpeername()
        except OSError:
            return ""
        return peer[0] if isinstance(peer, tuple) else ""  # a unix socket has no address
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


def check_publisher(environ: Mapping[str, Any], api_keys: tuple[str, ...]) -> None:
    """Raise Unauthorized/Forbidden unless this request may publish."""
    if not api_keys:
        if is_loopback(socket_peer(environ)):
            return
        raise Forbidden("publishing is only allowed from loopback; set NOTIFIER_API_KEYS to publish from elsewhere")
    key = bearer(environ.get("HTTP_AUTHORIZATION"))
    if key is None:
        raise Unauthorized("missing publisher key: send Authorization: Bearer <key>")
    matched = False
    for candidate in api_keys:  # compare against every key: constant time in which one matched
        matched |= hmac.compare_digest(key.encode(), candidate.encode())
    if not matched:
        raise Forbidden("wrong publisher key")
