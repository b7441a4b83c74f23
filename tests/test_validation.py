"""Every rule of the publish contract, with the message that explains it."""
import re

import pytest

from notifier.errors import InvalidNotification
from notifier.validation import check_topic, validate_publish


def test_minimal_notification_gets_defaults_and_a_millisecond_utc_timestamp():
    fields = validate_publish({"title": "Hi"})
    assert fields["type"] == "notification" and fields["title"] == "Hi" and fields["message"] == ""
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", fields["ts"])
    assert "user_id" not in fields and "topic" not in fields and "data" not in fields


def test_full_notification_keeps_wire_order():
    fields = validate_publish({"data": {"a": 1}, "topic": "orders/eu", "message": "m", "type": "order.created:v2"})
    assert list(fields) == ["type", "title", "message", "ts", "topic", "data"]


@pytest.mark.parametrize(
    "payload,words",
    [
        ([], "JSON object"),
        ("x", "JSON object"),
        (None, "JSON object"),
        ({}, "at least one of title, message"),
        ({"type": "x"}, "at least one of title, message"),
        ({"title": "t", "extra": 1}, "unknown field"),
        ({"title": 5}, "title must be a string"),
        ({"title": None}, "title must be a string"),
        ({"title": "x" * 257}, "title must be"),
        ({"message": ["m"]}, "message must be a string"),
        ({"title": "t", "type": ""}, "type must be"),
        ({"title": "t", "type": "a b"}, "type must be"),
        ({"title": "t", "type": "x" * 65}, "type must be"),
        ({"title": "t", "type": 3}, "type must be"),
        ({"title": "t", "type": "notifier.reset"}, "reserved"),
        ({"title": "t", "user_id": ""}, "user_id must be"),
        ({"title": "t", "user_id": "u" * 129}, "user_id must be"),
        ({"title": "t", "user_id": 4.2}, "user_id must be a string, an integer or a UUID"),
        ({"title": "t", "user_id": True}, "user_id must be a string, an integer or a UUID"),
        ({"title": "t", "topic": ""}, "topic must be"),
        ({"title": "t", "topic": "a b"}, "topic must be"),
        ({"title": "t", "topic": "@all"}, "topic must be"),
        ({"title": "t", "topic": "t" * 129}, "topic must be"),
        ({"title": "t", "topic": 1}, "topic must be a string"),
        ({"title": "t", "user_id": "u", "topic": "x"}, "not both"),
        ({"title": "t", "data": [1]}, "data must be a JSON object"),
        ({"title": "t", "data": "x"}, "data must be a JSON object"),
    ],
)
def test_bad_payloads_are_refused_with_a_message_that_says_why(payload, words):
    with pytest.raises(InvalidNotification) as info:
        validate_publish(payload)
    assert words in info.value.message
    assert info.value.status == 400


def test_limits_are_inclusive():
    validate_publish({"title": "x" * 256, "type": "t" * 64, "user_id": "u" * 128})
    validate_publish({"title": "t", "topic": "a" * 128})


def test_check_topic_accepts_the_documented_alphabet():
    assert check_topic("Orders_2.eu:west/x-1") == "Orders_2.eu:west/x-1"


def test_settings_come_from_config_then_environment_and_bad_values_name_the_key(monkeypatch):
    from notifier.config import Settings, check_workers
    from notifier.errors import ConfigError

    monkeypatch.setenv("NOTIFIER_QUEUE_SIZE", "7")
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert Settings.load({}).queue_size == 7
    assert Settings.load({"NOTIFIER_QUEUE_SIZE": 9}).queue_size == 9
    assert Settings.load({"NOTIFIER_API_KEYS": " a, b ,"}).api_keys == ("a", "b")
    for key, value in [("NOTIFIER_QUEUE_SIZE", "many"), ("NOTIFIER_HEARTBEAT", "0"), ("REDIS_URL", "http://x"),
                       ("NOTIFIER_FLUSH_INTERVAL", "nan"), ("NOTIFIER_HEARTBEAT", "inf")]:
        with pytest.raises(ConfigError) as info:
            Settings.load({key: value})
        assert info.value.key == key
    with pytest.raises(ConfigError, match="REDIS_URL"):
        check_workers(2, Settings.load({}))
    check_workers(2, Settings.load({"REDIS_URL": "redis://127.0.0.1:1/0"}))


def test_heroku_redis_tls_can_skip_verifying_its_self_signed_certificate(monkeypatch):
    from notifier.config import Settings
    from notifier.errors import ConfigError

    monkeypatch.delenv("NOTIFIER_REDIS_VERIFY_TLS", raising=False)
    url = "rediss://:pw@ec2.example:6380"
    assert Settings.load({"REDIS_URL": url}).redis_url == url
    off = {"REDIS_URL": url, "NOTIFIER_REDIS_VERIFY_TLS": "false"}
    assert Settings.load(off).redis_url == url + "?ssl_cert_reqs=none"
    assert Settings.load({**off, "REDIS_URL": url + "/0?db=1"}).redis_url == url + "/0?db=1&ssl_cert_reqs=none"
    assert Settings.load({**off, "REDIS_URL": "redis://h:1"}).redis_url == "redis://h:1"  # no TLS, nothing to skip
    with pytest.raises(ConfigError, match="NOTIFIER_REDIS_VERIFY_TLS"):
        Settings.load({**off, "NOTIFIER_REDIS_VERIFY_TLS": "maybe"})
