"""Settings, read in one place: ``app.config`` first, then the environment, then defaults.

The names are the README's configuration table; a malformed value fails at start-up
with a ``ConfigError`` that names the key.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import parse_qs, unquote, urlsplit

from .errors import ConfigError


def _raw(config: Mapping[str, Any], key: str) -> Any:
    value = config.get(key)
    if value is None:
        value = os.environ.get(key)
    if isinstance(value, str) and not value.strip():
        return None
    return value


def _number(config: Mapping[str, Any], key: str, default: float, cast: type = int, minimum: float = 1) -> Any:
    value = _raw(config, key)
    if value is None:
        return default
    try:
        number = cast(value)
    except (TypeError, ValueError):
        kind = "a whole number" if cast is int else "a number"
        raise ConfigError(key, f"expected {kind}, got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(key, f"must be a finite number, got {value!r}")
    if number < minimum:
        raise ConfigError(key, f"must be at least {minimum}, got {number}")
    return number


def _list(config: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = _raw(config, key)
    if value is None:
        return ()
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    return tuple(item.strip() for item in items if item and item.strip())


def _flag(config: Mapping[str, Any], key: str, default: bool) -> bool:
    value = _raw(config, key)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(key, f"expected true or false, got {value!r}")


REDIS_URL_KEYS = ("NOTIFIER_REDIS_URL", "REDIS_URL")
"""Where the broker's Redis comes from, first found wins: a host app's own REDIS_URL (its
cache, say) is only taken when NOTIFIER_REDIS_URL is not set, and the log says which.
NOTIFIER_REDIS_URL=none keeps the in-process broker whatever REDIS_URL says."""
NO_REDIS = "none"


def _redis_url(config: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(the Redis URL, the key it came from), or (None, None) for the in-process broker."""
    key = next((k for k in REDIS_URL_KEYS if _raw(config, k) is not None), None)
    if key is None:
        return None, None
    url = str(_raw(config, key)).strip()
    if key == "NOTIFIER_REDIS_URL" and url.lower() == NO_REDIS:
        return None, None
    if not url.startswith(("redis://", "rediss://", "unix://", SENTINEL_SCHEME)):
        raise ConfigError(key, f"must start with redis://, rediss://, unix:// or {SENTINEL_SCHEME}" +
                          (" (or be 'none')" if key == "NOTIFIER_REDIS_URL" else ""))
    # Heroku Redis serves TLS with a self-signed certificate: its docs say not to verify it.
    if url.startswith("rediss://") and not _flag(config, "NOTIFIER_REDIS_VERIFY_TLS", True) \
            and "ssl_cert_reqs=" not in url:
        url += ("&" if "?" in url else "?") + "ssl_cert_reqs=none"
    problem = _url_problem(url)
    if problem:
        raise ConfigError(key, f"is not a valid Redis URL ({problem})")
    return url, key


def _url_problem(url: str) -> str | None:
    """What redis-py would refuse in a redis:// URL, found without importing redis here
    (gunicorn's master reads settings, and must not load ssl before gevent patches)."""
    if url.startswith(SENTINEL_SCHEME):
        try:
            SentinelURL.parse(url)
        except ValueError as exc:
            return str(exc)
        return None
    parts = urlsplit(url)
    try:
        parts.port
    except ValueError as exc:
        return str(exc)
    db = parts.path.strip("/")
    if parts.scheme != "unix" and db and "db=" not in parts.query and not db.isdigit():
        return f"database {db!r} is not a number"
    return None


SENTINEL_SCHEME = "redis+sentinel://"
SENTINEL_PORT = 26379


