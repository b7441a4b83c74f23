"""The publish contract of API.md, checked field by field with a message that says what is wrong."""
from __future__ import annotations

import re
from typing import Any
from uuid import UUID

from .errors import InvalidNotification
from .core.notification import now_iso

TYPE_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
TOPIC_RE = re.compile(r"[A-Za-z0-9_.:/-]{1,128}")
FIELDS = ("type", "title", "message", "user_id", "topic", "data", "inbox")
_FIELDS = frozenset(FIELDS)
PRIVATE_PREFIX = "private-"


def check_topic(topic: Any) -> str:
    """A topic name as the contract allows it, or InvalidNotification."""
    if not isinstance(topic, str):
        raise InvalidNotification("topic must be a string")
    if not TOPIC_RE.fullmatch(topic):
        raise InvalidNotification("topic must be 1-128 characters of A-Z a-z 0-9 _ . : / -")
    return topic


def user_id_of(value: Any, what: str = "user_id") -> str:
    """A user id as notifier keeps it: a string of 1-128 characters; an int (a database id) as
    its decimal string, a UUID as its text. The same rule for ``publish()``, ``identify()``,
    tokens and POST /notify."""
    if (isinstance(value, int) and not isinstance(value, bool)) or isinstance(value, UUID):
        value = str(value)
    if not isinstance(value, str):
        raise InvalidNotification(f"{what} must be a string, an integer or a UUID")
    if not 1 <= len(value) <= 128:
        raise InvalidNotification(f"{what} must be 1-128 characters")
    return value


def _string(value: Any, key: str, max_len: int | None) -> str:
    if type(value) is not str and not isinstance(value, str):
        raise InvalidNotification(f"{key} must be a string")
    if max_len is not None and len(value) > max_len:
        raise InvalidNotification(f"{key} must be 0-{max_len} characters")
    return value


MAX_BATCH = 1000


def validate_batch(payload: list[Any], ts: str | None = None) -> list[dict[str, Any]]:
    """Check every item of a batch publish; the first bad one raises with its ``index``."""
    if not 1 <= len(payload) <= MAX_BATCH:
        raise InvalidNotification(f"a batch holds 1 to {MAX_BATCH} notifications, got {len(payload)}")
    items = []
    ts = ts or now_iso()  # published together: one time for all
    for index, item in enumerate(payload):
        try:
            items.append(validate_publish(item, ts))
        except InvalidNotification as exc:
            raise exc.at(index) from None
    return items


def validate_publish(payload: Any, ts: str | None = None) -> dict[str, Any]:
    """Check a publish body; return the notification's fields (all but the id), in wire order,
    stamped ``ts`` (default: now), and ``"inbox": False`` when it is not to be kept in an inbox."""
    if not isinstance(payload, dict):
        raise InvalidNotification("body must be a JSON object")
    if not _FIELDS.issuperset(payload):
        unknown = sorted(set(payload) - _FIELDS)
        raise InvalidNotification(f"unknown field(s): {', '.join(unknown)}")
    type_ = payload.get("type", "notification")
    if type_ != "notification":  # the default needs no checking: most publishes use it
        if not isinstance(type_, str) or not TYPE_RE.fullmatch(type_):
            raise InvalidNotification("type must be 1-64 characters of A-Z a-z 0-9 _ . : -")
        if type_.startswith("notifier."):
            raise InvalidNotification("type must not start with 'notifier.' (reserved)")
    title = _string(payload["title"], "title", 256) if "title" in payload else None
    message = _string(payload["message"], "message", None) if "message" in payload else None
    if title is None and message is None:
        raise InvalidNotification("at least one of title, message is required")
    user_id = user_id_of(payload["user_id"]) if "user_id" in payload else None
    topic = check_topic(payload["topic"]) if "topic" in payload else None
    if user_id is not None and topic is not None:
        raise InvalidNotification("give user_id or topic, not both")
    data = payload.get("data")
    if "data" in payload and not isinstance(data, dict):
        raise InvalidNotification("data must be a JSON object")
    keep = payload.get("inbox", True)
    if not isinstance(keep, bool):
        raise InvalidNotification("inbox must be true or false")
    if "inbox" in payload and keep and user_id is None:
        raise InvalidNotification("inbox: only a notification for a user_id is kept in an inbox")

    fields: dict[str, Any] = {"type": type_, "title": title or "", "message": message or "", "ts": ts or now_iso()}
    if user_id is not None:
        fields["user_id"] = user_id
    if topic is not None:
        fields["topic"] = topic
    if data is not None:
        fields["data"] = data
    if not keep:
        fields["inbox"] = False  # not a field of the notification: Service.publish takes it out
    return fields
