"""notifier in Flask: the extension, its blueprint, views and WebSocket actions."""
from .extension import Notifier

__all__ = ["Notifier"]
