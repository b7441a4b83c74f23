"""notifier: real-time notifications for Flask apps over WebSocket and Server-Sent Events.

The public API is what this module exports. Its heavy parts (Flask, gevent) load on
first use, so gunicorn's master can import ``notifier.config`` without pulling gevent
in before the worker patches itself.
"""
from __future__ import annotations

from importlib import import_module
from typing import Any

from .errors import (
    BrokerUnavailable,
    ConfigError,
    Forbidden,
    InvalidNotification,
    NotifierError,
    PayloadTooLarge,
    Unauthorized,
    UnsupportedMediaType,
)

_LAZY = {"Notifier": ".flask", "create_app": ".app", "Settings": ".config"}

__all__ = [
    "BrokerUnavailable",
    "ConfigError",
    "Forbidden",
    "InvalidNotification",
    "Notifier",
    "NotifierError",
    "PayloadTooLarge",
    "Settings",
    "Unauthorized",
    "UnsupportedMediaType",
    "create_app",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'notifier' has no attribute {name!r}")
