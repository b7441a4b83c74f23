"""Subscriber tokens: JWT HS256 signed with NOTIFIER_SECRET, naming a user and granting private topics.

Claims: ``sub`` (user id), ``exp`` (required), optional ``topics`` (private topics
granted; a trailing ``*`` grants every topic with that prefix). PyJWT checks the
signature and expiry; only HS256 is accepted, so ``alg: none`` never is.

PyJWT loads with the first token issued or verified, not with the app: ``flask notifier
send`` and publish-only processes never need it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from .errors import ConfigError, InvalidNotification, Unauthorized
from .validation import user_id_of

ALGORITHM = "HS256"
DEFAULT_TTL = 3600


@dataclass(frozen=True)
class Grant:
    """What a verified token allows: who the user is, which private topics, until when."""

    user_id: str
    topics: tuple[str, ...]
    expires_at: float

    def allows(self, topic: str) -> bool:
        return any(topic == p or (p.endswith("*") and topic.startswith(p[:-1])) for p in self.topics)


def issue_token(secret: str | None, user_id: str | int, topics: tuple[str, ...] | list[str] = (),
                ttl: int = DEFAULT_TTL) -> str:
    """A signed token for ``user_id`` granting ``topics``, valid for ``ttl`` seconds."""
    if not secret:
        raise ConfigError("NOTIFIER_SECRET", "needed to issue tokens")
    try:
        user_id = user_id_of(user_id)
    except InvalidNotification as exc:
        raise ValueError(exc.message) from None
    if ttl <= 0:
        raise ValueError("ttl must be positive")
    claims = {"sub": user_id, "exp": int(time.time()) + int(ttl)}
    if topics:
        claims["topics"] = list(topics)
    import jwt

    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_token(secret: str | None, token: str) -> Grant:
    """The grant a token carries, or Unauthorized (bad, expired, wrongly signed, alg none)."""
    if not secret:
        raise Unauthorized("tokens are not accepted: the server has no NOTIFIER_SECRET")
    import jwt

    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM], options={"require": ["exp", "sub"]})
    except jwt.ExpiredSignatureError:
        raise Unauthorized("token expired") from None
    except jwt.InvalidTokenError as exc:
        raise Unauthorized(f"invalid token: {exc}") from None
    user_id, topics = claims["sub"], claims.get("topics", [])
    if not isinstance(user_id, str) or not 1 <= len(user_id) <= 128:
        raise Unauthorized("invalid token: sub must be a user id of 1-128 characters")
    if not isinstance(topics, list) or not all(isinstance(t, str) for t in topics):
        raise Unauthorized("invalid token: topics must be a list of strings")
    try:
        expires_at = float(claims["exp"])
    except (TypeError, ValueError, OverflowError):
        raise Unauthorized("invalid token: exp must be a number of seconds") from None
    return Grant(user_id, tuple(topics), expires_at)
