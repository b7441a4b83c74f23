"""One exception tree for notifier: each error carries the HTTP status it maps to."""
from __future__ import annotations


class NotifierError(Exception):
    """Root of every error notifier raises on purpose."""

    status = 500
    index: int | None = None
    """For an item of a batch publish: which one (the JSON error carries it)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def at(self, index: int) -> "NotifierError":
        """This error, said of item ``index`` of a batch."""
        self.index = index
        return self


class ConfigError(NotifierError):
    """A configuration value is missing or malformed; names the key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key


class InvalidNotification(NotifierError):
    """A publish body or subscription parameter breaks the contract (400)."""

    status = 400


class RequestTimeout(NotifierError):
    """The request body did not arrive within NOTIFIER_BODY_TIMEOUT (408)."""

    status = 408


class PayloadTooLarge(NotifierError):
    status = 413


class UnsupportedMediaType(NotifierError):
    status = 415


class Unauthorized(NotifierError):
    status = 401


class Forbidden(NotifierError):
    status = 403


class IdempotencyConflict(NotifierError):
    """An ``Idempotency-Key`` already used for another body by this publisher (422)."""

    status = 422


class RetryLater(NotifierError):
    """Not now: 503 with ``Retry-After`` (every 503 says when to retry)."""

    status = 503
    retry_after = 1


class BrokerUnavailable(RetryLater):
    """The broker cannot be reached: the notification was NOT accepted."""


class NotReplicated(BrokerUnavailable):
    """Written on the Redis master, but fewer than ``NOTIFIER_REDIS_MIN_REPLICAS`` replicas
    confirmed it in time: not accepted (a failover now could lose it), though subscribers may
    already have it. A retry with the same ``Idempotency-Key`` publishes it once."""


class NotKept(BrokerUnavailable):
    """Published, but the inbox database did not store it: not accepted (no 202), though
    subscribers may have it. A retry with the same ``Idempotency-Key`` keeps it once."""


class NotFound(NotifierError):
    status = 404


class TooManyRequests(NotifierError):
    """A limit was hit (publish rate, connections per user); ``retry_after`` in seconds."""

    status = 429

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class WorkerFull(RetryLater):
    """This worker holds as many subscribers as it may: the client should retry."""


class ServerBusy(RetryLater):
    """Too many requests of one kind at once on this worker: retry soon."""


class ShuttingDown(RetryLater):
    """This worker is stopping and takes no new subscribers: the client retries elsewhere."""


class IdentifyFailed(NotifierError):
    """The host app's ``identify`` hook returned something that is not a user id (500)."""

    status = 500


class ServerUnsupported(NotifierError):
    """The WSGI server cannot carry a stream (one request at a time, or no socket handed over)."""

    status = 500
