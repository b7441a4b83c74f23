"""Why a connection is ended by the server: the WebSocket close code carries it on the wire
(an SSE stream just ends). Every code but 4001 means: reconnect and resume."""

NORMAL = 1000
GOING_AWAY = 1001
"""The server is shutting down."""
POLICY = 1008
"""Auth, origin, abuse, or the token expired."""
RESTART = 1012
"""The worker lost its place in history: resume from the last id seen."""
TOO_SLOW = 1013
"""The client's send queue overflowed, or history is unreachable for the moment."""
DISCONNECTED = 4001
"""Disconnected by the server (a logout, a revoked permission): do not reconnect."""
