"""Brokers: move notifications between processes and keep history (in-process, or Redis)."""
from .base import Broker, create_broker

__all__ = ["Broker", "create_broker"]
