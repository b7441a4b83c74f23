"""The Redis broker: one stream carries every notification, and is the history.

Publishing is ``XADD`` (capped at ``NOTIFIER_HISTORY_SIZE``): the 202 is sent only after
Redis has the entry, so an accepted notification is in history. Each worker follows the
stream with ``XREAD BLOCK`` from the last id it saw, in one background greenlet; after a
dropped connection it continues from that id, so nothing Redis accepted is skipped
(pub/sub would drop whatever was published while it reconnects).
"""
from __future__ import annotations

import logging
from typing import Any

import gevent
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .broker import Broker, Deliver
from .config import Settings
from .errors import BrokerUnavailable, ConfigError
from .notification import Notification, format_id

log = logging.getLogger(__name__)

BLOCK_MS = 5000
BATCH = 512
MAX_BACKOFF = 5.0


def to_notification_id(stream_id: bytes | str) -> str:
    if isinstance(stream_id, bytes):
        stream_id = stream_id.decode()
    ms, _, seq = stream_id.partition("-")
    return format_id(int(ms), int(seq))


def _client(url: str, socket_timeout: float) -> redis.Redis:
    # One retry, on connection errors only: it replaces a pooled connection that went
    # stale across a Redis restart. Timeouts are not retried: the command may have run.
    return redis.Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=1.0,
        health_check_interval=10,
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
    )


class RedisBroker(Broker):
    """Every worker on every host shares notifications and history through one Redis stream."""

    def __init__(self, settings: Settings) -> None:
        if not settings.redis_url:
            raise ConfigError("REDIS_URL", "required by the Redis broker")
        self.url = settings.redis_url
        self.stream = f"{settings.prefix}:stream"
        self.history_size = settings.history_size
        self._client = _client(self.url, socket_timeout=2.0)
        self._follower: gevent.Greenlet | None = None
        self._deliver: Deliver | None = None
        self._last: str | None = None
        self.connected = False
        self.reconnects = 0

    def publish(self, target: str, type: str, fields_json: bytes) -> str:
        try:
            stream_id = self._client.xadd(
                self.stream,
                {"t": target, "y": type, "n": fields_json},
                maxlen=self.history_size,
                approximate=True,
            )
        except redis.RedisError as exc:
            log.warning("publish refused: redis unavailable (%s)", exc)
            raise BrokerUnavailable("broker unavailable: notification not accepted, retry later") from exc
        return to_notification_id(stream_id)

    def ready(self) -> bool:
        try:
            return bool(self._client.ping())
        except redis.RedisError:
            return False

    def start(self, deliver: Deliver) -> None:
        self._deliver = deliver
        if self._follower is None or self._follower.dead:
            # Read the tail now, not in the greenlet: a subscriber that attaches right
            # after start() must get everything published after this point.
            if self._last is None:
                try:
                    self._last = self._tail(self._client)
                except redis.RedisError as exc:
                    log.warning("redis unavailable at start (%s); the follower will retry", exc)
            self._follower = gevent.spawn(self._follow)

    def stop(self) -> None:
        follower, self._follower = self._follower, None
        if follower is not None:
            follower.kill(block=True, timeout=2)

    def _tail(self, client: redis.Redis) -> str:
        last = client.xrevrange(self.stream, count=1)
        return last[0][0].decode() if last else "0-0"

    def _follow(self) -> None:
        """Follow the stream forever; on any Redis error, back off and go on from the last id."""
        client = _client(self.url, socket_timeout=BLOCK_MS / 1000 + 5)
        backoff = 0.1
        while True:
            try:
                if self._last is None:
                    self._last = self._tail(client)
                response = client.xread({self.stream: self._last}, count=BATCH, block=BLOCK_MS)
                if not self.connected:
                    self.connected = True
                    log.info("redis follower connected; following %s after %s", self.stream, self._last)
                backoff = 0.1
                for _stream, entries in response or ():
                    for stream_id, fields in entries:
                        self._last = stream_id.decode()
                        self._hand_over(self._last, fields)
            except redis.RedisError as exc:
                if self.connected:
                    self.reconnects += 1
                self.connected = False
                log.warning("redis follower lost connection (%s); retrying in %.1fs", exc, backoff)
                client.connection_pool.disconnect()
                gevent.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
            except Exception:
                log.exception("redis follower failed; retrying in %.1fs", backoff)
                gevent.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    def _hand_over(self, stream_id: str, fields: dict[bytes, Any]) -> None:
        deliver = self._deliver
        try:
            notification = Notification(
                to_notification_id(stream_id), fields[b"t"].decode(), fields[b"y"].decode(), fields[b"n"]
            )
        except (KeyError, ValueError, UnicodeDecodeError):
            log.error("skipping malformed stream entry %s", stream_id)
            return
        if deliver is not None:
            deliver(notification)
