"""The standalone server: ``create_app()`` is what ``wsgi.py`` and the Procfile run."""
from __future__ import annotations

import logging
from typing import Any, Mapping

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from .config import log_level
from .flask import Notifier


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """A Flask app serving only notifier's routes, configured from the environment."""
    logging.basicConfig(
        level=log_level(),
        format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    app = Flask("notifier")
    if config:
        app.config.update(config)
    Notifier().init_app(app, standalone=True)

    @app.errorhandler(HTTPException)
    def json_error(exc: HTTPException) -> Response:
        # Routing errors (404, 405) happen before any blueprint: answer them in JSON too.
        response = jsonify(error=exc.description or exc.name)
        response.status_code = exc.code or 500
        return response

    return app
