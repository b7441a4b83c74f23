"""The Redis broker: one stream carries every notification, and is the history.

Publishing is ``XADD`` (capped at ``NOTIFIER_HISTORY_SIZE``): the 202 is sent only after
Redis has the entry, so an accepted notification is in history. Each worker follows the
stream from the last id it saw, in one background greenlet, reading when Redis wakes it
for a key its connections want (redis_wake) and otherwise once a second; after a dropped
connection it continues from that id, so nothing Redis accepted is skipped (pub/sub
alone would drop whatever was published while it reconnects: it only says when to read).
If that id is gone when it comes back (Redis restarted empty, or trimmed past it), it
reports a gap.
"""
from __future__ import annotations

import itertools
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any, Sequence

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection

from ..config import SENTINEL_SCHEME, SentinelURL, Settings
from ..core.notification import EPHEMERAL, Notification, now_ms, parse_id
from ..errors import BrokerUnavailable, ConfigError, IdempotencyConflict, NotReplicated
from ..idempotency import CONFLICT as CONFLICT_MESSAGE
from ..idempotency import Idempotency, Published
from ..ratelimit import too_many
from ..runtime import Runtime, Task
from .base import Broker, Deliver, Entry, HubKeys, OnGap, Wants

if TYPE_CHECKING:
    from ..core.hub import Hub
    from ..core.presence import Emit, Presence, PresenceRules
from .redis_stream import entry_notification, target_of, to_notification_id, to_stream_id
from .redis_pipeline import NotSent, ScriptPipeline, Unreplicated
from .redis_script import CONFLICT, OVER_RATE, REPLAYED
from .redis_wake import Nudge, Wakes, wake_channel_prefix

log = logging.getLogger(__name__)

WAKE_EVERY = 1.0
"""Seconds the follower waits for a wake before it reads anyway: entries no connection here
wants are read, and skipped, in pages about once a second."""
FOLLOW_TIMEOUT = 1.0
"""Seconds Redis has to answer the follower: with WAKE_EVERY, a dead connection (a network
partition sends no reset) is noticed within about 2 s."""
POOL_WAIT = 5.0
"""Seconds a publish or resume waits for a pooled Redis connection before it is a 503."""
BATCH = 1000
"""Entries per follower read: a full page is followed at once by the next."""
GATHER = 0.002
"""Seconds the follower waits after a short read before the next one, so entries arriving
one by one are read a few at a time: at most 500 reads a second, ~1 ms more latency."""
PAGE = 1000
MAX_BACKOFF = 1.0
"""Most seconds between the follower's reconnect attempts: streams resume soon after Redis is back."""
TRIM_EVERY = 30.0
"""Seconds between TTL trims of the stream (XTRIM MINID); reads filter by TTL exactly."""
UNKNOWN_OUTCOME_WINDOW = 3.0
"""Seconds a publish whose reply was lost keeps retrying (idempotently) to learn its outcome."""
TOKEN_TTL = 60
SENTINEL_TIMEOUT = 0.5
"""Seconds a sentinel has to answer where the master is before the next one is asked."""

def _client(url: str, socket_timeout: float, retries: int = 1, pool_size: int = 1) -> redis.Redis:
    """A client whose callers wait (up to POOL_WAIT) for one of ``pool_size`` connections:
    redis-py's default pool raises "Too many connections" instead, which a resume storm
    (a worker's every client reconnecting at once) turns into 503s while Redis is fine."""
    # One retry, on connection errors only: it replaces a pooled connection that went
    # stale across a Redis restart (or a failover). Timeouts are not retried: the command may have run.
    options: dict[str, Any] = dict(
        max_connections=pool_size,
        timeout=POOL_WAIT,
        socket_timeout=socket_timeout,
        socket_connect_timeout=1.0,
        socket_keepalive=True,
        health_check_interval=10,
        retry=Retry(NoBackoff(), retries, supported_errors=(redis.ConnectionError,)),
    )
    if url.startswith(SENTINEL_SCHEME):
        return redis.Redis(connection_pool=_sentinel_pool(SentinelURL.parse(url), options))
    return redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(url, **options))


class _BlockingSentinelPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """redis-py's Sentinel pool (each new connection asks the sentinels where the master is
    now) with the blocking pool's wait for a free connection, which redis-py lacks."""


class _SentinelConnection(SentinelManagedConnection):
    """A connection to wherever the sentinels say the master is, also when a command
    reconnects it on its own: redis-py's connects there only through connect(), and a
    command sent after a disconnect went to its placeholder address, localhost:6379."""

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self._sock:
            self.connect()
        super().send_packed_command(command, check_health)


