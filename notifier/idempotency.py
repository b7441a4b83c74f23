"""``Idempotency-Key``: a publisher's retry of the same request publishes nothing again.

The key is scoped to its publisher and stored with the id it produced and a fingerprint
of what was published, for NOTIFIER_IDEMPOTENCY_TTL seconds; the broker checks it in the
same round trip that stores the notification, so a retry after a lost reply or a 503
gets the first id back (``replayed``), and the same key with another body is a 422.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, NamedTuple

from .errors import InvalidNotification

MAX_KEY = 255
CONFLICT = "this Idempotency-Key was used for another notification: use a new key for a new one"


class Idempotency(NamedTuple):
    """What the broker stores under ``name`` (the publisher's key): the body's ``fingerprint``."""

    name: str
    fingerprint: str
    ttl: int


class Published(NamedTuple):
    """The ids of what was published, in order (one, or a batch's); ``replayed``: a repeat."""

    ids: list[str]
    replayed: bool = False

    @property
    def id(self) -> str:
        return self.ids[0]


def check_key(value: Any) -> str:
    """An ``Idempotency-Key`` as the contract allows it: 1-255 printable ASCII characters."""
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_KEY or not all(" " <= c <= "~" for c in value):
        raise InvalidNotification(f"Idempotency-Key must be 1-{MAX_KEY} printable ASCII characters")
    return value


def idempotency(key: str | None, publisher: str | None, items: list[dict[str, Any]],
                ttl: int) -> Idempotency | None:
    """The broker's record for ``key`` from ``publisher`` publishing ``items`` (their ``ts`` aside)."""
    if key is None:
        return None
    scope = hashlib.sha256(f"{publisher or 'app'}\n{check_key(key)}".encode()).hexdigest()[:32]
    body = [{k: v for k, v in fields.items() if k != "ts"} for fields in items]
    fingerprint = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    return Idempotency(scope, fingerprint, ttl)
