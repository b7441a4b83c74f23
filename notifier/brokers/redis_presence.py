"""Presence across every worker and host, in Redis: per-connection entries that expire.

Each tracked connection is a member (``<worker token>.<n>``) of sorted sets scored by
its expiry: ``pres:u:<user>`` (the user's connections), ``pres:c:<topic>`` (a topic's
connections), ``pres:tu:<len>:<topic>:<user>`` (one user's connections to a topic) and
``pres:t:<topic>`` (a topic's users, scored by their latest expiry). Each worker adds and
removes its own in a background task, batched, and re-adds all of them every third of
``NOTIFIER_PRESENCE_TTL``: a worker that dies without closing leaves entries that simply
expire, and a Redis that restarted empty is refilled within one refresh. No counter, so
nothing a crash can leave wrong (Centrifugo keeps presence the same way).

Join and leave are decided in the same script that changes the sets, so across workers a
user's first connection to a topic joins once and the last one leaves once; the event
goes into the stream (XADD) in that script, in order with everything else, with its wake
(redis_wake), and every worker's follower delivers it. History skips them (``EPHEMERAL``).
"""
from __future__ import annotations

import itertools
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any

import redis

from ..core.notification import now_iso
from ..core.presence import Presence, PresenceRules, topics_of
from ..core.send_queue import Empty, Full
from ..errors import BrokerUnavailable

if TYPE_CHECKING:
    from ..core.hub import Hub
    from ..core.subscriber import Subscriber
    from ..runtime import Runtime, Task
    from .redis import RedisBroker

log = logging.getLogger(__name__)

QUEUE = 100_000
"""Presence changes waiting for the background task at most; beyond, they are left to the
refresh (an attach) or to expiry (a leave)."""
OPS_PER_CALL = 100
"""Connections per script call: one call holds Redis (about 25 µs of its CPU per connection),
so a refresh of thousands goes in short calls, with the worker's loop free in between."""
GATHER = 0.02
"""Seconds the task waits after a change for more to send in the same round trip."""

# ARGV: prefix, now (ms), expiry (ms), key ttl (ms), stream, history size, ts, then ops:
# kind (a: attach, d: detach, r: refresh, s: sweep), member, user ('' anonymous),
# with user key (1/0), topic count, then (topic, events 1/0) per topic.
SCRIPT = """
local p, now, exp, ttl = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local stream, size, ts = ARGV[5], ARGV[6], ARGV[7]
local touched = {}
local function keep(key, clean)  -- once per key and call: many connections share a topic's keys
  if not touched[key] then
    touched[key] = true
    redis.call('PEXPIRE', key, ttl)
    if clean then redis.call('ZREMRANGEBYSCORE', key, '-inf', now) end
  end
end
local function event(kind, topic, user)
  local n = cjson.encode({type = kind, title = '', message = '', ts = ts, topic = topic, data = {user_id = user}})
  n = n:gsub('\\226\\128\\168', '\\\\u2028'):gsub('\\226\\128\\169', '\\\\u2029'):gsub('\\194\\133', '\\\\u0085')
  redis.call('XADD', stream, 'MAXLEN', '~', size, '*', 't', topic, 'y', kind, 'n', n)
  redis.call('PUBLISH', p .. ':wake:' .. topic, '')  -- the followers whose hub wants it read it now
end
local function leave_if_last(topic, user, tuk, ev)
  redis.call('ZREMRANGEBYSCORE', tuk, '-inf', now)
  if redis.call('ZCARD', tuk) == 0 and redis.call('ZREM', p .. ':pres:t:' .. topic, user) == 1 and ev == '1' then
    event('notifier.leave', topic, user)
  end
end
local i = 8
while i <= #ARGV do
  local op, member, user, with_user, n = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], tonumber(ARGV[i + 4])
  i = i + 5
  if user ~= '' and with_user == '1' then
    local uk = p .. ':pres:u:' .. user
    if op == 'd' then
      redis.call('ZREM', uk, member)
    elseif op ~= 's' then
      redis.call('ZADD', uk, exp, member)
      keep(uk, op == 'r')
    end
  end
  for _ = 1, n do
    local topic, ev = ARGV[i], ARGV[i + 1]
    i = i + 2
    local tk = p .. ':pres:t:' .. topic
    if op == 's' then  -- users whose every connection expired (a worker died): they left
      for _, gone in ipairs(redis.call('ZRANGEBYSCORE', tk, '-inf', now)) do
        leave_if_last(topic, gone, p .. ':pres:tu:' .. #topic .. ':' .. topic .. ':' .. gone, ev)
      end
    else
      local ck = p .. ':pres:c:' .. topic
      if op == 'd' then
        redis.call('ZREM', ck, member)
      else
        redis.call('ZADD', ck, exp, member)
        keep(ck, op == 'r')
      end
      if user ~= '' then
        local tuk = p .. ':pres:tu:' .. #topic .. ':' .. topic .. ':' .. user
        if op == 'd' then
          redis.call('ZREM', tuk, member)
          leave_if_last(topic, user, tuk, ev)
        else
          if op == 'a' then redis.call('ZREMRANGEBYSCORE', tuk, '-inf', now) end
          local first = op == 'a' and redis.call('ZCARD', tuk) == 0
          redis.call('ZADD', tuk, exp, member)
          keep(tuk, false)
          redis.call('ZADD', tk, 'GT', exp, user)
          keep(tk, op == 'r' and ev ~= '1')  -- an event topic's expired users are the sweep's: it sends their leave
          if first and ev == '1' then event('notifier.join', topic, user) end
        end
      end
    end
  end
end
return 1
"""


