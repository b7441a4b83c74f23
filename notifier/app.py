"""The standalone server: ``create_app()`` is what ``wsgi.py`` and the Procfile run."""
from __future__ import annotations

import logging
import os
from typing import Any, Mapping

from flask import Flask

from .extension import Notifier


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """A Flask app serving only notifier's routes, configured from the environment."""
    logging.basicConfig(
        level=os.environ.get("NOTIFIER_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    app = Flask("notifier")
    if config:
        app.config.update(config)
    Notifier(app)
    return app
