"""The WebSocket client protocol: ``{"action": "subscribe" | "unsubscribe" | "presence", "topic": T}``.

Each message gets one answer — ``{"ack": action, "topic": T}`` (for presence, with the
topic's ``users`` and ``connections``) or ``{"error": ...}`` — and the connection stays
open either way.
"""
from __future__ import annotations

import json
from typing import Any

from ..auth import check_topic_access
from ..core.subscriber import Subscriber
from ..errors import InvalidNotification, NotifierError
from ..service import Service
from ..validation import check_topic

ACTIONS = ("subscribe", "unsubscribe", "presence")


def answer(service: Service, sub: Subscriber, raw: Any) -> dict[str, Any]:
    """The answer to one client message: an ack, or an error."""
    try:
        message = parse(raw)
        action = message.get("action")
        if action not in ACTIONS:
            return {"error": "action must be 'subscribe', 'unsubscribe' or 'presence'"}
        if action == "subscribe":
            topic = check_topic_access(message.get("topic"), sub.grant)
            limit = service.settings.max_topics
            if topic not in sub.keys and sub.topics >= limit:
                return {"error": f"too many topics: at most {limit} (NOTIFIER_MAX_TOPICS)"}
            service.hub.add_topic(sub, topic)
        elif action == "unsubscribe":
            topic = check_topic(message.get("topic"))
            service.hub.remove_topic(sub, topic)
        else:
            topic = check_topic(message.get("topic"))
            if topic not in sub.keys:
                return {"error": f"not subscribed to {topic}"}
            if not service.presence.rules.events(topic):
                return {"error": f"no presence on {topic}: not in NOTIFIER_PRESENCE_EVENTS"}
            return {"ack": action, **service.presence.topic(topic)}
        return {"ack": action, "topic": topic}
    except NotifierError as exc:
        return {"error": exc.message}


def parse(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, str):
        raise InvalidNotification("binary messages are not supported; send JSON text")
    try:
        message = json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidNotification("message is not valid JSON") from None
    if not isinstance(message, dict):
        raise InvalidNotification("message must be a JSON object")
    return message
