"""The Redis stream's entries and notifier's notifications: ids both ways, and an entry's
fields (written by the publish script: t = hub key, y = type, n = fields JSON)."""
from __future__ import annotations

import logging
from typing import Any

from ..core.notification import Notification, format_id, parse_id

log = logging.getLogger(__name__)


def to_notification_id(stream_id: bytes | str) -> str:
    if isinstance(stream_id, bytes):
        stream_id = stream_id.decode()
    ms, _, seq = stream_id.partition("-")
    if len(ms) == 13 and len(seq) <= 6 and ms.isdigit() and seq.isdigit():  # every id until 2286
        return f"{ms}-{seq:0>6}"
    return format_id(int(ms), int(seq))


def to_stream_id(notification_id: str) -> str:
    ms, seq = parse_id(notification_id)
    return f"{ms}-{seq}"


def target_of(fields: dict[bytes, bytes] | list[bytes]) -> bytes:
    """An entry's hub key, read before anything else of it is decoded."""
    if isinstance(fields, list):
        if fields and fields[0] == b"t":  # as the publish script writes them: t first
            return fields[1]
        fields = dict(zip(fields[::2], fields[1::2]))
    return fields.get(b"t", b"")


def entry_notification(entry: Any) -> Notification | None:
    """A stream entry as a Notification (its fields as redis-py gives them: a dict, or the
    flat list Redis sent)."""
    stream_id, fields = entry
    if isinstance(fields, list):
        fields = dict(zip(fields[::2], fields[1::2]))
    try:
        return Notification(
            to_notification_id(stream_id), fields[b"t"].decode(), fields[b"y"].decode(), fields[b"n"]
        )
    except (KeyError, ValueError, UnicodeDecodeError):
        log.error("skipping malformed stream entry %s", stream_id)
        return None
