"""Publishes of one worker share one Redis connection, pipelined: whatever queues while a
round trip is out goes in the next one, in one write.

Each publish taking a pooled connection of its own cost it a pool checkout (with a poll
of the socket) and a round trip of its own; under load most of a publish's Redis cost was
that. Here one caller at a time leads: it sends every queued call, reads their replies in
order, hands each its answer, and passes the lead to the next queued caller, so no caller
serves others for longer than one round. Every call carries its publish token (see
redis_script), so one whose outcome a broken connection left unknown is retried safely.

With ``replicas``, a round ends with ``WAIT replicas timeout`` in the same write: one wait
covers every call of the round, and a call's answer is handed out only once enough
replicas have what it wrote (otherwise it gets ``Unreplicated``).
"""
from __future__ import annotations

import threading
from typing import Any, Callable

import redis

try:
    from hiredis import pack_command
except ImportError:  # redis-py without its C parser: its own packer below
    pack_command = None

from .redis_script import PUBLISH_ONCE, PUBLISH_ONCE_SHA

WAIT_MARGIN = 3.0
"""Seconds past the connection's own timeouts a queued call waits for its round."""


class NotSent(Exception):
    """No connection to Redis could be had: the command was certainly not applied."""


class Unreplicated(Exception):
    """The call ran on the master, but fewer replicas than asked confirmed it in time."""

    def __init__(self, confirmed: int, wanted: int) -> None:
        super().__init__(f"{confirmed} of {wanted} replicas confirmed in time")
        self.confirmed, self.wanted = confirmed, wanted


class _Call:
    __slots__ = ("command", "done", "answer", "error", "lead")

    def __init__(self, command: tuple[Any, ...]) -> None:
        self.command = command
        self.done = threading.Event()  # gevent's under a patched worker
        self.answer: Any = None
        self.error: BaseException | None = None
        self.lead = False  # woken to lead the next round, not with an answer

    def finish(self, answer: Any = None, error: BaseException | None = None) -> None:
        self.answer, self.error = answer, error
        self.done.set()


class ScriptPipeline:
    """Runs the publish script for concurrent callers over one connection of its own."""

    def __init__(self, make_connection: Callable[[], Any], timeout: float, replicas: int = 0,
                 replica_wait: float = 1.0) -> None:
        self._make = make_connection
        self._replicas = replicas
        self._wait_command = ("WAIT", replicas, max(1, int(replica_wait * 1000))) if replicas else None
        self._conn: Any = None
        self._lock = threading.Lock()
        self._queue: list[_Call] = []
        self._leading = False
        self._wait = timeout + (replica_wait if replicas else 0) + WAIT_MARGIN

    def call(self, keys: tuple[str, ...], args: list[Any]) -> Any:
        """The script's answer; NotSent when no connection could be had (it certainly did not
        run), redis.ConnectionError/TimeoutError when the outcome is unknown."""
        call = _Call(("EVALSHA", PUBLISH_ONCE_SHA, len(keys), *keys, *args))
        with self._lock:
            self._queue.append(call)
            lead = not self._leading
            self._leading = True
        while not lead:
            if not call.done.wait(self._wait):
                with self._lock:
                    if call in self._queue and not call.lead:  # never sent: give up on it
                        self._queue.remove(call)
                        raise NotSent("no turn on the Redis connection in time")
                continue  # in a round now (bounded by the connection's timeouts), or just given the lead
            if not call.lead:
                break
            call.lead, lead = False, True
            call.done.clear()
        if lead:
            self._lead()
        if call.error is not None:
            raise call.error
        return call.answer

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.disconnect()

    def _lead(self) -> None:
        """One round for everything queued, then the lead to whoever queued meanwhile."""
        with self._lock:
            batch, self._queue = self._queue, []
        try:
            self._round(batch)
        except BaseException as exc:  # this caller was killed mid-round: nobody may wait forever
            self.close()
            for call in batch:
                if not call.done.is_set():
                    call.finish(error=redis.ConnectionError(f"publish interrupted: {exc!r}"))
            raise
        finally:
            with self._lock:
                if self._queue:
                    nxt = self._queue[0]
                    nxt.lead = True
                    nxt.done.set()
                else:
                    self._leading = False

    def _round(self, batch: list[_Call]) -> None:
        try:
            conn = self._connection()
        except redis.RedisError as exc:
            for call in batch:
                call.finish(error=NotSent(str(exc)))
            return
        for attempt in range(2):
            missing = self._exchange(conn, batch)
            if not missing or attempt:
                for call in missing:
                    call.finish(error=redis.ResponseError("NOSCRIPT after SCRIPT LOAD"))
                return
            # A new or restarted Redis: load the script once, then run these again.
            try:
                conn.send_command("SCRIPT", "LOAD", PUBLISH_ONCE, check_health=False)
                conn.read_response()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                self.close()
                for call in missing:
                    call.finish(error=NotSent(str(exc)))
                return
            batch = missing

    def _exchange(self, conn: Any, batch: list[_Call]) -> list[_Call]:
        """Send every call at once, hand out the replies in order; the calls Redis lacked the script for."""
        missing: list[_Call] = []
        try:
            conn.send_packed_command(self._pack(conn, batch), check_health=False)
        except (redis.ConnectionError, redis.TimeoutError) as exc:  # part of it may have gone out
            self.close()
            for call in batch:
                call.finish(error=exc)
            return missing
        answered: list[tuple[_Call, Any]] = []
        for index, call in enumerate(batch):
            try:
                answered.append((call, conn.read_response()))
            except redis.exceptions.NoScriptError:
                missing.append(call)
            except redis.ResponseError as exc:  # an error reply: the connection is fine
                call.finish(error=exc)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                self.close()
                for rest in [c for c, _ in answered] + batch[index:]:
                    rest.finish(error=exc)
                return []
        error: BaseException | None = None
        if self._wait_command is not None:
            try:
                confirmed = conn.read_response()
            except (redis.ConnectionError, redis.TimeoutError) as exc:  # written, replication unknown
                self.close()
                confirmed, error = 0, exc
            if error is None and confirmed < self._replicas:
                error = Unreplicated(confirmed, self._replicas)
        for call, answer in answered:
            call.finish(answer, error)
        return missing

    def _pack(self, conn: Any, batch: list[_Call]) -> Any:
        """The calls in Redis's protocol (and the round's WAIT): hiredis packs a call's
        hundreds of arguments in C (redis-py's packer first walks them in Python)."""
        commands = [call.command for call in batch]
        if self._wait_command is not None:
            commands.append(self._wait_command)
        if pack_command is None:
            return conn.pack_commands(commands)
        return [b"".join([pack_command(command) for command in commands])]

    def _connection(self) -> Any:
        if self._conn is None:
            conn = self._make()
            conn.connect()
            self._conn = conn
        return self._conn