def _sentinel_pool(url: SentinelURL, options: dict[str, Any]) -> redis.ConnectionPool:
    # The sentinels are asked on every new connection: a dead one must cost little time.
    sentinel = Sentinel(list(url.sentinels), sentinel_kwargs={
        "socket_timeout": SENTINEL_TIMEOUT, "socket_connect_timeout": SENTINEL_TIMEOUT,
        "password": url.sentinel_password})
    return _BlockingSentinelPool(url.service, sentinel, connection_class=_SentinelConnection, db=url.db,
                                 username=url.username, password=url.password, **options)


def _own_connection(client: redis.Redis, **overrides: Any) -> Any:
    """A connection to ``client``'s Redis with its settings (but ``overrides``), outside its
    pool: for a caller that keeps one for itself (the follower's, the pipelined publishes)."""
    pool = client.connection_pool
    return pool.connection_class(**{**pool.connection_kwargs, **overrides})


def _unavailable(exc: Exception) -> BrokerUnavailable:
    log.warning("redis unavailable: %s", exc)
    return BrokerUnavailable("broker unavailable: retry later")


class RedisBroker(Broker):
    """Every worker on every host shares notifications and history through one Redis stream."""

    def __init__(self, settings: Settings, runtime: Runtime) -> None:
        if not settings.redis_url:
            raise ConfigError("REDIS_URL", "required by the Redis broker")
        self.runtime = runtime
        self.url = settings.redis_url
        self.prefix = settings.prefix
        self.stream = f"{settings.prefix}:stream"
        self.history_size = settings.history_size
        self.presence_ttl = settings.presence_ttl
        self.publish_rate = settings.publish_rate
        self.ttl_ms = settings.history_ttl * 1000
        # A publish may wait for replicas (WAIT) on top of Redis's own time.
        replica_wait = settings.redis_replica_wait if settings.redis_min_replicas else 0.0
        self.client = _client(self.url, socket_timeout=2.0 + replica_wait, pool_size=settings.redis_pool)
        # Publishes go over a connection of their own, pipelined (redis_pipeline); the pool
        # serves history reads and the rest.
        self._publisher = ScriptPipeline(lambda: _own_connection(self.client), timeout=3.0,
                                         replicas=settings.redis_min_replicas, replica_wait=replica_wait)
        # Each publish's token: unique to this broker (a random part, drawn once) and publish
        # (a counter), without a system call for randomness per publish.
        self.token_prefix = f"{settings.prefix}:published:{secrets.token_hex(8)}:"
        self._tokens = itertools.count()
        self._follower: Task | None = None
        self._generation = 0  # the follower of this generation delivers; stop() or start() ends older ones
        self._following = False
        self._deliver: Deliver | None = None
        self._wants: Wants | None = None
        self._keys: HubKeys | None = None  # without them the follower is woken for every key
        self._nudge = Nudge()
        self._wakes: Wakes | None = None  # the current follower's
        self._wake_prefix = wake_channel_prefix(settings.prefix)
        self._on_gap: OnGap | None = None
        self._last: str | None = None
        self._last_is_a_guess = False  # no entry at that id: nothing to find missing
        self.connected = False
        self.reconnects = 0

    def publish(self, entries: Sequence[Entry], publisher: str | None = None,
                idempotency: Idempotency | None = None) -> Published:
        """XADD exactly once, or raise BrokerUnavailable when it was certainly not stored
        (NotReplicated when it was, but fewer replicas than NOTIFIER_REDIS_MIN_REPLICAS confirmed it).

        A reply lost to a dropped connection leaves the outcome unknown: the entry may be
        in Redis. Answering 503 then would be a lie, so the publish is retried under the
        same token (the script adds it at most once) until Redis answers, for a bounded time.
        The publisher's rate and its Idempotency-Key are checked by the same script, in the
        same round trip.
        """
        now = time.time()
        rate_key = f"{self.prefix}:rate:{publisher}:{int(now)}" if publisher is not None else ""
        idem_key = f"{self.prefix}:idem:{idempotency.name}" if idempotency is not None else ""
        keys = (self.stream, f"{self.token_prefix}{next(self._tokens)}", rate_key, idem_key)
        args = [self.history_size, TOKEN_TTL, self.publish_rate,
                idempotency.fingerprint if idempotency else "", idempotency.ttl if idempotency else 0,
                self._wake_prefix]
        for entry in entries:
            args.extend(entry)
        deadline = time.monotonic() + UNKNOWN_OUTCOME_WINDOW
        delay, sent = 0.05, False
        while True:
            try:
                answer = self._publisher.call(keys, args)
                if answer[0] == OVER_RATE:
                    raise too_many(self.publish_rate, now)
                if answer[0] == CONFLICT:
                    raise IdempotencyConflict(CONFLICT_MESSAGE)
                ids = [to_notification_id(i) for i in answer[1].split(b",")]
                return Published(ids, replayed=answer[0] == REPLAYED)
            except NotSent as exc:
                if not sent:
                    raise _unavailable(exc.__cause__ or exc) from exc
                error: Exception = exc
            except Unreplicated as exc:
                log.warning("publish not confirmed by replicas: %s", exc)
                raise NotReplicated(f"stored on the Redis master but {exc}: not accepted; retry with the "
                                    "same Idempotency-Key to publish it once") from exc
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                sent, error = True, exc
            except redis.RedisError as exc:  # an error reply: the script did not run to the end
                raise _unavailable(exc) from exc
            if time.monotonic() + delay > deadline:
                log.error("publish outcome unknown after %.0fs: redis gone mid-reply", UNKNOWN_OUTCOME_WINDOW)
                raise _unavailable(error)
            self.runtime.sleep(delay)
            delay = min(delay * 2, 0.5)

    def presence(self, rules: "PresenceRules", hub: "Hub", emit: "Emit") -> "Presence":
        """Presence of every worker and host, in Redis (join/leave go into the stream)."""
        from .redis_presence import RedisPresence

        return RedisPresence(rules, self, hub, self.runtime, self.presence_ttl, self.history_size)

    def history(self, after: str | None = None) -> list[Notification] | None:
        cutoff_ms = now_ms() - self.ttl_ms
        try:
            if after is not None:
                stream_id = to_stream_id(after)
                if parse_id(after)[0] < cutoff_ms or not self.client.xrange(self.stream, stream_id, stream_id):
                    return None
                start = "(" + stream_id
            else:
                start = f"{max(cutoff_ms, 0)}-0"
            found: list[Notification] = []
            while True:
                entries = self.client.xrange(self.stream, start, "+", count=PAGE)
                found.extend(n for n in map(entry_notification, entries) if n is not None and n.type not in EPHEMERAL)
                if len(entries) < PAGE:
                    return found
                start = "(" + entries[-1][0].decode()
        except redis.RedisError as exc:
            raise _unavailable(exc) from exc

    def newest_id(self) -> str | None:
        try:
            newest = self.client.xrevrange(self.stream, count=1)
        except redis.RedisError as exc:
            raise _unavailable(exc) from exc
        return to_notification_id(newest[0][0]) if newest else None

    def live_floor(self, keys: set[str]) -> str | None:
        """The newest id, if a key is one the follower is not woken for yet: it reads such
        keys' entries up to a second late, so without it a new connection would get what
        was published that long before it came (a page reloaded: seen twice)."""
        wakes = self._wakes
        if wakes is not None and wakes.covers(keys):
            return None  # woken for each: read within ms, as they come
        try:
            return self.newest_id()
        except BrokerUnavailable:  # nothing is published while Redis is away
            return None

    def ready(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def follow_keys(self, keys: HubKeys) -> None:
        """The follower subscribes to the wakes of these keys alone (call before start())."""
        self._keys = keys
        keys.on_keys = self._nudge.poke

    def start(self, deliver: Deliver, on_gap: OnGap | None = None, wants: Wants | None = None) -> None:
        self._deliver, self._on_gap, self._wants = deliver, on_gap, wants
        if not self._following:
            # Read the tail now, not in the greenlet: a subscriber that attaches right
            # after start() must get everything published after this point.
            if self._last is None:
                try:
                    self._last = self._tail(self.client)
                except redis.RedisError as exc:
                    # Nothing can be published while Redis is down: follow from now, so
                    # whatever is accepted once it is back reaches this worker.
                    self._last, self._last_is_a_guess = f"{now_ms()}-0", True
                    log.warning("redis unavailable at start (%s); following from now", exc)
            self._following = True
            self._generation += 1
            self._follower = self.runtime.spawn(self._follow, self._generation)

    def stop(self) -> None:
        # A greenlet is killed; a thread (waiting for a wake up to WAKE_EVERY) sees that its
        # generation is over and ends without delivering anything more.
        self._following = False
        self._generation += 1
        follower, self._follower = self._follower, None
        if follower is not None:
            follower.stop()

    def _tail(self, client: redis.Redis) -> str:
        last = client.xrevrange(self.stream, count=1)
        return last[0][0].decode() if last else "0-0"

    def _check_gap(self, client: redis.Redis, lost_at: float) -> None:
        """After a reconnect: can we continue after the last id we delivered without a gap?

        Not if the stream is gone (Redis restarted empty) or entries newer than it were
        trimmed. An id that merely expired with nothing added since is no gap.
        """
        last = self._last
        if last is None or last == "0-0" or self._last_is_a_guess or client.xrange(self.stream, last, last):
            return
        try:
            info = client.xinfo_stream(self.stream)
        except redis.ResponseError:  # no such stream: Redis lost it
            info = None
        if info is not None:
            generated = info["last-generated-id"].decode()
            first = info.get("first-entry")
            if generated == last or (first and parse_id(to_notification_id(first[0])) <= parse_id(
                    to_notification_id(last))):
                return
        log.warning("redis history no longer holds %s (restarted empty or trimmed): connections must resume", last)
        # Told once: if the next read fails too, the check after it must not close again
        # the connections that have just resumed.
        self._last_is_a_guess = True
        if self._on_gap is not None:
            self._on_gap(lost_at)

    def _follow(self, generation: int) -> None:
        """Follow the stream forever; on any Redis error, back off and go on from the last id."""
        # No silent retry: a dropped connection must be seen, so the gap check runs.
        client = _client(self.url, socket_timeout=FOLLOW_TIMEOUT, retries=0)
        # XREAD goes over a connection of its own, its reply taken as Redis sent it: no pool
        # checkout (and socket poll) per read, and no dict built of every entry's fields,
        # when most entries are skipped unread (_follow_batch). Wakes come over another, in
        # pub/sub mode: RESP2 (its messages plain replies, not RESP3 pushes redis-py's reader
        # hands elsewhere), no health-check PING (whose reply there is not PONG).
        reader = _own_connection(client)
        wakes = Wakes(self.prefix, self._keys, self._nudge,
                      lambda: _own_connection(client, health_check_interval=0, protocol=2))
        self._wakes = wakes
        backoff = 0.1
        next_trim = 0.0
        lost_at: float | None = None  # when following broke off (time.monotonic()), until it resumes
        try:
            while self._generation == generation:
                try:
                    if self._last is None:
                        self._last = self._tail(client)
                    if lost_at is not None:
                        self._check_gap(client, lost_at)
                        lost_at = None
                    if time.monotonic() >= next_trim:
                        client.xtrim(self.stream, minid=f"{max(now_ms() - self.ttl_ms, 0)}-0", approximate=True)
                        next_trim = time.monotonic() + TRIM_EVERY
                    # Subscribed (and confirmed) before the read: an entry this read misses
                    # wakes us, also one for a key whose first subscriber just attached.
                    wakes.sync()
                    read = self._read(reader, generation)
                    if not self.connected:
                        self.connected = True
                        log.info("redis follower connected; following %s after %s", self.stream, self._last)
                    backoff = 0.1
                    if read >= BATCH:
                        continue  # more is waiting
                    if read:
                        # Let the next entries gather: a wake per entry is most of what
                        # following costs, a few ms of it is not.
                        self.runtime.sleep(GATHER)
                    wakes.wait(WAKE_EVERY)
                except redis.RedisError as exc:
                    if self.connected:
                        self.reconnects += 1
                    self.connected = False
                    if lost_at is None:
                        # A connection that attaches after this read history once Redis was back
                        # (before that its read fails): a gap found later is not its own.
                        lost_at = time.monotonic()
                    log.warning("redis follower lost connection (%s); retrying in %.1fs", exc, backoff)
                    client.connection_pool.disconnect()
                    reader.disconnect()
                    wakes.close()  # resubscribed, then read, once back
                    self.runtime.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)
                except Exception:
                    log.exception("redis follower failed; retrying in %.1fs", backoff)
                    wakes.close()
                    self.runtime.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF)
        finally:  # stopped (a greenlet is killed here): its connections go with it
            wakes.close()
            reader.disconnect()

    def _read(self, reader: Any, generation: int) -> int:
        """One page of the stream after the last id, delivered; how many entries it held."""
        reader.send_command("XREAD", "COUNT", BATCH, "STREAMS", self.stream, self._last, check_health=False)
        response = reader.read_response()
        read = 0
        # [[stream, entries]], or {stream: entries} as redis-py gives it in RESP3
        for _stream, entries in (response.items() if isinstance(response, dict) else response or ()):
            self._follow_batch(entries, generation)
            read += len(entries)
        return read

    def _follow_batch(self, entries: list[Any], generation: int) -> None:
        """Deliver what this worker's connections want of one XREAD's entries; skip the rest
        undecoded (every worker reads every notification: this is most of them)."""
        wants, deliver = self._wants, self._deliver
        for entry in entries:
            if self._generation != generation:
                return  # stopped, or another follower took over
            fields = entry[1]
            if wants is not None and not wants(target_of(fields).decode("utf-8", "replace")):
                continue
            self._last, self._last_is_a_guess = entry[0].decode(), False
            notification = entry_notification(entry)
            if notification is not None and deliver is not None:
                deliver(notification)
        if entries and self._generation == generation:
            self._last, self._last_is_a_guess = entries[-1][0].decode(), False