@dataclass(frozen=True)
class SentinelURL:
    """``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]``, the
    form other Redis clients take: the sentinels to ask, and the master they watch. The
    password is the master's; ``?sentinel_password=`` is the sentinels' own, if they have one."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None

    @classmethod
    def parse(cls, url: str) -> "SentinelURL":
        """Raises ValueError saying what is wrong."""
        rest = url[len(SENTINEL_SCHEME):]
        rest, _, query = rest.partition("?")
        netloc, _, path = rest.partition("/")
        userinfo, _, hosts = netloc.rpartition("@")
        username, _, password = userinfo.partition(":") if userinfo else ("", "", "")
        sentinels = []
        for host in hosts.split(","):
            name, _, port = host.strip().rpartition(":") if ":" in host else (host.strip(), "", "")
            if not name or (port and not port.isdigit()) or not 0 < int(port or SENTINEL_PORT) < 65536:
                raise ValueError(f"sentinel {host!r} is not host:port")
            sentinels.append((name.strip("[]"), int(port or SENTINEL_PORT)))
        service, _, db = path.strip("/").partition("/")
        if not service:
            raise ValueError("no service name: redis+sentinel://host:port/<service>[/db]")
        if db and not db.isdigit():
            raise ValueError(f"database {db!r} is not a number")
        params = parse_qs(query)
        return cls(tuple(sentinels), unquote(service), int(db or 0), unquote(username) or None,
                   unquote(password) or None, (params.get("sentinel_password") or [None])[0])


@dataclass(frozen=True)
class Settings:
    redis_url: str | None
    secret: str | None
    api_keys: tuple[str, ...]
    allowed_origins: tuple[str, ...]
    history_size: int
    history_ttl: int
    heartbeat: float
    queue_size: int
    max_message_bytes: int
    prefix: str
    max_topics: int
    max_connections_per_user: int
    publish_rate: int
    worker_connections: int
    flush_interval: float
    metrics_public: bool
    demo: bool
    metrics_route: bool
    openapi_route: bool
    redis_pool: int = 50
    idempotency_ttl: int = 86400
    body_timeout: float = 10.0
    max_batch_bytes: int = 1048576
    redis_url_key: str | None = None
    presence_ttl: int = 30
    presence_events: tuple[str, ...] = ()
    redis_min_replicas: int = 0
    redis_replica_wait: float = 1.0
    inbox_url: str | None = None
    inbox_ttl: int = 90
    inbox_size: int = 1000

    @property
    def max_subscribers(self) -> int:
        """Subscribers one worker takes: gunicorn's worker_connections less a reserve, so
        publishes and health checks still get a connection slot when subscribers are many."""
        return max(1, self.worker_connections - self.reserve)

    @property
    def reserve(self) -> int:
        """Connection slots kept from subscribers: 5%, at least 10."""
        return max(10, self.worker_connections // 20)

    @property
    def max_body_readers(self) -> int:
        """Publish bodies read at once, at most: half the reserve, so slow senders can never
        take the slots health checks and other publishes need."""
        return max(1, self.reserve // 2)

    @classmethod
    def load(cls, config: Mapping[str, Any] | None = None, standalone: bool = False) -> "Settings":
        """Read every setting from ``config`` (e.g. ``app.config``), else the environment.

        ``standalone``: notifier's own server, not a host app (the demo page is on by default).
        """
        config = config or {}
        redis_url, redis_url_key = _redis_url(config)
        return cls(
            redis_url=redis_url,
            redis_url_key=redis_url_key,
            secret=_raw(config, "NOTIFIER_SECRET"),
            api_keys=_list(config, "NOTIFIER_API_KEYS"),
            allowed_origins=_list(config, "NOTIFIER_ALLOWED_ORIGINS"),
            history_size=_number(config, "NOTIFIER_HISTORY_SIZE", 10000),
            history_ttl=_number(config, "NOTIFIER_HISTORY_TTL", 86400),
            heartbeat=_number(config, "NOTIFIER_HEARTBEAT", 15.0, float, minimum=0.05),
            queue_size=_number(config, "NOTIFIER_QUEUE_SIZE", 1024),
            max_message_bytes=_number(config, "NOTIFIER_MAX_MESSAGE_BYTES", 65536),
            prefix=_raw(config, "NOTIFIER_PREFIX") or "notifier",
            max_topics=_number(config, "NOTIFIER_MAX_TOPICS", 100),
            max_connections_per_user=_number(config, "NOTIFIER_MAX_CONNECTIONS_PER_USER", 50),
            publish_rate=_number(config, "NOTIFIER_PUBLISH_RATE", 500),
            worker_connections=_number(config, "NOTIFIER_WORKER_CONNECTIONS", 10000, minimum=20),
            flush_interval=_number(config, "NOTIFIER_FLUSH_INTERVAL", 0.025, float, minimum=0.0),
            metrics_public=_flag(config, "NOTIFIER_METRICS_PUBLIC", False),
            redis_pool=_number(config, "NOTIFIER_REDIS_POOL", 50),
            idempotency_ttl=_number(config, "NOTIFIER_IDEMPOTENCY_TTL", 86400),
            body_timeout=_number(config, "NOTIFIER_BODY_TIMEOUT", 10.0, float, minimum=0.1),
            max_batch_bytes=_number(config, "NOTIFIER_MAX_BATCH_BYTES", 1048576),
            presence_ttl=_number(config, "NOTIFIER_PRESENCE_TTL", 30),
            presence_events=_presence_patterns(config),
            redis_min_replicas=_number(config, "NOTIFIER_REDIS_MIN_REPLICAS", 0, minimum=0),
            redis_replica_wait=_number(config, "NOTIFIER_REDIS_REPLICA_WAIT", 1.0, float, minimum=0.01),
            inbox_url=_raw(config, "NOTIFIER_INBOX_URL"),
            inbox_ttl=_number(config, "NOTIFIER_INBOX_TTL", 90),
            inbox_size=_number(config, "NOTIFIER_INBOX_SIZE", 1000),
            demo=_flag(config, "NOTIFIER_DEMO", standalone),
            metrics_route=_flag(config, "NOTIFIER_METRICS", True),
            openapi_route=_flag(config, "NOTIFIER_OPENAPI", True),
        )


def _presence_patterns(config: Mapping[str, Any]) -> tuple[str, ...]:
    """``NOTIFIER_PRESENCE_EVENTS``: topic names, a trailing ``*`` matching a prefix."""
    from .validation import TOPIC_RE  # the topic rule, in one place

    patterns = _list(config, "NOTIFIER_PRESENCE_EVENTS")
    for pattern in patterns:
        name = pattern[:-1] if pattern.endswith("*") else pattern
        if name and not TOPIC_RE.fullmatch(name) or (not name and pattern != "*"):
            raise ConfigError("NOTIFIER_PRESENCE_EVENTS", f"not a topic name or prefix*: {pattern!r}")
    return patterns


def server_port() -> int:
    """``PORT``: where gunicorn binds (Heroku sets it), 8000 by default."""
    return _number({}, "PORT", 8000, minimum=1)


def server_workers() -> int:
    """``WEB_CONCURRENCY``: how many gunicorn workers (Heroku sets it by dyno size), 1 by default."""
    return _number({}, "WEB_CONCURRENCY", 1)


def log_level() -> str:
    """``NOTIFIER_LOG_LEVEL`` of the standalone server."""
    return str(_raw({}, "NOTIFIER_LOG_LEVEL") or "INFO").upper()


def metrics_dir() -> str | None:
    """``PROMETHEUS_MULTIPROC_DIR``: where gunicorn's workers share their metrics.

    gunicorn.conf.py makes a temporary one when it is unset; prometheus_client reads it too.
    """
    value = _raw({}, "PROMETHEUS_MULTIPROC_DIR")
    return None if value is None else str(value)


def local_url() -> str:
    """This host's server, as the CLI reaches it when not given ``--url``."""
    return f"http://127.0.0.1:{server_port()}"


def check_workers(workers: int, settings: Settings | None = None) -> None:
    """Refuse more than one worker without Redis: they would not see each other's notifications."""
    settings = settings or Settings.load()
    if workers > 1 and not settings.redis_url:
        raise ConfigError(
            "REDIS_URL",
            f"{workers} workers need a Redis URL to share notifications; "
            "set NOTIFIER_REDIS_URL (or REDIS_URL), or run one worker (WEB_CONCURRENCY=1)",
        )
