"""The core: notifications, the hub and its subscribers, the per-connection send queue.

Nothing here knows a socket, Flask or Redis, and nothing imports gevent: the scheduling
primitives come from a ``notifier.runtime`` handed in.
"""
