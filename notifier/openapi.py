"""The HTTP API as OpenAPI 3.1, served at /openapi.json; tests keep it true to the routes."""
from __future__ import annotations

from typing import Any

ERROR = {"$ref": "#/components/schemas/Error"}
ID = {"type": "string", "pattern": r"^\d{13}-\d{6}$", "description": "sorts as a plain string in publish order"}
TOPIC = {"type": "string", "pattern": r"^[A-Za-z0-9_.:/-]{1,128}$"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ERROR}}}


def _limit(default: int) -> dict[str, Any]:
    return {"name": "limit", "in": "query", "required": False,
            "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": default}}


def _text(description: str, media_type: str) -> dict[str, Any]:
    return {"description": description, "content": {media_type: {"schema": {"type": "string"}}}}


def _subscribe_params(*, resume: bool) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {"name": "topic", "in": "query", "required": False, "schema": {"type": "array", "items": TOPIC},
         "style": "form", "explode": True, "description": "public topics, and private-… ones the token grants"},
        {"name": "token", "in": "query", "required": False, "schema": {"type": "string"},
         "description": "subscriber JWT (HS256, NOTIFIER_SECRET); or Authorization: Bearer"},
    ]
    if resume:
        params.append({"name": "last_event_id", "in": "query", "required": False, "schema": {"type": "string"},
                       "description": "resume after this id (SSE also takes the Last-Event-ID header); "
                                      "one that cannot be resumed from gets notifier.reset first"})
    return params


SUBSCRIBE_ERRORS = {
    "400": _error("bad topic, too many topics"),
    "401": _error("bad, expired or wrongly signed token"),
    "403": _error("private topic not granted, or origin not allowed"),
    "429": _error("too many connections for this user"),
    "503": _error("history unavailable, or the server is shutting down"),
}


INBOX_ERRORS = {
    "400": _error("a bad id, limit or body"),
    "401": _error("no user: a token (or the app's session) is needed"),
    "403": _error("a page of another origin using the app's session"),
    "404": _error("not in the user's inbox, or the inbox is off (NOTIFIER_INBOX_URL unset)"),
    "503": _error("the inbox database is unavailable (see Retry-After)"),
}


