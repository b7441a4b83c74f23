"""For a host app's tests: what the app published, captured as it happens.

    from notifier.testing import captured

    def test_new_comment_notifies_the_author(app, client):
        with captured(app) as published:
            client.post("/posts/1/comments", data={"body": "hi"})
        assert [(n["user_id"], n["type"]) for n in published] == [("1", "comment.created")]

Each item is the notification as delivered (``id``, ``type``, ``title``, ``message``, ``ts``,
and ``user_id`` / ``topic`` / ``data`` when set). The notifications are really published
(the embedded broker needs nothing running), so a test may also subscribe and receive them.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from flask import Flask

from .service import Service


@contextmanager
def captured(app: Flask) -> Iterator[list[dict[str, Any]]]:
    """Collect every notification ``app`` publishes inside the ``with`` block, in order."""
    service: Service = app.extensions["notifier"]
    published: list[dict[str, Any]] = []

    def listen(fields: dict[str, Any], notification_id: str) -> None:
        published.append({"id": notification_id, **fields})

    service.listeners.append(listen)
    try:
        yield published
    finally:
        service.listeners.remove(listen)
