"""Transports: move what the hub offers onto the wire — WebSocket and Server-Sent Events."""