def spec(base_path: str = "") -> dict[str, Any]:
    """The OpenAPI document, with ``base_path`` as the server URL (where notifier is mounted)."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "notifier", "version": "0.1.0",
                 "description": "Real-time notifications over WebSocket and Server-Sent Events."},
        "servers": [{"url": base_path or "/"}],
        "paths": {
            "/notify": {"post": {
                "summary": "Publish a notification, or a batch of 1 to 1000 (all stored or none)",
                "security": [{"publisherKey": []}, {}],
                "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                                "schema": {"type": "string", "pattern": "^[ -~]{1,255}$"},
                                "description": "a repeat from the same publisher answers the same id and "
                                               "publishes nothing again (NOTIFIER_IDEMPOTENCY_TTL)"}],
                "requestBody": {"required": True,
                                "content": {"application/json": {"schema": {"oneOf": [
                                    {"$ref": "#/components/schemas/Publish"},
                                    {"type": "array", "minItems": 1, "maxItems": 1000,
                                     "items": {"$ref": "#/components/schemas/Publish"}}]}}}},
                "responses": {
                    "202": {"description": "accepted: it is in history ({\"ids\": [...]} in order for a batch)",
                            "content": {"application/json": {"schema": {"oneOf": [
                                {"type": "object", "required": ["id"], "properties": {"id": ID}},
                                {"type": "object", "required": ["ids"],
                                 "properties": {"ids": {"type": "array", "items": ID}}}]}}}},
                    "400": _error("bad JSON, fields or Idempotency-Key (for a batch, with the index of the first "
                                  "bad item)"),
                    "401": _error("publisher key missing"),
                    "403": _error("wrong key, or not a local peer while NOTIFIER_API_KEYS is unset"),
                    "408": _error("body not received within NOTIFIER_BODY_TIMEOUT"),
                    "413": _error("body larger than NOTIFIER_MAX_MESSAGE_BYTES (a batch: NOTIFIER_MAX_BATCH_BYTES)"),
                    "415": _error("not application/json"),
                    "422": _error("Idempotency-Key already used for another body"),
                    "429": _error("publish rate over NOTIFIER_PUBLISH_RATE (see Retry-After)"),
                    "503": _error("broker unavailable or too busy: not accepted (see Retry-After)"),
                },
            }},
            "/disconnect": {"post": {
                "summary": "End every connection of a user, on every worker and host (WebSocket close "
                           "4001, SSE a last notifier.disconnect event)",
                "security": [{"publisherKey": []}, {}],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["user_id"], "additionalProperties": False,
                    "properties": {"user_id": {"type": "string", "minLength": 1}}}}}},
                "responses": {
                    "202": {"description": "accepted: connections end within a second",
                            "content": {"application/json": {"schema": {"type": "object"}}}},
                    "400": _error("bad JSON, or not {\"user_id\": ...}"),
                    "401": _error("publisher key missing"),
                    "403": _error("wrong key, or not a local peer while NOTIFIER_API_KEYS is unset"),
                    "415": _error("not application/json"),
                    "429": _error("publish rate over NOTIFIER_PUBLISH_RATE (see Retry-After)"),
                    "503": _error("broker unavailable: not accepted (see Retry-After)"),
                },
            }},
            "/presence": {"get": {
                "summary": "Who is online: a topic's users and connections, or one user's connections, "
                           "across every worker and host",
                "security": [{"publisherKey": []}, {}],
                "parameters": [
                    {"name": "topic", "in": "query", "schema": {"type": "string"}},
                    {"name": "user_id", "in": "query", "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                ],
                "responses": {
                    "200": {"description": "{topic, users, connections} or {user_id, online, connections}",
                            "content": {"application/json": {"schema": {"type": "object"}}}},
                    "400": _error("neither or both of topic and user_id, a bad topic or limit"),
                    "401": _error("publisher key missing"),
                    "403": _error("wrong key, or not a local peer while NOTIFIER_API_KEYS is unset"),
                    "503": _error("broker unavailable (see Retry-After)"),
                },
            }},
            "/events": {"get": {
                "summary": "Subscribe with Server-Sent Events",
                "parameters": _subscribe_params(resume=True),
                "responses": {"200": {"description": "the event stream",
                                      "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                              **SUBSCRIBE_ERRORS},
            }},
            "/ws": {"get": {
                "summary": "Subscribe over WebSocket (needs Upgrade: websocket)",
                "parameters": _subscribe_params(resume=True),
                "responses": {"101": {"description": "switching to WebSocket"},
                              "426": _error("not a WebSocket handshake"), **SUBSCRIBE_ERRORS},
            }},
            "/notifications": {"get": {
                "summary": "History as JSON, with the same entitlement rules",
                "parameters": _subscribe_params(resume=False) + [
                    {"name": "since", "in": "query", "required": False, "schema": ID},
                    _limit(100),
                ],
                "responses": {
                    "200": {"description": "notifications, oldest first",
                            "content": {"application/json": {"schema": {
                                "type": "object", "required": ["notifications", "reset", "more"],
                                "properties": {
                                    "notifications": {"type": "array",
                                                      "items": {"$ref": "#/components/schemas/Notification"}},
                                    "reset": {"type": "boolean"}, "more": {"type": "boolean"}}}}}},
                    "400": _error("bad topic, since or limit"),
                    "401": _error("bad token"),
                    "403": _error("private topic not granted"),
                    "503": _error("history unavailable"),
                },
            }},
            "/inbox": {"get": {
                "summary": "The identified user's inbox, newest first, with read state and the unread count",
                "parameters": _subscribe_params(resume=False)[1:] + [
                    {"name": "before", "in": "query", "required": False, "schema": ID,
                     "description": "only notifications older than this id (the next page)"},
                    _limit(50),
                ],
                "responses": {
                    "200": {"description": "a page of the inbox",
                            "content": {"application/json": {"schema": {
                                "type": "object", "required": ["notifications", "unread", "more"],
                                "properties": {
                                    "notifications": {"type": "array", "items": {"allOf": [
                                        {"$ref": "#/components/schemas/Notification"},
                                        {"type": "object", "required": ["read"],
                                         "properties": {"read": {"type": "boolean"}}}]}},
                                    "unread": {"type": "integer"}, "more": {"type": "boolean"}}}}}},
                    **INBOX_ERRORS,
                },
            }},
            "/inbox/read": {"post": {
                "summary": "Mark notifications of the identified user read (ids, or all); every connection "
                           "of the user gets notifier.read",
                "parameters": _subscribe_params(resume=False)[1:],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"oneOf": [
                    {"type": "object", "required": ["ids"], "additionalProperties": False,
                     "properties": {"ids": {"type": "array", "items": ID, "minItems": 1, "maxItems": 1000}}},
                    {"type": "object", "required": ["all"], "additionalProperties": False,
                     "properties": {"all": {"const": True}}}]}}}},
                "responses": {"200": {"description": "the unread count after", "content": {"application/json": {
                    "schema": {"type": "object", "required": ["unread"],
                               "properties": {"unread": {"type": "integer"}}}}}},
                              "415": _error("not application/json"), **INBOX_ERRORS},
            }},
            "/inbox/{notification_id}": {"delete": {
                "summary": "Delete one notification of the identified user; every connection of the user "
                           "gets notifier.deleted",
                "parameters": [{"name": "notification_id", "in": "path", "required": True, "schema": ID},
                               *_subscribe_params(resume=False)[1:]],
                "responses": {"204": {"description": "deleted"}, **INBOX_ERRORS},
            }},
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "serving"}}}},
            "/readyz": {"get": {"summary": "Readiness: the broker is reachable",
                                "responses": {"200": {"description": "ready"}, "503": _error("broker unavailable")}}},
            "/metrics": {"get": {
                "summary": "Prometheus metrics, summed over every worker",
                "description": "Open to loopback peers; others need a publisher key (or NOTIFIER_METRICS_PUBLIC).",
                "security": [{"publisherKey": []}, {}],
                "responses": {
                    "200": {"description": "Prometheus text exposition format",
                            "content": {"text/plain": {"schema": {"type": "string"}}}},
                    "401": _error("publisher key missing (not a loopback peer)"),
                    "403": _error("wrong key, or not a loopback peer while NOTIFIER_API_KEYS is unset"),
                },
            }},
            "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI"}}}},
            "/notifier.js": {"get": {"summary": "The browser client (WebSocket, SSE fallback, resume)",
                                     "responses": {"200": _text("the script", "text/javascript")}}},
            "/notifier.d.ts": {"get": {"summary": "TypeScript declarations of the browser client",
                                       "responses": {"200": _text("the declarations", "application/typescript")}}},
            "/demo": {"get": {"summary": "A live demo page: notifications as they arrive, and a publish form",
                              "responses": {"200": _text("the page", "text/html")}}},
        },
        "components": {
            "securitySchemes": {"publisherKey": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
                "Publish": {
                    "type": "object", "additionalProperties": False,
                    "properties": {
                        "type": {"type": "string", "pattern": r"^[A-Za-z0-9_.:-]{1,64}$", "default": "notification"},
                        "title": {"type": "string", "maxLength": 256},
                        "message": {"type": "string"},
                        "user_id": {"type": "string", "minLength": 1, "maxLength": 128},
                        "topic": TOPIC,
                        "data": {"type": "object"},
                        "inbox": {"type": "boolean", "default": True,
                                  "description": "false: not kept in the user's inbox (true needs user_id)"},
                    },
                    "anyOf": [{"required": ["title"]}, {"required": ["message"]}],
                    "not": {"required": ["user_id", "topic"]},
                },
                "Notification": {
                    "type": "object", "required": ["id", "type", "title", "message", "ts"],
                    "properties": {"id": ID, "type": {"type": "string"}, "title": {"type": "string"},
                                   "message": {"type": "string"}, "ts": {"type": "string", "format": "date-time"},
                                   "user_id": {"type": "string"}, "topic": TOPIC, "data": {"type": "object"}},
                },
            },
        },
    }
