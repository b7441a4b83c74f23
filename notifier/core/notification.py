"""The notification as it travels: an id that sorts in publish order, and its wire forms.

A notification is serialized once per worker, here; the transports only write the
bytes this object already holds (``ws_frame``, ``sse_chunk``).
"""
from __future__ import annotations

import json
import struct
import time
from datetime import datetime, timezone
from typing import Any, Sequence

from ..errors import InvalidNotification

BROADCAST = "@all"
"""Hub key of a notification for every connection; '@' is not allowed in topic names."""
DISCONNECT = "notifier.disconnect"
"""Type of the entry that ends every connection of its user (POST /disconnect): sent
through the broker like a notification, so every worker and host gets it, but never kept
in history or delivered as one."""
JOIN = "notifier.join"
LEAVE = "notifier.leave"
"""Types of the presence events a topic's subscribers get when a user's first connection
to it opens, and its last one closes (NOTIFIER_PRESENCE_EVENTS)."""
READ = "notifier.read"
DELETED = "notifier.deleted"
EPHEMERAL = frozenset({DISCONNECT, JOIN, LEAVE, READ, DELETED})
"""Types sent through the broker but never kept in history; delivered, they carry no id."""

LINE_BREAKS = (("\u0085", "\\u0085"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029"))
"""Characters ``str.splitlines()`` splits on that ``json.dumps(ensure_ascii=False)`` leaves raw."""

_MS_DIGITS = 13
_SEQ_DIGITS = 6


def format_id(ms: int, seq: int) -> str:
    """Fixed-width id, so ids compare as plain strings in publish order."""
    return f"{ms:0{_MS_DIGITS}d}-{seq:0{_SEQ_DIGITS}d}"


def parse_id(value: str) -> tuple[int, int]:
    """(ms, seq) of an id made by ``format_id``; ValueError if it is not one."""
    ms, sep, seq = value.partition("-")
    digits = (ms + seq).isascii() and ms.isdigit() and seq.isdigit()
    if not sep or len(ms) != _MS_DIGITS or len(seq) != _SEQ_DIGITS or not digits:
        raise ValueError(f"not a notification id: {value!r}")
    return int(ms), int(seq)


def user_key(user_id: str) -> str:
    """Hub key of a user's notifications; cannot collide with a public topic name."""
    return "@user:" + user_id


def target_key(fields: dict[str, Any]) -> str:
    if "user_id" in fields:
        return user_key(fields["user_id"])
    return fields.get("topic", BROADCAST)


_second: tuple[int, str] = (-1, "")


def now_iso() -> str:
    """ISO 8601 UTC with milliseconds, as the contract fixes ``ts`` (the text up to the
    second is made once a second: this runs for every publish)."""
    global _second
    ms = time.time_ns() // 1_000_000
    second, millis = divmod(ms, 1000)
    if _second[0] != second:
        _second = (second, datetime.fromtimestamp(second, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S."))
    return f"{_second[1]}{millis:03d}Z"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _not_json(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# The C encoder json.dumps builds anew on every call, built once (this runs for every
# notification published): the same output as _ENCODER, at a third of the cost. Without the
# circular-reference check, a cycle ends in RecursionError, which encode_fields reports too.
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
_C_ENCODER = (_c_make_encoder(None, _not_json, json.encoder.encode_basestring, None, ":", ",", False, False, False)
              if _c_make_encoder is not None else None)


def _encode(fields: dict[str, Any]) -> str:
    if _C_ENCODER is None:  # no C accelerator (PyPy)
        return _ENCODER.encode(fields)
    return "".join(_C_ENCODER(fields, 0))


def encode_fields(fields: dict[str, Any]) -> bytes:
    """Compact one-line JSON of everything but the id (the broker assigns that).

    Raises InvalidNotification for what JSON cannot carry: NaN or infinite numbers
    (``1e400`` parses to infinity), lone surrogates, objects that are not JSON.
    """
    try:
        text = _encode(fields)
    except (ValueError, TypeError, UnicodeEncodeError, RecursionError) as exc:
        raise InvalidNotification(f"notification cannot be encoded as JSON: {exc}") from None
    # JSON escapes every control character below U+0020; these three it leaves raw, yet
    # str.splitlines() (and so line-based clients, httpx's iter_lines among them) breaks
    # on them. They can only stand inside strings, so escaping them in place is exact.
    for raw, escaped in LINE_BREAKS:
        if raw in text:
            text = text.replace(raw, escaped)
    try:
        return text.encode()
    except UnicodeEncodeError as exc:  # a lone surrogate: no UTF-8 for it
        raise InvalidNotification(f"notification cannot be encoded as JSON: {exc}") from None


def ws_text_frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x81, n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x81, 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 127, n)
    return header + payload


def http_chunk(data: bytes) -> bytes:
    """``data`` framed as one chunk of an HTTP/1.1 chunked body."""
    return b"%x\r\n" % len(data) + data + b"\r\n"


class Frames(dict):
    """A batch of notifications as each wire form joins them, built at most once per fan-out.

    The hub hands the same ``Frames`` to every connection that gets the batch:
    ``frames[wire]`` (``ws_frame``, ``sse_chunk``, ``sse_chunked``) is a plain dict lookup,
    and the first connection to ask for a wire form pays for the join.
    """

    __slots__ = ("notes",)

    def __init__(self, notes: "Sequence[Notification]") -> None:
        super().__init__()
        self.notes = notes

    def __missing__(self, wire: str) -> bytes:
        data = self[wire] = b"".join([getattr(n, wire) for n in self.notes])
        return data


class Notification:
    """Immutable unit of delivery, with its WebSocket frame and SSE chunk built once."""

    __slots__ = ("id", "target", "type", "body", "ws_frame", "sse_chunk", "sse_chunked")

    def __init__(self, id: str, target: str, type: str, fields_json: bytes) -> None:
        self.id = id
        self.target = target
        self.type = type
        if type in EPHEMERAL:  # no id for a client to resume from: its fields as they are
            self.body = fields_json
            self.sse_chunk = b"event: " + type.encode() + b"\ndata: " + fields_json + b"\n\n"
        else:
            # Splice the id in front of the stored fields: no re-serialization.
            self.body = b'{"id":"' + id.encode() + b'",' + fields_json[1:]
            self.sse_chunk = b"id: " + id.encode() + b"\nevent: " + type.encode() + b"\ndata: " + self.body + b"\n\n"
        self.ws_frame = ws_text_frame(self.body)
        # The same as one HTTP/1.1 chunk, for writing straight to the socket of a stream
        # whose chunked framing the server would otherwise add.
        self.sse_chunked = http_chunk(self.sse_chunk)

    def __repr__(self) -> str:
        return f"Notification(id={self.id!r}, target={self.target!r}, type={self.type!r})"


def disconnect_fields() -> dict[str, Any]:
    """The fields of a disconnect: what the broker carries (with the user) and what an SSE
    stream's last event says."""
    return {"type": DISCONNECT, "title": "", "message": "disconnected by the server", "ts": now_iso()}


def disconnect_event() -> Notification:
    """An SSE stream's last event when the server disconnects its user (no id: EPHEMERAL)."""
    return Notification("", BROADCAST, DISCONNECT, encode_fields(disconnect_fields()))
