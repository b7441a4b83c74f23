"""Wake-ups for the Redis follower: it reads the stream when something it may want is there.

Every worker follows the one stream, but most entries are for hub keys no connection of
the worker listens to, and a wake per entry (~100-220 µs) was most of what following
cost. So the publish and presence scripts also PUBLISH an empty message on
``<prefix>:wake:<hub key>`` per key they add entries for, and each follower SUBSCRIBEs to
the channels of exactly the keys its hub has subscribers for. Woken, it reads the stream
from its last id; otherwise it reads once a WAKE_EVERY, skipping in large pages what it
does not want. The stream stays the truth: a wake carries nothing, and one that is lost
(a dropped connection, a publisher of an older version) only delays an entry to the next
timed read.
"""
from __future__ import annotations

import os
import select
from typing import Any, Callable

from .base import HubKeys

CHUNK = 1000
"""Channels per SUBSCRIBE / UNSUBSCRIBE command."""


def wake_channel_prefix(prefix: str) -> str:
    """The channels' common start: the hub key follows it."""
    return f"{prefix}:wake:"


class Nudge:
    """A self-pipe: any thread (a connection attaching) tells the follower, waiting in
    poll, that hub keys changed; one write per wait however many change."""

    def __init__(self) -> None:
        self.fileno, self._write = os.pipe()
        os.set_blocking(self.fileno, False)
        os.set_blocking(self._write, False)
        self._pending = False

    def poke(self) -> None:
        if not self._pending:
            self._pending = True
            try:
                os.write(self._write, b"!")
            except BlockingIOError:  # full: it has been told already
                pass

    @property
    def pending(self) -> bool:
        return self._pending

    def take(self) -> bool:
        """Whether it was poked since the last take. Drained before the flag is cleared, so
        a poke that comes after this sees the flag clear, or its byte stays in the pipe."""
        try:
            while os.read(self.fileno, 512):
                pass
        except BlockingIOError:
            pass
        poked, self._pending = self._pending, False
        return poked

    def __del__(self) -> None:
        for fd in (getattr(self, "fileno", None), getattr(self, "_write", None)):
            if fd is not None:
                os.close(fd)


class Wakes:
    """One follower's pub/sub connection, subscribed to the wake channel of every key its
    hub wants (of every key, by pattern, without a hub to ask)."""

    def __init__(self, prefix: str, keys: HubKeys | None, nudge: Nudge, connect: Callable[[], Any]) -> None:
        self.channel = wake_channel_prefix(prefix)
        self.keys = keys
        self.nudge = nudge
        self._connect = connect
        self._conn: Any = None
        self._poll: Any = None
        self._subscribed: set[str] = set()
        self._unconfirmed = 0
        self._nudged = False  # the pipe was readable at the last wait

    def sync(self) -> None:
        """Subscribe to the keys the hub wants now, unsubscribe from those it no longer
        does. Returns once Redis confirmed the new subscriptions: a stream read after this
        sees every entry whose wake this connection will not get."""
        self._nudged = False
        if self._conn is None:
            self.nudge.take()
            if self.keys is not None:
                self.keys.key_changes()  # all of them are subscribed below
            conn = self._connect()
            conn.connect()
            self._conn, self._subscribed, self._unconfirmed = conn, set(), 0
            self._poll = select.poll()  # gevent's where gevent patched select
            self._poll.register(conn._sock.fileno(), select.POLLIN)
            self._poll.register(self.nudge.fileno, select.POLLIN)
            if self.keys is None:
                self._send([("PSUBSCRIBE", _glob_escape(self.channel) + "*")], 1)
                return self._confirm()
            add, drop = self.keys.keys(), []
        elif (self._nudged or self.nudge.pending) and self.nudge.take() and self.keys is not None:
            changes, wants = self.keys.key_changes(), self.keys.wants
            add = [k for k in changes if k not in self._subscribed and wants(k)]
            drop = [k for k in changes if k in self._subscribed and not wants(k)]
        else:
            return None
        self._subscribed.difference_update(drop)
        self._subscribed.update(add)
        commands = [(verb, *(self.channel + k for k in keys[i:i + CHUNK]))
                    for verb, keys in (("UNSUBSCRIBE", drop), ("SUBSCRIBE", add)) for i in range(0, len(keys), CHUNK)]
        self._send(commands, len(add))
        return self._confirm()

    def covers(self, keys: set[str]) -> bool:
        """Whether every one of ``keys`` wakes the follower now (any thread may ask)."""
        if self._conn is None:
            return False
        subscribed = self._subscribed
        return self.keys is None or all(key in subscribed for key in keys)

    def wait(self, timeout: float) -> None:
        """Until a wake or a nudge comes, or ``timeout`` seconds pass; takes every wake come."""
        for fd, _event in self._poll.poll(timeout * 1000):
            if fd == self.nudge.fileno:
                self._nudged = True
            else:
                self._read()  # readable: a reply at least is there (or EOF: ConnectionError)
                self._drain()

    def close(self) -> None:
        conn, self._conn, self._poll = self._conn, None, None
        if conn is not None:
            conn.disconnect()

    def _send(self, commands: list[tuple[Any, ...]], confirmations: int) -> None:
        if commands:
            self._conn.send_packed_command(self._conn.pack_commands(commands), check_health=False)
        self._unconfirmed += confirmations

    def _confirm(self) -> None:
        while self._unconfirmed > 0:
            self._read()
        self._drain()

    def _drain(self) -> None:
        """Read the replies already received (a wait follows: no system call for more)."""
        parser = self._conn._parser
        has_data = getattr(getattr(parser, "_reader", None), "has_data", None)  # hiredis: buffered bytes
        if has_data is None:  # redis-py's own parser
            while self._conn.can_read(0):
                self._read()
            return
        while has_data():
            self._read()

    def _read(self) -> None:
        reply = self._conn.read_response()
        if reply[0] in (b"subscribe", b"psubscribe"):
            self._unconfirmed -= 1
        # a message (or an unsubscribe's reply) is only a wake: the stream read follows


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
