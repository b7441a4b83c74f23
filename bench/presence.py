"""What presence costs: CPU per connect + disconnect, Redis commands per tracked connection,
and burst fan-out with presence events on and off.

    bench/run presence [--count 500] [--rounds 5] [--json FILE] [--parts connect,idle,burst,hook]

Every server is one gunicorn gevent worker (notifier's ``gunicorn.conf.py``, a copy of the
work tree taken at start, as in bench.py) with its own redis-server on free loopback ports,
``NOTIFIER_SECRET`` set and ``NOTIFIER_LOG_LEVEL=WARNING``. "off" is notifier without
``NOTIFIER_PRESENCE_EVENTS``; "on" has ``NOTIFIER_PRESENCE_EVENTS=room:*`` and
``NOTIFIER_PRESENCE_TTL=30``. Identified connections (a token, ``sub`` = user) are in presence
either way: "off" only means no topic has join/leave events.

Parts (see bench/README.md, "Presence"):

- ``connect``: per round, one "off" server, one "on" server (alternating which goes first)
  and, with ``--before-rev``, one server at the commit before presence; on each, for each kind
  of connection (anonymous, anonymous on ``room:1``, identified, identified on ``room:1``),
  open ``--count`` WebSockets, wait until the worker is idle, close them, wait again: the
  worker's and redis-server's CPU (``se.sum_exec_runtime``, ns) less their idle rate over
  the same wall time, ÷ connections; the Redis commands the window cost (INFO commandstats,
  which counts the commands scripts call under their own names).
- ``idle``: ``--count`` identified connections on ``room:1`` held open for ``--idle-window``
  s, at ``NOTIFIER_PRESENCE_TTL=6`` (a refresh every 2 s) and at 30 (every 10 s), beside the
  same number of anonymous ones (not tracked): Redis commands (and worker, Redis CPU) per
  connection per minute.
- ``burst``: bench.py's burst case (``--burst-size`` WebSocket subscribers, ``--burst``
  broadcasts from 4 publishers) with presence events off and on, alternating, for anonymous
  subscribers and for identified ones on ``room:1``: server CPU per delivery, medians, on ÷ off.
- ``hook``: in this process, what ``Hub.subscribe`` + ``unsubscribe`` cost with and without
  presence's hooks for an anonymous subscriber (the exact figure the end-to-end one is too
  noisy to show).

Everything it starts it stops (SIGTERM, then SIGKILL of its own process group), also on
failure, Ctrl-C, SIGTERM or ``--timeout``.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import redis as redis_py

import bench as b
import loadgen as lg

log = b.log

ON = {"NOTIFIER_PRESENCE_EVENTS": "room:*", "NOTIFIER_PRESENCE_TTL": "30"}
KINDS = {  # kind: (query template, description)
    "anon": ("", "anonymous, no topic"),
    "anon-room": ("topic=room:1", "anonymous on room:1"),
    "user": ("token={token}", "identified (own token), no topic"),
    "user-room": ("token={token}&topic=room:1", "identified (own token) on room:1"),
}
ZADDS = {"anon": 0, "anon-room": 1, "user": 1, "user-room": 4}
"""ZADDs one attach (and one refresh) of a tracked connection makes (anon-room: with events on only)."""
OWN_COMMANDS = {"info", "client", "hello", "ping", "slowlog", "config"}
"""Commands this bench (or a client library's handshake) sends itself: not counted."""


def med(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 2) if values else None


def spread(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    return f"{min(values):.1f}–{max(values):.1f}" if values else "–"


def fmt(v: float | None, nd: int = 1) -> str:
    return "–" if v is None else f"{v:,.{nd}f}"


class Stack:
    """One redis-server and one notifier worker, started and stopped together."""

    def __init__(self, workdir: Path, label: str, env: dict[str, str], source: Path | None = None) -> None:
        self.label = label
        self.redis = b.Redis(workdir)
        self.server = b.Server("notifier", 1, self.redis, workdir / f"{label}.log", None, extra_env=env)
        if source is not None:
            self.server.cwd = source
        self.client: redis_py.Redis | None = None
        self.worker = 0

    def start(self) -> None:
        self.redis.start()
        self.server.start()
        self.worker = self.server.worker_procs()[0].pid
        self.client = redis_py.Redis(port=self.redis.port, socket_timeout=5)

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        self.server.stop()
        self.redis.stop()

    @property
    def port(self) -> int:
        return self.server.port

    def cpu(self) -> tuple[float, float]:
        """(worker, redis-server) CPU seconds, to the ns."""
        return b._sched_runtime(self.worker) or 0.0, b._sched_runtime(self.redis.proc.pid) or 0.0

    def commands(self) -> dict[str, int]:
        stats = self.client.info("commandstats")
        return {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()}

    def usec(self) -> dict[str, int]:
        """Time Redis spent in each command (a script's calls count in its own and in theirs)."""
        stats = self.client.info("commandstats")
        return {k.removeprefix("cmdstat_"): v["usec"] for k, v in stats.items()}

    async def idle_rates(self, seconds: float = 1.0) -> tuple[float, float]:
        """The worker's and Redis's CPU per second of wall time, with nothing happening."""
        w0, r0 = self.cpu()
        t0 = time.monotonic()
        await asyncio.sleep(seconds)
        w1, r1 = self.cpu()
        wall = time.monotonic() - t0
        return (w1 - w0) / wall, (r1 - r0) / wall

    async def quiet(self, idle_w: float, timeout: float = 30.0) -> bool:
        """Wait until the worker has been idle (at most its idle rate + 1% of a core) for 0.6 s."""
        deadline = time.monotonic() + timeout
        last, calm = self.cpu()[0], 0
        while time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            now = self.cpu()[0]
            calm = calm + 1 if now - last <= 0.2 * (idle_w + 0.01) else 0
            last = now
            if calm >= 3:
                return True
        return False

    def problems(self) -> list[str]:
        return self.server.log_problems()


def diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    out = {k: v - before.get(k, 0) for k, v in after.items() if k not in OWN_COMMANDS}
    return {k: v for k, v in sorted(out.items()) if v}


def queries_for(kind: str, tokens: list[str], n: int) -> list[str] | None:
    template = KINDS[kind][0]
    if not template:
        return None
    return [template.format(token=tokens[i]) for i in range(n)]


async def connect_cycle(stack: Stack, kind: str, n: int, tokens: list[str], concurrency: int) -> dict:
    """Open ``n`` connections of ``kind``, let the worker settle, close them, let it settle:
    CPU and Redis commands of the whole cycle, per connection."""
    idle_w, idle_r = await stack.idle_rates(1.0)
    queries = queries_for(kind, tokens, n)
    col = lg.Collector()
    c0 = stack.commands()
    (w0, r0), t0 = stack.cpu(), time.monotonic()
    await lg.open_subs(col, "notifier", "ws", stack.port, n, concurrency=concurrency, timeout=20, budget=60,
                       queries=queries)
    opened = col.live()
    settled_open = await stack.quiet(idle_w)
    await lg.close_subs(col)
    settled_closed = await stack.quiet(idle_w)
    (w1, r1), t1 = stack.cpu(), time.monotonic()
    c1 = stack.commands()
    wall = t1 - t0
    cmds = diff(c1, c0)
    per = opened or n
    worker_net = (w1 - w0) - idle_w * wall
    redis_net = (r1 - r0) - idle_r * wall
    expected_zadd = ZADDS[kind] * per
    return {
        "kind": kind, "opened": opened, "errors": dict(col.errors), "wall_s": round(wall, 2),
        "settled": settled_open and settled_closed,
        "worker_cpu_s": round(w1 - w0, 4), "worker_idle_per_s": round(idle_w, 5),
        "worker_us_per_conn": round(worker_net / per * 1e6, 1),
        "redis_cpu_s": round(r1 - r0, 4), "redis_idle_per_s": round(idle_r, 5),
        "redis_us_per_conn": round(redis_net / per * 1e6, 2),
        "commands": cmds, "commands_per_conn": round(sum(cmds.values()) / per, 2),
        "script_calls": cmds.get("evalsha", 0) + cmds.get("eval", 0),
        # a refresh (every TTL/3) re-adds every tracked connection: more ZADDs than the attaches made
        "refresh_in_window": cmds.get("zadd", 0) > expected_zadd,
        "events_xadded": cmds.get("xadd", 0),
    }


async def part_connect(cfg: argparse.Namespace, workdir: Path, env: dict, tokens: list[str],
                       before: Path | None) -> list[dict]:
    sides = [("off", {}), ("on", ON)] + ([("before", {})] if before is not None else [])
    rows = []
    kinds = list(KINDS)
    for r in range(cfg.rounds):
        order = sides[r % 2:] + sides[:r % 2] if r % 2 else sides  # alternate which server goes first
        for side, extra in order:
            stack = Stack(workdir, f"connect-{side}-r{r + 1}", {**env, **extra},
                          source=before if side == "before" else None)
            try:
                stack.start()
                run_kinds = kinds[r % len(kinds):] + kinds[:r % len(kinds)]  # rotated: no kind always first
                for kind in run_kinds:  # warm every code path up: not charged to the first kind measured
                    col = lg.Collector()
                    await lg.open_subs(col, "notifier", "ws", stack.port, 20, timeout=20, budget=30,
                                       queries=queries_for(kind, tokens, 20))
                    await lg.close_subs(col)
                idle_w, _ = await stack.idle_rates(0.5)
                await stack.quiet(idle_w)
                for kind in run_kinds:
                    row = await connect_cycle(stack, kind, cfg.count, tokens, cfg.connect_concurrency)
                    row.update(side=side, round=r + 1)
                    rows.append(row)
                    log(f"connect r{r + 1} {side:6} {kind:9}: worker {row['worker_us_per_conn']:7.1f} µs/conn, "
                        f"redis {row['redis_us_per_conn']:6.1f} µs/conn, {row['commands_per_conn']:5.1f} cmds/conn"
                        f"{', refresh in window' if row['refresh_in_window'] else ''}"
                        f"{', errors ' + str(row['errors']) if row['errors'] else ''}")
                problems = stack.problems()
                if problems:
                    rows[-1]["server_log_problems"] = problems[:10]
            finally:
                stack.stop()
    return rows


async def idle_window(stack: Stack, kind: str, n: int, tokens: list[str], window: float, concurrency: int) -> dict:
    col = lg.Collector()
    idle_w, _ = await stack.idle_rates(0.5)
    await lg.open_subs(col, "notifier", "ws", stack.port, n, concurrency=concurrency, timeout=20, budget=60,
                       queries=queries_for(kind, tokens, n))
    opened = col.live()
    await stack.quiet(idle_w)
    await asyncio.sleep(1.0)  # joins fanned out, attaches sent
    stack.client.config_set("slowlog-log-slower-than", 1000)  # every command that holds Redis 1 ms or more
    stack.client.config_set("slowlog-max-len", 1024)
    stack.client.slowlog_reset()
    c0, u0 = stack.commands(), stack.usec()
    (w0, r0), t0 = stack.cpu(), time.monotonic()
    await asyncio.sleep(window)
    (w1, r1), t1 = stack.cpu(), time.monotonic()
    c1, u1 = stack.commands(), stack.usec()
    slow = [e for e in stack.client.slowlog_get(1024) if b"slowlog" not in str(e.get("command", "")).encode()]
    still = col.live()
    await lg.close_subs(col)
    await stack.quiet(idle_w)
    return {"kind": kind, "opened": opened, "open_at_end": still, "errors": dict(col.errors),
            "window_s": round(t1 - t0, 2), "commands": diff(c1, c0), "worker_cpu_s": round(w1 - w0, 4),
            "redis_cpu_s": round(r1 - r0, 4),
            "evalsha_usec_in_redis": u1.get("evalsha", 0) - u0.get("evalsha", 0),
            "slow_commands_over_1ms": [{"us": e["duration"], "command": str(e.get("command", ""))[:40]}
                                       for e in slow][:50]}


def lua_counted(client: redis_py.Redis) -> bool:
    """Whether INFO commandstats counts a command a script calls under its own name (Redis 7 does)."""
    before = client.info("commandstats").get("cmdstat_zadd", {}).get("calls", 0)
    client.eval("redis.call('ZADD', KEYS[1], 1, 'x'); redis.call('DEL', KEYS[1]); return 1", 1, "bench:lua-check")
    after = client.info("commandstats").get("cmdstat_zadd", {}).get("calls", 0)
    return after - before == 1


async def part_idle(cfg: argparse.Namespace, workdir: Path, env: dict, tokens: list[str]) -> dict:
    out: dict = {"window_s": cfg.idle_window, "connections": cfg.count, "by_ttl": {}}
    for ttl in (6, 30):
        stack = Stack(workdir, f"idle-ttl{ttl}", {**env, **ON, "NOTIFIER_PRESENCE_TTL": str(ttl)})
        try:
            stack.start()
            if ttl == 6:
                out["lua_commands_counted_in_commandstats"] = lua_counted(stack.client)
                out["redis_version"] = stack.client.info("server").get("redis_version")
            for kind in ("anon", "user-room"):  # warm-up
                col = lg.Collector()
                await lg.open_subs(col, "notifier", "ws", stack.port, 20, timeout=20, budget=30,
                                   queries=queries_for(kind, tokens, 20))
                await lg.close_subs(col)
            base = await idle_window(stack, "anon", cfg.count, tokens, cfg.idle_window, cfg.connect_concurrency)
            tracked = await idle_window(stack, "user-room", cfg.count, tokens, cfg.idle_window,
                                        cfg.connect_concurrency)
            n = tracked["opened"] or cfg.count
            refreshes = tracked["commands"].get("zadd", 0) / (ZADDS["user-room"] * n)
            extra = {k: v - base["commands"].get(k, 0) for k, v in tracked["commands"].items()}
            extra_total = sum(extra.values())
            per_min = 60 / tracked["window_s"]
            interval = ttl / 3
            row = {
                "ttl": ttl, "refresh_interval_s": interval, "anonymous": base, "identified_room": tracked,
                "refreshes_in_window": round(refreshes, 2),
                "commands_per_conn_per_refresh": round(extra_total / refreshes / n, 2) if refreshes else None,
                "by_command_per_conn_per_refresh": {k: round(v / refreshes / n, 3) for k, v in extra.items()}
                if refreshes else {},
                "commands_per_conn_per_min_measured": round(extra_total / n * per_min, 1),
                "script_calls_per_min": round((extra.get("evalsha", 0) + extra.get("eval", 0)) * per_min, 1),
                "worker_us_per_conn_per_refresh": round(
                    (tracked["worker_cpu_s"] - base["worker_cpu_s"]) / refreshes / n * 1e6, 2) if refreshes else None,
                "redis_us_per_conn_per_refresh": round(
                    (tracked["redis_cpu_s"] - base["redis_cpu_s"]) / refreshes / n * 1e6, 2) if refreshes else None,
                "script_us_per_conn_per_refresh": round(tracked["evalsha_usec_in_redis"] / refreshes / n, 2)
                if refreshes else None,
                "longest_script_call_us": max((e["us"] for e in tracked["slow_commands_over_1ms"]
                                               if "evalsha" in e["command"].lower()), default=None),
            }
            if row["commands_per_conn_per_refresh"] is not None:
                row["commands_per_conn_per_min"] = round(row["commands_per_conn_per_refresh"] * 60 / interval, 1)
                row["worker_us_per_conn_per_s"] = round(row["worker_us_per_conn_per_refresh"] / interval, 2)
                row["redis_us_per_conn_per_s"] = round(row["redis_us_per_conn_per_refresh"] / interval, 2)
            out["by_ttl"][str(ttl)] = row
            log(f"idle ttl {ttl}: {refreshes:.1f} refreshes in {tracked['window_s']} s; "
                f"{row['commands_per_conn_per_refresh']} Redis commands per connection per refresh = "
                f"{row.get('commands_per_conn_per_min')} per minute; worker "
                f"{row['worker_us_per_conn_per_refresh']} µs, redis {row['redis_us_per_conn_per_refresh']} µs "
                f"per connection per refresh")
            problems = stack.problems()
            if problems:
                row["server_log_problems"] = problems[:10]
        finally:
            stack.stop()
    return out


BURST_KEYS = ("server_cpu_s", "phase_wall_s", "cpu_us_per_delivery", "fanout_cpu_us_per_delivery", "publish_cpu_us", "redis_cpu_us_per_delivery",
              "deliveries_per_s", "latency_p99_ms", "subscribers_open", "delivered", "lost", "duplicates",
              "error_count", "errors", "other_cpu_cores", "load_cpu_share", "connect_s", "server_log_problem_count")


async def part_burst(cfg: argparse.Namespace, workdir: Path, env: dict, tokens: list[str]) -> list[dict]:
    bcfg = b.parse_args(["--peers", "notifier", "--sizes", str(cfg.burst_size), "--transports", "ws",
                         "--paced-count", "0", "--burst", str(cfg.burst), "--name", cfg.name])
    rows = []
    kinds = [("anon", None), ("user-room", queries_for("user-room", tokens, cfg.burst_size))]
    for r in range(cfg.burst_rounds):
        sides = [("off", {}), ("on", ON)] if r % 2 == 0 else [("on", ON), ("off", {})]
        for kind, queries in kinds:
            for side, extra in sides:
                bcfg.notifier_env = list({**env, **extra}.items())
                case = await b.run_case(bcfg, workdir, "notifier", "ws", cfg.burst_size, 1, "burst", queries=queries)
                row = {"round": r + 1, "side": side, "kind": kind, **{k: case.get(k) for k in BURST_KEYS}}
                rows.append(row)
                log(f"burst r{r + 1} {kind:9} {side:3}: {row['cpu_us_per_delivery']} µs/deliv "
                    f"(fan-out {row['fanout_cpu_us_per_delivery']}, publish {row['publish_cpu_us']} µs), "
                    f"lost {row['lost']} dup {row['duplicates']} errors {row['error_count']}, "
                    f"other CPU {row['other_cpu_cores']}")
    return rows


def part_hook(loops: int = 100_000, repeats: int = 7, refresh_subs: int = 1000) -> dict:
    """In this process, exactly: what the hub's presence hooks cost an anonymous subscriber
    with no topic (``attached`` + ``detached``, presence off and on, beside ``Hub.subscribe`` +
    ``unsubscribe`` without any presence), and what one refresh costs the worker per anonymous
    subscriber with presence on (it looks at each and sends nothing). Variants interleaved,
    best of ``repeats``."""
    from notifier.brokers.redis_presence import RedisPresence
    from notifier.core.hub import Hub
    from notifier.core.presence import PresenceRules
    from notifier.runtime.threads import ThreadRuntime

    class Conn:
        def offer(self, notes, data):  # noqa: ANN001
            return True

        def close(self, code, reason):  # noqa: ANN001
            pass

    class Broker:
        prefix, stream = "notifier", "notifier:stream"

        class client:  # noqa: N801
            @staticmethod
            def register_script(script: str) -> None:
                return None

    runtime = ThreadRuntime()
    conn = Conn()
    hub = Hub(runtime, 0.025)
    presences = {"off": RedisPresence(PresenceRules(()), Broker, hub, runtime, 30, 10000),
                 "on": RedisPresence(PresenceRules(("room:*",)), Broker, hub, runtime, 30, 10000)}
    sub = hub.subscribe(conn, "ws")
    hub.unsubscribe(sub)
    best: dict[str, float] = {}

    def timed(name: str, fn) -> None:  # noqa: ANN001
        t0 = time.perf_counter_ns()
        for _ in range(loops):
            fn()
        took = (time.perf_counter_ns() - t0) / loops
        best[name] = min(best.get(name, took), took)

    def hub_cycle() -> None:
        hub.unsubscribe(hub.subscribe(conn, "ws"))

    gc.collect()
    for _ in range(repeats):
        timed("hub subscribe + unsubscribe, no presence", hub_cycle)
        for side, presence in presences.items():
            timed(f"presence {side}: attached + detached", lambda p=presence: (p.attached(sub), p.detached(sub)))
        timed("empty loop", lambda: None)
    empty = best.pop("empty loop")
    out = {k: round(v - empty, 1) for k, v in best.items()}
    # One refresh with refresh_subs anonymous subscribers attached, presence on: ops built, none sent.
    presence = presences["on"]
    sent: list = []
    presence._send = sent.append  # noqa: SLF001 - the bench stands in for Redis
    subs = [hub.subscribe(conn, "ws") for _ in range(refresh_subs)]
    refresh_ns = None
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        presence.refresh()
        took = time.perf_counter_ns() - t0
        refresh_ns = took if refresh_ns is None else min(refresh_ns, took)
    for s in subs:
        hub.unsubscribe(s)
    return {"ns": out, "loops": loops, "repeats": repeats,
            "refresh_ns_per_anonymous_sub": round(refresh_ns / refresh_subs, 1),
            "refresh_sent_ops": sum(len(ops) for ops in sent) // max(1, len(sent))}


def part_refresh(workdir: Path, n: int, repeats: int = 7) -> dict:
    """In this process, against a redis-server of its own: one refresh of ``n`` identified
    connections on room:1 (presence on), the very code a worker runs. The CPU of this thread
    (``time.thread_time_ns``: building the ops, packing the arguments, reading the answers;
    not the wait for Redis) and the time Redis spent in the script (commandstats ``usec``)."""
    from notifier.brokers.redis_presence import OPS_PER_CALL, RedisPresence
    from notifier.core.hub import Hub
    from notifier.core.presence import PresenceRules
    from notifier.runtime.threads import ThreadRuntime

    class Conn:
        def offer(self, notes, data):  # noqa: ANN001
            return True

        def close(self, code, reason):  # noqa: ANN001
            pass

    server = b.Redis(workdir)
    try:
        server.start()
        client = redis_py.Redis(port=server.port, socket_timeout=10)

        class Broker:
            prefix, stream = "notifier", "notifier:stream"

        Broker.client = client
        runtime = ThreadRuntime()
        hub = Hub(runtime, 0.025)
        presence = RedisPresence(PresenceRules(("room:*",)), Broker, hub, runtime, 30, 10000)
        conn = Conn()
        for i in range(n):
            hub.subscribe(conn, "ws", f"u{i}", ["room:1"])  # hub.presence unset: not attached one by one
        presence.refresh()  # first: the keys are created, the script loaded
        cpu, redis_us = [], []
        for _ in range(repeats):
            u0 = client.info("commandstats").get("cmdstat_evalsha", {}).get("usec", 0)
            t0 = time.thread_time_ns()
            presence.refresh()
            cpu.append((time.thread_time_ns() - t0) / n)
            redis_us.append((client.info("commandstats").get("cmdstat_evalsha", {}).get("usec", 0) - u0) / n)
        client.close()
        return {"connections": n, "ops_per_call": OPS_PER_CALL, "repeats": repeats,
                "worker_cpu_ns_per_conn": round(statistics.median(cpu)),
                "redis_script_us_per_conn": round(statistics.median(redis_us), 2),
                "calls_per_refresh": -(-(n + 1) // OPS_PER_CALL)}
    finally:
        server.stop()


# ------------------------------------------------------------------------------------

def summarize(data: dict) -> dict:
    s: dict = {}
    conn = data.get("connect") or []
    if conn:
        cells = {}
        for side in ("before", "off", "on"):
            for kind in KINDS:
                rows = [r for r in conn if r["side"] == side and r["kind"] == kind]
                if not rows:
                    continue
                cells[f"{side}:{kind}"] = {
                    "rounds": len(rows),
                    "worker_us_per_conn": med([r["worker_us_per_conn"] for r in rows]),
                    "worker_range": spread([r["worker_us_per_conn"] for r in rows]),
                    "worker_us_per_conn_no_refresh": med([r["worker_us_per_conn"] for r in rows
                                                          if not r["refresh_in_window"]]),
                    "redis_us_per_conn": med([r["redis_us_per_conn"] for r in rows]),
                    "redis_range": spread([r["redis_us_per_conn"] for r in rows]),
                    "commands_per_conn": med([r["commands_per_conn"] for r in rows if not r["refresh_in_window"]]
                                             or [r["commands_per_conn"] for r in rows]),
                    "refresh_in_window": sum(1 for r in rows if r["refresh_in_window"]),
                    "errors": sum(sum(r["errors"].values()) for r in rows),
                }
        s["connect"] = cells
        a = cells.get("off:anon", {}).get("worker_us_per_conn")

        def ratio(key: str) -> float | None:
            v = cells.get(key, {}).get("worker_us_per_conn")
            return round(v / a, 3) if a and v is not None else None

        s["connect_ratios_vs_off_anon"] = {k: ratio(k) for k in cells}
        # paired ratios per round (same round = same machine weather)
        paired = []
        for r in sorted({row["round"] for row in conn}):
            x = next((row for row in conn if row["round"] == r and row["side"] == "off" and row["kind"] == "anon"), None)
            y = next((row for row in conn if row["round"] == r and row["side"] == "on" and row["kind"] == "anon"), None)
            if x and y and x["worker_us_per_conn"]:
                paired.append(y["worker_us_per_conn"] / x["worker_us_per_conn"])
        s["anon_on_over_off_paired_median"] = round(statistics.median(paired), 3) if paired else None
        s["anon_on_over_off_paired"] = [round(p, 3) for p in paired]
    burst = data.get("burst") or []
    if burst:
        cells = {}
        for kind in ("anon", "user-room"):
            for side in ("off", "on"):
                rows = [r for r in burst if r["kind"] == kind and r["side"] == side and r["cpu_us_per_delivery"]]
                cells[f"{side}:{kind}"] = {
                    "rounds": len(rows),
                    "cpu_us_per_delivery": med([r["cpu_us_per_delivery"] for r in rows]),
                    "cpu_range": spread([r["cpu_us_per_delivery"] for r in rows]),
                    "cpu_lo": min((r["cpu_us_per_delivery"] for r in rows), default=None),
                    "cpu_hi": max((r["cpu_us_per_delivery"] for r in rows), default=None),
                    "fanout_cpu_us_per_delivery": med([r["fanout_cpu_us_per_delivery"] for r in rows]),
                    "publish_cpu_us": med([r["publish_cpu_us"] for r in rows]),
                    "lost": sum(r["lost"] or 0 for r in rows), "duplicates": sum(r["duplicates"] or 0 for r in rows),
                    "errors": sum(r["error_count"] or 0 for r in rows),
                }
            off, on = cells[f"off:{kind}"]["cpu_us_per_delivery"], cells[f"on:{kind}"]["cpu_us_per_delivery"]
            cells[f"ratio:{kind}"] = round(on / off, 3) if off and on else None
            fo, fn = cells[f"off:{kind}"]["fanout_cpu_us_per_delivery"], cells[f"on:{kind}"]["fanout_cpu_us_per_delivery"]
            cells[f"fanout_ratio:{kind}"] = round(fn / fo, 3) if fo and fn else None
            paired = []  # on ÷ off within a round (the two ran back to back)
            for r in sorted({row["round"] for row in burst}):
                x = next((row for row in burst if row["round"] == r and row["kind"] == kind and row["side"] == "off"), None)
                y = next((row for row in burst if row["round"] == r and row["kind"] == kind and row["side"] == "on"), None)
                if x and y and x["cpu_us_per_delivery"] and y["cpu_us_per_delivery"]:
                    paired.append(round(y["cpu_us_per_delivery"] / x["cpu_us_per_delivery"], 3))
            cells[f"paired:{kind}"] = paired
            cells[f"paired_median:{kind}"] = round(statistics.median(paired), 3) if paired else None
            cells[f"phase_cpu_s:{kind}"] = med([r["server_cpu_s"] for r in burst if r["kind"] == kind])
        s["burst"] = cells
        # The only presence work a burst can meet is a refresh (every TTL/3 = 10 s): what one costs
        # against the CPU of a whole burst phase, the worst case (it lands in the phase).
        size = data["meta"]["settings"]["burst_size"]
        hook, idle = data.get("hook") or {}, (data.get("idle") or {}).get("by_ttl", {}).get("30", {})
        bound = {}
        if hook.get("refresh_ns_per_anonymous_sub") and cells.get("phase_cpu_s:anon"):
            ms = hook["refresh_ns_per_anonymous_sub"] * size / 1e6
            bound["anon"] = {"refresh_ms": round(ms, 2), "share_of_phase": round(ms / 1e3 / cells["phase_cpu_s:anon"], 4)}
        per_conn_us = ((data.get("refresh") or {}).get("worker_cpu_ns_per_conn") or 0) / 1e3 \
            or idle.get("worker_us_per_conn_per_refresh")
        if per_conn_us and cells.get("phase_cpu_s:user-room"):
            ms = per_conn_us * size / 1e3
            bound["user-room"] = {"refresh_ms": round(ms, 2),
                                  "share_of_phase": round(ms / 1e3 / cells["phase_cpu_s:user-room"], 4)}
        s["burst_refresh_bound"] = bound
    return s


def markdown(data: dict) -> str:
    meta, s = data["meta"], data["summary"]
    n = meta["settings"]["count"]
    out = [f"# Presence cost — {meta['started']}", "",
           f"Command: `{meta['command']}`  ",
           f"notifier: commit {meta['git']}" + (f" plus uncommitted changes ({', '.join(meta['notifier_source']['uncommitted_changes'])})"
                                                 if meta['notifier_source']['uncommitted_changes'] else "")
           + f" (copy sha256 {meta['notifier_source']['sha256']})"
           + (f"; `before` = {meta['before_rev']}" if meta.get("before_rev") else "") + ".  ",
           f"Machine: {meta['machine']['cpus']} CPUs ({meta['machine']['cpu_model']}), shared; load average "
           f"{meta['machine']['loadavg_at_start']} at start, {meta.get('loadavg_at_end')} at end; {meta.get('wall_s')} s.",
           "", "One gunicorn gevent worker and its own redis-server per server. off: no `NOTIFIER_PRESENCE_EVENTS`; "
           "on: `NOTIFIER_PRESENCE_EVENTS=room:*`, `NOTIFIER_PRESENCE_TTL=30`; before: the commit before presence "
           "landed. Identified connections are in presence in every config but `before` (off = no join/leave "
           "events). Medians over interleaved rounds; range = min–max. See bench/README.md, \"Presence\".", ""]
    conn = s.get("connect")
    if conn:
        out += [f"## 1. Connect + disconnect: {n} WebSockets opened then closed, per connection", "",
                "| connections | config | rounds | worker CPU µs (range) | ÷ off/anonymous | redis CPU µs (range) | "
                "Redis cmds | refresh in window |",
                "|---|---|---:|---:|---:|---:|---:|---:|"]
        ratios = s["connect_ratios_vs_off_anon"]
        for kind, (_, desc) in KINDS.items():
            for side in ("before", "off", "on"):
                c = conn.get(f"{side}:{kind}")
                if not c:
                    continue
                out.append(f"| {desc} | {side} | {c['rounds']} | {fmt(c['worker_us_per_conn'])} ({c['worker_range']}) | "
                           f"{fmt(ratios.get(f'{side}:{kind}'), 3)}× | {fmt(c['redis_us_per_conn'], 1)} ({c['redis_range']}) | "
                           f"{fmt(c['commands_per_conn'], 2)} | {c['refresh_in_window']} |")
        out += ["", f"Anonymous, on ÷ off, paired by round: median {fmt(s.get('anon_on_over_off_paired_median'), 3)}× "
                f"({', '.join(str(x) for x in s.get('anon_on_over_off_paired', []))}).", ""]
    hook = data.get("hook")
    if hook:
        h = hook["ns"]
        out += [f"In-process, for an anonymous subscriber with no topic (best of {hook['repeats']} × "
                f"{hook['loops']:,}, loop overhead taken off): " + "; ".join(f"{k}: {v:,} ns" for k, v in h.items())
                + f". A refresh with presence on looks at every subscriber: {hook['refresh_ns_per_anonymous_sub']:,} ns "
                f"per anonymous one ({hook['refresh_sent_ops']} ops sent).", ""]
    idle = data.get("idle")
    if idle:
        out += [f"## 2. Idle: {n} identified connections on room:1 held {idle['window_s']} s (beside {n} anonymous "
                "ones, not tracked, as the baseline)", "",
                f"Redis {idle.get('redis_version')}: commands a script calls are counted in INFO commandstats under "
                f"their own names: {'yes (checked)' if idle.get('lua_commands_counted_in_commandstats') else 'NO'}; "
                "`evalsha` counts the script calls themselves.", "",
                "| TTL | refresh every | refreshes measured | Redis cmds / conn / refresh | **Redis cmds / conn / min** | "
                "script calls / min (whole worker) | worker µs / conn / refresh | redis CPU µs / conn / refresh | "
                "in the script (commandstats) µs / conn / refresh | longest script call ms |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for ttl, row in idle["by_ttl"].items():
            out.append(f"| {ttl} s | {row['refresh_interval_s']:g} s | {row['refreshes_in_window']} | "
                       f"{fmt(row['commands_per_conn_per_refresh'], 2)} | **{fmt(row.get('commands_per_conn_per_min'), 1)}** "
                       f"(window: {fmt(row['commands_per_conn_per_min_measured'], 1)}) | {fmt(row['script_calls_per_min'], 1)} | "
                       f"{fmt(row['worker_us_per_conn_per_refresh'], 2)} | {fmt(row['redis_us_per_conn_per_refresh'], 2)} | "
                       f"{fmt(row.get('script_us_per_conn_per_refresh'), 2)} | "
                       f"{fmt(row['longest_script_call_us'] / 1e3 if row.get('longest_script_call_us') else None, 1)} |")
        ref = data.get("refresh")
        if ref:
            out += ["", f"One refresh of {ref['connections']} identified connections on room:1, in-process against a "
                    f"redis-server of its own (the worker's code; median of {ref['repeats']}): "
                    f"{ref['worker_cpu_ns_per_conn'] / 1e3:.1f} µs of the caller's CPU per connection (building the "
                    f"ops, packing, {ref['calls_per_refresh']} script call(s) of at most {ref['ops_per_call']} ops), "
                    f"{ref['redis_script_us_per_conn']} µs in Redis per connection. The worker µs column above is a "
                    "difference of two windows (the other's figure to the noise of a whole worker's idle CPU)."]
        first = next(iter(idle["by_ttl"].values()))
        out += ["", "Per connection per refresh, by command: "
                + ", ".join(f"{k} {v}" for k, v in first["by_command_per_conn_per_refresh"].items()) + ".", ""]
    burst = s.get("burst")
    if burst:
        bs = meta["settings"]
        out += [f"## 3. Burst fan-out: {bs['burst_size']:,} WebSocket subscribers × {bs['burst']} broadcasts "
                "(bench.py's burst case), server CPU per delivery", "",
                "| subscribers | off µs/deliv (range) | on µs/deliv (range) | rounds | **on ÷ off** | fan-out on ÷ off | "
                "µs/publish off / on | lost, dup, errors |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for kind in ("anon", "user-room"):
            off, on = burst[f"off:{kind}"], burst[f"on:{kind}"]
            ratio = burst[f"ratio:{kind}"]
            overlap = None not in (off["cpu_lo"], on["cpu_lo"]) and off["cpu_lo"] <= on["cpu_hi"] and on["cpu_lo"] <= off["cpu_hi"]
            verdict = "" if ratio is None else (
                " (within 5%)" if abs(ratio - 1) <= 0.05 else
                " (off by more than 5%, within round-to-round noise: the ranges overlap)" if overlap else
                " (**not** within 5%)")
            out.append(f"| {KINDS[kind][1]} | {fmt(off['cpu_us_per_delivery'], 2)} ({off['cpu_range']}) | "
                       f"{fmt(on['cpu_us_per_delivery'], 2)} ({on['cpu_range']}) | {off['rounds']} + {on['rounds']} | "
                       f"**{fmt(ratio, 3)}×**{verdict} | {fmt(burst[f'fanout_ratio:{kind}'], 3)}× | "
                       f"{fmt(off['publish_cpu_us'], 0)} / {fmt(on['publish_cpu_us'], 0)} | "
                       f"{off['lost'] + on['lost']}, {off['duplicates'] + on['duplicates']}, {off['errors'] + on['errors']} |")
        out.append("")
        for kind in ("anon", "user-room"):
            out.append(f"- {KINDS[kind][1]}: on ÷ off paired by round {burst[f'paired:{kind}']}, median "
                       f"{fmt(burst[f'paired_median:{kind}'], 3)}×; median burst phase {fmt(burst[f'phase_cpu_s:{kind}'], 2)} s "
                       "of server CPU.")
        bound = s.get("burst_refresh_bound") or {}
        for kind, v in bound.items():
            out.append(f"- {KINDS[kind][1]}: one refresh of {bs['burst_size']:,} such connections costs the worker "
                       f"~{v['refresh_ms']} ms, {v['share_of_phase'] * 100:.2f}% of a burst phase if it lands in it "
                       "(once per 10 s at TTL 30; for identified connections with events off as well).")
        out.append("")
    notes = data.get("notes")
    if notes:
        out += ["## Notes", "", *notes, ""]
    return "\n".join(out)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run presence", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--count", type=int, default=500, help="connections per connect cycle and in the idle part")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the connect part")
    p.add_argument("--burst-rounds", type=int, default=None, help="rounds of the burst part (default: --rounds)")
    p.add_argument("--burst-size", type=int, default=1000, help="subscribers in a burst case")
    p.add_argument("--burst", type=int, default=1000,
                   help="notifications per burst (1000: a phase of ~1 s of CPU; at 200 rounds of the same code "
                        "ranged 3.3-9 µs/delivery here)")
    p.add_argument("--idle-window", type=float, default=30.0,
                   help="seconds the idle part holds the connections (30: two heartbeats, 15 refreshes at TTL 6)")
    p.add_argument("--parts", default="connect,idle,burst,hook")
    p.add_argument("--before-rev", default="auto",
                   help="also measure anonymous connect at this revision ('auto': the commit before "
                        "notifier/core/presence.py was added; 'none': skip)")
    p.add_argument("--connect-concurrency", type=int, default=100)
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds for the whole run")
    p.add_argument("--json", default=None, help="also write every figure to this file")
    p.add_argument("--out", default=str(b.BENCH / "results"))
    p.add_argument("--name", default=None, help="file stem (default presence-<date>)")
    cfg = p.parse_args(argv)
    cfg.parts = [x.strip() for x in cfg.parts.split(",") if x.strip()]
    for part in cfg.parts:
        if part not in ("connect", "idle", "burst", "hook"):
            p.error(f"unknown part {part!r}")
    if cfg.burst_rounds is None:
        cfg.burst_rounds = cfg.rounds
    if cfg.name is None:
        cfg.name = "presence-" + datetime.now().strftime("%Y-%m-%d")
    return cfg


def before_rev(spec: str) -> str | None:
    if spec == "none":
        return None
    if spec != "auto":
        return spec
    added = subprocess.run(["git", "log", "--diff-filter=A", "--format=%h", "--", "notifier/core/presence.py"],
                           cwd=b.ROOT, capture_output=True, text=True, timeout=30).stdout.split()
    return f"{added[-1]}^" if added else None


async def run(cfg: argparse.Namespace, argv: list[str]) -> int:
    b.raise_nofile()
    workdir = Path(cfg.out) / "logs" / cfg.name
    workdir.mkdir(parents=True, exist_ok=True)
    source = b.snapshot_source(workdir / "notifier-src")
    b.SOURCE = Path(source["copied_to"])
    sys.path.insert(0, str(b.SOURCE))
    from notifier.tokens import issue_token  # the copy that runs: the server's own token code

    rev = before_rev(cfg.before_rev) if "connect" in cfg.parts else None
    before = None
    if rev:
        info = b.snapshot_source(workdir / "notifier-before", rev)
        before = Path(info["copied_to"])
        rev = f"{rev} ({info['commit']})"
    meta = {
        "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "command": "bench/run presence " + " ".join(argv),
        "git": source["commit"], "notifier_source": source, "before_rev": rev,
        "machine": {"cpus": os.cpu_count(), "cpu_model": platform.processor() or b._cpu_model(),
                    "loadavg_at_start": [round(x, 2) for x in os.getloadavg()], "python": platform.python_version()},
        "settings": {k: v for k, v in vars(cfg).items() if k not in ("out",)},
        "versions": b.versions(["notifier"]),
        "server_logs": str(workdir),
    }
    secret = secrets.token_hex(32)
    n_tokens = max(cfg.count, cfg.burst_size if "burst" in cfg.parts else 0, 20)
    tokens = [issue_token(secret, f"u{i}", ttl=4 * 3600) for i in range(n_tokens)]
    env = {"NOTIFIER_SECRET": secret, "NOTIFIER_LOG_LEVEL": "WARNING"}
    data: dict = {"meta": meta}
    t0 = time.monotonic()
    status = 0
    try:
        if "hook" in cfg.parts:
            data["hook"] = part_hook()
            log(f"hook: {data['hook']}")
        if "hook" in cfg.parts:
            data["refresh"] = part_refresh(workdir, cfg.count)
            log(f"refresh: {data['refresh']}")
        if "connect" in cfg.parts:
            data["connect"] = await part_connect(cfg, workdir, env, tokens, before)
        if "idle" in cfg.parts:
            data["idle"] = await part_idle(cfg, workdir, env, tokens)
        if "burst" in cfg.parts:
            data["burst"] = await part_burst(cfg, workdir, env, tokens)
    except (asyncio.CancelledError, KeyboardInterrupt):
        log("interrupted or timed out: stopping what this run started")
        data["error"] = "interrupted or timed out"
        status = 130
    except Exception as exc:  # record it; the finally below stops everything
        log(f"FAILED: {type(exc).__name__}: {exc}")
        data["error"] = f"{type(exc).__name__}: {exc}"
        status = 1
    finally:
        gc.unfreeze()
        b.stop_started()
    meta["wall_s"] = round(time.monotonic() - t0, 1)
    meta["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    data["summary"] = summarize(data)
    text = markdown(data)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{cfg.name}.md").write_text(text + "\n")
    (out / f"{cfg.name}.json").write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    if cfg.json:
        Path(cfg.json).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    print()
    print(text)
    print(f"wrote {out / (cfg.name + '.md')} and .json")
    return status


if __name__ == "__main__":
    sys.exit(b.scenario_main(parse_args, run))
