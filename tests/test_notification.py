"""Ids sort as plain strings in publish order; wire forms are built once and correct."""
import json

import pytest

from notifier.brokers.memory import MemoryBroker
from notifier.brokers.redis_stream import to_notification_id
from notifier.config import Settings
from notifier.core.notification import Notification, encode_fields, format_id, parse_id


def test_ids_are_fixed_width_so_string_order_is_publish_order():
    ids = [format_id(1_700_000_000_000, 9), format_id(1_700_000_000_000, 10), format_id(1_700_000_000_001, 0)]
    assert ids == sorted(ids)
    assert len({len(i) for i in ids}) == 1


def test_parse_id_round_trips_and_rejects_garbage():
    assert parse_id(format_id(123, 45)) == (123, 45)
    for bad in ["", "abc", "1-2", "1700000000000-00000x", "1700000000000000000"]:
        with pytest.raises(ValueError):
            parse_id(bad)


def test_redis_stream_ids_map_to_ordered_notification_ids():
    assert to_notification_id(b"1700000000000-9") < to_notification_id(b"1700000000000-10")


def test_memory_broker_ids_increase_even_within_one_millisecond():
    broker = MemoryBroker(Settings.load({}))
    ids = [broker.publish([("@all", "t", b'{"title":"x"}')]).id for _ in range(2000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_memory_broker_history_is_bounded():
    broker = MemoryBroker(Settings.load({"NOTIFIER_HISTORY_SIZE": 5}))
    ids = [broker.publish([("@all", "t", b'{"title":"x"}')]).id for _ in range(8)]
    assert [n.id for n in broker.ring] == ids[-5:]


def test_wire_forms():
    fields = {"type": "order.created", "title": "Hi", "message": "line1\nline2", "ts": "2026-01-01T00:00:00.000Z"}
    n = Notification(format_id(1, 2), "@all", "order.created", encode_fields(fields))
    assert json.loads(n.body) == {"id": n.id, **fields}
    assert list(json.loads(n.body))[0] == "id"
    assert n.sse_chunk == b"id: " + n.id.encode() + b"\nevent: order.created\ndata: " + n.body + b"\n\n"
    assert n.sse_chunk.count(b"\n") == 4  # the JSON stays on one line
    assert n.ws_frame[0] == 0x81 and n.ws_frame[1] == len(n.body) and n.ws_frame[2:] == n.body


@pytest.mark.parametrize("size,header_len", [(125, 2), (126, 4), (65535, 4), (65536, 10)])
def test_ws_frame_length_encodings(size, header_len):
    fields = {"message": "x" * size}
    n = Notification(format_id(1, 2), "@all", "t", encode_fields(fields))
    assert len(n.ws_frame) == len(n.body) + (2 if len(n.body) < 126 else 4 if len(n.body) < 65536 else 10)
    assert n.ws_frame.endswith(n.body)
