"""POST /notify against the live server: what is accepted, and the error contract."""

from __future__ import annotations

import json

import pytest

from clients import WSClient, post_notify, sync_subscribers

MAX_BYTES = 4096


@pytest.fixture(scope="module")
def server(server_factory):
    return server_factory(workers=1, env={"NOTIFIER_MAX_MESSAGE_BYTES": MAX_BYTES})


def assert_json_error(reply, status):
    assert reply.status == status, f"expected {status}, got {reply.status} {reply.text!r}"
    assert reply.headers.get("content-type", "").startswith("application/json"), reply.headers
    assert isinstance(reply.body, dict), reply.text
    assert isinstance(reply.error, str) and reply.error.strip(), f"no error string in {reply.text!r}"


# -- accepted -------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [
    {"title": "t"},
    {"message": "m"},
    {"title": "t", "message": "m", "type": "order.shipped:v1-a_b", "data": {"k": [1, 2, {"x": None}]}},
    {"title": "t", "user_id": "42"},
    {"title": "t", "topic": "shop/orders.eu:1-a_b"},
    {"title": "x" * 256},
    {"title": "t", "type": "t" * 64},
    {"title": "t", "topic": "t" * 128},
    {"title": "t", "user_id": "u" * 128},
    {"message": "", "title": "only title is enough"},
    {"title": "t", "data": {}},
])
def test_valid_publish_is_accepted_with_an_id(server, body):
    r = post_notify(server.url, body)
    assert r.status == 202, r.text
    assert isinstance(r.body, dict) and isinstance(r.body.get("id"), str) and r.body["id"], r.text


def test_content_type_with_charset_is_accepted(server):
    r = post_notify(server.url, {"title": "t"}, content_type="application/json; charset=utf-8")
    assert r.status == 202, r.text


def test_body_at_the_size_limit_is_accepted_and_one_byte_more_is_413(server):
    def body_of(size):
        base = json.dumps({"message": ""}).encode()
        return json.dumps({"message": "m" * (size - len(base))}).encode()

    at_limit = body_of(MAX_BYTES)
    assert len(at_limit) == MAX_BYTES
    r = post_notify(server.url, raw=at_limit)
    assert r.status == 202, r.text

    over = body_of(MAX_BYTES + 1)
    assert_json_error(post_notify(server.url, raw=over), 413)


def test_much_too_large_body_is_413(server):
    assert_json_error(post_notify(server.url, {"message": "m" * (MAX_BYTES * 20)}), 413)


def test_published_fields_are_delivered_as_given(server, closing):
    ws = closing(WSClient(server.url))
    sync_subscribers(server.url, [ws])
    body = {"type": "invoice.paid", "title": "Paid é ✓", "message": "Invoice #7\nline 2",
            "data": {"amount": 12.5, "tags": ["a", "b"], "nested": {"ok": True}}}
    r = post_notify(server.url, body)
    assert r.status == 202, r.text
    got = ws.next_notification(5)
    assert got["id"] == r.body["id"]
    for key, value in body.items():
        assert got[key] == value


# -- rejected -------------------------------------------------------------------------------

BAD_FIELDS = {
    "unknown field": {"title": "t", "color": "red"},
    "both user_id and topic": {"title": "t", "user_id": "1", "topic": "x"},
    "neither title nor message": {"type": "x"},
    "empty object": {},
    "only data": {"data": {"a": 1}},
    "title not a string": {"title": 5},
    "message not a string": {"message": ["a"]},
    "title null": {"title": None},
    "data a string": {"title": "t", "data": "x"},
    "data a list": {"title": "t", "data": [1]},
    "user_id a fraction": {"title": "t", "user_id": 4.2},
    "user_id a boolean": {"title": "t", "user_id": True},
    "topic a number": {"title": "t", "topic": 7},
    "type a number": {"title": "t", "type": 1},
    "title too long": {"title": "x" * 257},
    "empty user_id": {"title": "t", "user_id": ""},
    "user_id too long": {"title": "t", "user_id": "u" * 129},
    "empty topic": {"title": "t", "topic": ""},
    "topic too long": {"title": "t", "topic": "t" * 129},
    "topic with a space": {"title": "t", "topic": "a b"},
    "topic with a hash": {"title": "t", "topic": "a#b"},
    "topic with unicode": {"title": "t", "topic": "caf\u00e9"},
    "empty type": {"title": "t", "type": ""},
    "type too long": {"title": "t", "type": "t" * 65},
    "type with a space": {"title": "t", "type": "bad type"},
    "type with a slash": {"title": "t", "type": "a/b"},
    "reserved type prefix": {"title": "t", "type": "notifier.reset"},
}


@pytest.mark.parametrize("body", list(BAD_FIELDS.values()), ids=list(BAD_FIELDS))
def test_bad_fields_are_400(server, body):
    assert_json_error(post_notify(server.url, body), 400)


@pytest.mark.parametrize("raw", [b'{"title": ', b"not json", b"", b"\xff\xfe{}", b'{"title": "t"} trailing'],
                         ids=["truncated", "garbage", "empty", "not utf-8", "trailing data"])
def test_bad_json_is_400(server, raw):
    assert_json_error(post_notify(server.url, raw=raw), 400)


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"title"', b"42", b"null", b"true"],
                         ids=["array", "string", "number", "null", "bool"])
def test_json_that_is_not_an_object_is_400(server, raw):
    assert_json_error(post_notify(server.url, raw=raw), 400)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None],
                         ids=["text/plain", "form", "missing"])
def test_body_that_is_not_declared_json_is_415(server, content_type):
    r = post_notify(server.url, raw=b'{"title": "t"}', content_type=content_type)
    assert_json_error(r, 415)