class RedisPresence(Presence):
    """One worker's presence, kept in Redis with every other worker's."""

    def __init__(self, rules: PresenceRules, broker: "RedisBroker", hub: "Hub", runtime: "Runtime",
                 ttl: int, history_size: int) -> None:
        super().__init__(rules)
        self.broker = broker
        self.hub = hub
        self.runtime = runtime
        self.ttl = ttl
        self.history_size = history_size
        self.prefix = broker.prefix
        self.token = secrets.token_hex(6)  # this worker's part of every member it adds
        self.queue = runtime.send_queue(QUEUE)
        self.script = broker.client.register_script(SCRIPT)
        self._task: "Task | None" = None
        self.sent = 0  # ops sent (bench: what presence costs Redis)

    def member(self, sub: "Subscriber") -> str:
        return f"{self.token}.{id(sub):x}"

    # -- told by the hub (never blocks: queued for the task) --------------------------------

    def attached(self, sub: "Subscriber") -> None:
        self._queue("a", sub, True, topics_of(sub))

    def detached(self, sub: "Subscriber") -> None:
        self._queue("d", sub, True, topics_of(sub))

    def topic_added(self, sub: "Subscriber", topic: str) -> None:
        self._queue("a", sub, False, [topic])

    def topic_removed(self, sub: "Subscriber", topic: str) -> None:
        self._queue("d", sub, False, [topic])

    def _queue(self, kind: str, sub: "Subscriber", with_user: bool, topics: list[str]) -> None:
        tracked = self.tracked(sub, topics)
        if not tracked and (sub.user_id is None or not with_user):
            return
        try:
            self.queue.put_nowait(self._op(kind, sub, with_user, tracked))
        except Full:
            log.warning("presence changes queue full: left to the refresh and to expiry")

    def _op(self, kind: str, sub: "Subscriber", with_user: bool, tracked: list[tuple[str, bool]]) -> list[Any]:
        op: list[Any] = [kind, self.member(sub), sub.user_id or "", "1" if with_user else "0", len(tracked)]
        for topic, events in tracked:
            op += [topic, "1" if events else "0"]
        return op

    # -- the background task ---------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = self.runtime.spawn(self._run)

    def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.stop()
        self.flush()

    def flush(self) -> None:
        """Send the changes queued now (at exit: what closed last is removed now, not at expiry)."""
        self._send(self._drain([]))

    def _run(self) -> None:
        interval = self.ttl / 3
        next_refresh = time.monotonic() + interval
        while True:
            try:
                try:
                    first = self.queue.get(max(0.0, next_refresh - time.monotonic()))
                except Empty:
                    first = None
                if first is not None:
                    self.runtime.sleep(GATHER)  # changes come in bursts: one round trip for them
                    self._send(self._drain([first]))
                if time.monotonic() >= next_refresh:
                    next_refresh = time.monotonic() + interval
                    self.refresh()
            except Exception:  # noqa: BLE001 - the task must outlive any one failure
                log.exception("presence task failed; going on")
                self.runtime.sleep(1.0)

    def _drain(self, ops: list[Any]) -> list[Any]:
        try:
            while True:
                ops.append(self.queue.get_nowait())
        except Empty:
            return ops

    def refresh(self) -> None:
        """Re-add every tracked connection of this worker with a new expiry, and sweep the
        event topics it has subscribers on for users who expired (their worker died).
        Built and sent a call at a time, the loop free between calls."""
        ops: list[Any] = []
        sweep: dict[str, bool] = {}
        for sub in self.hub.snapshot():
            tracked = self.tracked(sub, topics_of(sub))
            if sub.user_id is not None or tracked:
                ops.append(self._op("r", sub, True, tracked))
            for topic, events in tracked:
                if events:
                    sweep[topic] = True
            if len(ops) >= OPS_PER_CALL:
                self._send(ops)
                ops = []
                self.runtime.sleep(0)
        if sweep:
            ops.append(["s", "", "", "0", len(sweep), *itertools.chain.from_iterable((t, "1") for t in sweep)])
        self._send(ops)

    def _send(self, ops: list[Any]) -> None:
        for start in range(0, len(ops), OPS_PER_CALL):
            chunk = ops[start:start + OPS_PER_CALL]
            now = int(time.time() * 1000)
            args = [self.prefix, now, now + self.ttl * 1000, self.ttl * 2000, self.broker.stream,
                    self.history_size, now_iso()]
            for op in chunk:
                args.extend(op)
            try:
                self.script(args=args)
                self.sent += len(chunk)
            except redis.RedisError as exc:  # the refresh re-adds; expiry removes
                log.warning("presence not updated (%s): the next refresh catches up", exc)

    # -- asked by anyone -----------------------------------------------------------------------

    def topic(self, topic: str, limit: int = 1000) -> dict[str, Any]:
        now = int(time.time() * 1000)
        try:
            with self.broker.client.pipeline(transaction=False) as pipe:
                pipe.zrangebyscore(f"{self.prefix}:pres:t:{topic}", now, "+inf")
                pipe.zcount(f"{self.prefix}:pres:c:{topic}", now, "+inf")
                users, connections = pipe.execute()
        except redis.RedisError as exc:
            raise BrokerUnavailable("broker unavailable: retry later") from exc
        names = sorted(u.decode() for u in users)
        return {"topic": topic, "users": names[:limit], "connections": connections}

    def online(self, user_id: str) -> int:
        try:
            return int(self.broker.client.zcount(f"{self.prefix}:pres:u:{user_id}", int(time.time() * 1000), "+inf"))
        except redis.RedisError as exc:
            raise BrokerUnavailable("broker unavailable: retry later") from exc

