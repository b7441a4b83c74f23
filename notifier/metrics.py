"""Prometheus metrics, served at ``GET /metrics``: every definition and update is here.

Across gunicorn workers, prometheus_client's multiprocess mode sums what each worker
wrote to ``PROMETHEUS_MULTIPROC_DIR`` (gunicorn.conf.py makes a temporary one when it
is unset, and drops a dead worker's live gauges). Without that directory (drop-in
``Notifier(app)`` under another server) the metrics live in the default registry.

Nothing here runs per subscriber: each flush of the hub costs one histogram observation
per notification per worker (a few µs). Connections, deliveries, slow-client cuts and
broker reconnects are read from what the hub and broker count anyway (``Hub.count()``,
``Hub.delivered``, ``Hub.dropped_slow``, ``reconnects``), by a sampler (once a second, so
other workers' figures may lag by that much) and by the worker that answers the scrape
(its own figures are exact). So the hub, transports and broker carry no metrics code.
"""
from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Any, Sequence

from .config import metrics_dir

log = logging.getLogger(__name__)

TRANSPORTS = ("ws", "sse")
SAMPLE_EVERY = 1.0


class _Metrics:
    """The metric objects. Made on first use, not at import: prometheus_client (~15 ms of
    imports) is then never loaded by processes that only publish (``flask notifier send``)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.connections = Gauge("notifier_connections", "Open subscriber connections, by transport", ["transport"],
                                 multiprocess_mode="livesum")
        self.published = Counter("notifier_published",
                                 "Notifications accepted by this server (POST /notify, Notifier.publish())")
        self.delivered = Counter("notifier_delivered",
                                 "Notifications handed to subscriber connections (one per connection)")
        self.slow_disconnects = Counter("notifier_slow_client_disconnects",
                                        "Subscribers cut because their send queue overflowed (WebSocket 1013, SSE end)")
        self.broker_reconnects = Counter("notifier_broker_reconnects",
                                         "Times a worker's broker follower lost Redis and started reconnecting")
        self.replayed = Counter("notifier_replayed", "Notifications sent from history to connections that resumed")
        self.resets = Counter("notifier_resets", "Resumes whose last id was no longer in history (notifier.reset sent)")
        self.latency = Histogram(
            "notifier_delivery_latency_seconds",
            "Publish to write, per notification and worker: the time its fan-out ended minus the notification's "
            "timestamp (millisecond resolution)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
        for transport in TRANSPORTS:
            self.connections.labels(transport)  # present (as 0) before the first connection


_made: _Metrics | None = None
_make_lock = threading.Lock()


def _metrics() -> _Metrics:
    """The metric objects, made once (under a lock: registering a metric twice is an error)."""
    global _made
    if _made is None:
        with _make_lock:
            if _made is None:
                _made = _Metrics()
    return _made


class _Source:
    """One hub and broker of this process, with the counter values last copied from them."""

    def __init__(self, hub: Any, broker: Any) -> None:
        self.hub = weakref.ref(hub)
        self.broker = weakref.ref(broker)
        self.delivered = 0
        self.dropped_slow = 0
        self.reconnects = 0


_sources: list[_Source] = []
_lock = threading.Lock()
_sampler: threading.Thread | None = None


def watch(hub: Any, broker: Any) -> None:
    """Report this hub's connections and slow cuts and this broker's reconnects."""
    global _sampler
    _metrics()  # a started server shows every metric (as 0) from the start
    with _lock:
        _sources.append(_Source(hub, broker))
        if _sampler is None and metrics_dir():
            # Other workers answer scrapes too: keep this one's figures fresh for them.
            # (Under gevent's patched threading this is a greenlet.)
            _sampler = threading.Thread(target=_sample_forever, name="notifier-metrics", daemon=True)
            _sampler.start()


def sample() -> None:
    """Copy the watched hubs' and brokers' figures into the metrics."""
    m = _metrics()
    counts = dict.fromkeys(TRANSPORTS, 0)
    with _lock:
        for source in list(_sources):
            hub, broker = source.hub(), source.broker()
            if hub is None:
                _sources.remove(source)
                continue
            for transport in TRANSPORTS:
                counts[transport] += hub.count(transport)
            delivered = getattr(hub, "delivered", 0)
            if delivered > source.delivered:
                m.delivered.inc(delivered - source.delivered)
            source.delivered = delivered
            dropped = getattr(hub, "dropped_slow", 0)
            if dropped > source.dropped_slow:
                m.slow_disconnects.inc(dropped - source.dropped_slow)
            source.dropped_slow = dropped
            reconnects = getattr(broker, "reconnects", 0) if broker is not None else 0
            if reconnects > source.reconnects:
                m.broker_reconnects.inc(reconnects - source.reconnects)
            source.reconnects = reconnects
    for transport, count in counts.items():
        m.connections.labels(transport).set(count)


def _sample_forever() -> None:
    while True:
        time.sleep(SAMPLE_EVERY)
        try:
            sample()
        except Exception:
            log.exception("sampling metrics failed")


def written(batch: Sequence[Any]) -> None:
    """After a worker's hub wrote (or queued) a batch of notifications to its subscribers."""
    latency, now = _metrics().latency, time.time()
    for notification in batch:
        # The id starts with the publish time in ms (the broker's clock): no JSON to parse.
        latency.observe(max(0.0, now - int(notification.id[:13]) / 1000))


def published(count: int = 1) -> None:
    _metrics().published.inc(count)


def resumed(replayed: int, reset: bool) -> None:
    """A connection resumed: ``replayed`` notifications from history, or a reset."""
    m = _metrics()
    if reset:
        m.resets.inc()
    if replayed:
        m.replayed.inc(replayed)


def render() -> tuple[bytes, str]:
    """The Prometheus text exposition of every worker's metrics, and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess

    sample()
    if metrics_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
