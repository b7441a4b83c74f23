"""The browser side: GET /notifier.js (the client), /notifier.d.ts (its types), /demo (a live page).

The files live in ``notifier/static/`` (package data) and are served from the notifier
blueprint, so they follow its ``url_prefix`` in drop-in mode; the client and the demo use
URLs relative to where they were loaded from.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from flask import Blueprint, Response, send_file

STATIC = Path(__file__).resolve().parent / "static"

#: route -> (file in static/, Content-Type)
FILES = {
    # text/* types get "; charset=utf-8" from werkzeug; others carry it here
    "/notifier.js": ("notifier.js", "text/javascript"),
    "/notifier.d.ts": ("notifier.d.ts", "application/typescript; charset=utf-8"),
    "/demo": ("demo.html", "text/html"),
}


def register(bp: Blueprint, demo: bool = True) -> None:
    """Add the browser routes to the notifier blueprint (``/demo`` only when ``demo``)."""
    for rule, (name, mimetype) in FILES.items():
        if rule == "/demo" and not demo:
            continue
        bp.add_url_rule(rule, endpoint=name.replace(".", "_"), view_func=_sender(name, mimetype))


def _sender(name: str, mimetype: str) -> Callable[[], Response]:
    path = STATIC / name

    def send() -> Response:
        # ETag + no-cache: browsers revalidate, so a new version is picked up at once.
        response = send_file(path, mimetype=mimetype, conditional=True, etag=True, max_age=None)
        response.cache_control.no_cache = True
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    return send
