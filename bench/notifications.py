"""The notifications workload: N users, each on their own connection with their own token,
and notifications to one user at a time at a paced rate (issue 12, item 3).

    bench/run notifications [--subscribers 10000] [--transport ws|sse] [--workers 1]
                            [--rate 500 --duration 10 | --find-max] [--name NAME]

Starts its own redis-server and one notifier server (gunicorn, gevent worker,
``-c gunicorn.conf.py``) on free loopback ports, mints a token per user in-process
(``notifier.tokens.issue_token``, the server's secret), opens the subscribers
(bench/loadgen.py), confirms every one with a broadcast, then POSTs notifications with
``user_id`` = a random connected user, with a publisher key, on a fixed schedule (not
waiting for answers). Measures server CPU per notification (gunicorn master + workers,
from /proc), publish→deliver latency at the subscriber, and losses: every notification
that got a 202 must reach its user, once, and nobody else. ``--find-max`` steps the rate
up until a step fails (p99 ≥ --p99-limit, publishes behind schedule, any error or loss),
then bisects between the last step that passed and that one.

Writes bench/results/<name>.json and <name>.md and prints the table; see bench/README.md.
Everything it starts it stops, by PID, also on failure.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import platform
import random
import resource
import secrets
import sys
import time
from array import array
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import bench as b
import loadgen as lg

DEFAULT_STEPS = "100,200,300,400,500,600,800,1000,1250,1500,2000,2500,3000,4000"


def parse_args(argv: list[str]) -> argparse.Namespace:
    rates = lambda s: [float(x) for x in s.split(",") if x.strip()]  # noqa: E731
    p = argparse.ArgumentParser(prog="bench/run notifications", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--subscribers", type=int, default=10000, help="users, one connection each")
    p.add_argument("--transport", choices=("ws", "sse"), default="ws")
    p.add_argument("--workers", type=int, default=1, help="gunicorn workers")
    p.add_argument("--rate", type=float, default=500.0, help="notifications per second (without --find-max)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of publishing (without --find-max)")
    p.add_argument("--calibrate", type=float, default=5.0,
                   help="seconds of publishing at --rate to users no one is connected as, before the paced "
                        "phase, for the cost of a publish without its delivery (0: skip; not with --find-max)")
    p.add_argument("--publishers", type=int, default=8, help="keep-alive connections the paced publishes share")
    p.add_argument("--find-max", action="store_true",
                   help="step the rate up (--steps) until a step fails, then bisect (--refine)")
    p.add_argument("--steps", type=rates, default=rates(DEFAULT_STEPS), help="rates tried by --find-max, in order")
    p.add_argument("--step-duration", type=float, default=8.0, help="seconds of publishing per --find-max step")
    p.add_argument("--refine", type=int, default=2,
                   help="bisection steps between the last passing and the first failing rate (0: none)")
    p.add_argument("--retry", type=int, default=1,
                   help="times a step that failed only on latency or lateness is run again before it counts "
                        "as failed (the machine is shared); a loss or an error is never retried")
    p.add_argument("--p99-limit", type=float, default=100.0,
                   help="ms: a step passes with p99 publish→deliver latency and p99 publish lateness under it")
    p.add_argument("--budget", type=float, default=420.0, help="seconds --find-max may spend on its steps")
    p.add_argument("--warmup", type=int, default=400,
                   help="notifications (at 200/s) sent before measuring, not counted (0: none)")
    p.add_argument("--pause", type=float, default=1.0, help="seconds between phases, once the server is idle")
    p.add_argument("--stall", type=float, default=10.0, help="end a phase after this many s without a delivery")
    p.add_argument("--cap", type=float, default=60.0, help="most s to wait for deliveries after the last publish")
    p.add_argument("--connect-concurrency", type=int, default=200, help="handshakes in flight at once")
    p.add_argument("--confirm", choices=("users", "broadcast"), default="users",
                   help="how every subscriber is confirmed before measuring: a sync notification to each user "
                        "(batches spread over --confirm-spread s), or one broadcast to all (which lines every "
                        "connection's heartbeat up: they all ping at once 15 s later)")
    p.add_argument("--confirm-spread", type=float, default=15.0,
                   help="seconds the per-user confirmations are spread over (notifier's heartbeat is 15 s)")
    p.add_argument("--idle-sample", type=float, default=5.0,
                   help="seconds the server's CPU is read with every subscriber connected and nothing published "
                        "(its idle cost: heartbeats), before the first phase (0: skip)")
    p.add_argument("--worker-connections", type=int, default=None,
                   help="NOTIFIER_WORKER_CONNECTIONS; default notifier's 10000, raised to subscribers ÷ 0.95 + 100 "
                        "above 9,000 subscribers (5%% of the slots are kept from subscribers)")
    p.add_argument("--seed", type=int, default=None, help="seed for picking the users (default: random)")
    p.add_argument("--timeout", type=float, default=1200.0, help="hard limit on the whole run, s")
    p.add_argument("--notifier-rev", default=None, metavar="REV",
                   help="benchmark notifier as of this git revision (default: the work tree as it is at start)")
    p.add_argument("--out", default=str(b.BENCH / "results"), help="directory for <name>.json and <name>.md")
    p.add_argument("--name", default=None, help="file name stem (default: notifications-<date-time>)")
    cfg = p.parse_args(argv)
    if cfg.subscribers < 1 or cfg.workers < 1 or cfg.publishers < 1:
        p.error("--subscribers, --workers and --publishers must be at least 1")
    if not cfg.find_max and (cfg.rate <= 0 or cfg.duration <= 0):
        p.error("--rate and --duration must be positive")
    if cfg.find_max and (not cfg.steps or any(r <= 0 for r in cfg.steps)):
        p.error("--steps: positive rates")
    return b.run_defaults(cfg, "notifications")


log = b.log


class Run:
    """One server, its subscribers, and the phases published to them."""

    def __init__(self, cfg: argparse.Namespace, server: b.Server, redis: b.Redis, secret: str, key: str) -> None:
        self.cfg, self.server, self.redis, self.secret, self.key = cfg, server, redis, secret, key
        self.col = lg.Collector()
        self.rng = random.Random(cfg.seed)
        self.pids0: set[int] = set()
        self.phases: list[dict] = []
        self.live0 = 0
        self.idle_cores: float | None = None

    async def connect(self, issue_token) -> dict:
        cfg = self.cfg
        t0 = time.monotonic()
        ttl = int(cfg.timeout) + 3600
        queries = [f"token={issue_token(self.secret, f'u{i}', ttl=ttl)}" for i in range(cfg.subscribers)]
        tokens_s = time.monotonic() - t0
        self.pids0 = self.server.worker_pids()
        t1 = time.monotonic()
        await lg.open_subs(self.col, "notifier", cfg.transport, self.server.port, cfg.subscribers,
                           concurrency=cfg.connect_concurrency, budget=max(60.0, cfg.subscribers / 50),
                           queries=queries)
        connect_s = time.monotonic() - t1
        t2 = time.monotonic()
        if cfg.confirm == "broadcast":
            not_synced = await lg.sync(self.col, self.server.port, tries=10, wait=3.0, key=self.key)
        else:
            not_synced = await lg.sync_users(self.col, self.server.port, lambda i: f"u{i}",
                                             spread=cfg.confirm_spread, key=self.key)
        confirm_s = time.monotonic() - t2
        if not_synced:
            self.col.error("never saw a sync notification")
        self.live0 = self.col.live()
        gc.collect()
        gc.freeze()  # the subscribers live for the whole run: keep the collector off them
        setup = {"tokens_s": round(tokens_s, 2), "connect_s": round(connect_s, 2), "confirm_s": round(confirm_s, 2),
                 "subscribers_open": self.live0, "not_synced": not_synced, "errors": dict(self.col.errors)}
        log(f"{self.live0}/{cfg.subscribers} {cfg.transport} subscribers open and confirmed "
            f"(tokens {tokens_s:.1f}s, connect {connect_s:.1f}s, confirm {confirm_s:.1f}s)"
            + (f", errors {dict(self.col.errors)}" if self.col.errors else ""))
        return setup

    async def idle_sample(self, seconds: float) -> dict:
        """The server's CPU with every subscriber connected and nothing published: heartbeats."""
        before = b.snapshot(self.server, self.redis)
        await asyncio.sleep(seconds)
        d = b.delta(before, b.snapshot(self.server, self.redis))
        self.idle_cores = d["server"] / d["wall"]
        out = {"seconds": round(d["wall"], 2), "server_cores": round(self.idle_cores, 3),
               "server_us_per_subscriber_s": round(d["server"] / d["wall"] / max(1, self.live0) * 1e6, 2),
               "redis_cores": round(d["redis"] / d["wall"], 3),
               "other_cpu_cores": round(max(0.0, d["machine"] - d["server"] - d["redis"] - d["load"]) / d["wall"], 2)}
        log(f"idle: server {out['server_cores']:.1%} of a core with {self.live0} subscribers "
            f"({out['server_us_per_subscriber_s']} µs per subscriber per second), other CPU {out['other_cpu_cores']}")
        return out

    async def idle(self, window: float = 0.5, limit: float = 10.0) -> None:
        """Wait (at most ``limit`` s) until the server is back to its idle pace: its CPU over
        ``window`` s within 5% of a core of the idle sample's (before that is known: of the
        window before). Heartbeats keep a server with many subscribers from ever being at 0."""
        deadline = time.monotonic() + limit
        last, prev = self.server.cpu(), None
        while time.monotonic() < deadline:
            await asyncio.sleep(window)
            now = self.server.cpu()
            cores, last = (now - last) / window, now
            ref = self.idle_cores if self.idle_cores is not None else prev
            if ref is not None and cores <= ref + 0.05:
                return
            prev = cores

    async def phase(self, label: str, rate: float, duration: float, nobody: bool = False) -> dict:
        """Publish rate × duration notifications, each to a random open user, and measure.

        ``nobody``: to users no one is connected as instead (each worker's follower skips
        them unread), so the server's CPU is what publishing costs without the delivery.
        """
        cfg, col, server = self.cfg, self.col, self.server
        await self.idle()
        await asyncio.sleep(cfg.pause)
        open_idx = [s.index for s in col.subs if s.state == lg.OPEN]
        m = max(1, round(rate * duration))
        row = {"label": label, "rate": rate, "duration_s": duration, "notifications": m,
               "subscribers_open": len(open_idx), "to_nobody": nobody, "errors": {}}
        if not open_idx and not nobody:
            row["errors"]["no subscriber open"] = 1
            row["error_count"], row["ok"], row["why"] = 1, False, ["no subscriber open"]
            self.phases.append(row)
            return row
        if nobody:
            targets = array("l", [-1]) * m  # no subscriber's index: anything that arrives is misdelivered

            def body(phase: int, seq: int) -> bytes:
                return lg.user_notification_body(phase, seq, f"nobody{seq}")
        else:
            targets = array("l", self.rng.choices(open_idx, k=m))

            def body(phase: int, seq: int) -> bytes:
                return lg.user_notification_body(phase, seq, f"u{targets[seq]}")

        errors0 = Counter(col.errors)
        col.start_phase(m, targets)
        before = b.snapshot(server, self.redis)
        pub = await lg.publish_paced(col, server.port, m, rate, pool=cfg.publishers, key=self.key, body=body)
        if nobody:
            await asyncio.sleep(0.3)  # the follower reads (and skips) the last ones
            complete = True
        else:
            col.set_accepted(len(pub.accepted))
            complete = await lg.wait_delivered(col, stall=cfg.stall, cap=cfg.cap)
        d = b.delta(before, b.snapshot(server, self.redis))

        lost, users_with_loss = lg.losses(col, pub.accepted) if not nobody else (0, 0)
        accepted = len(pub.accepted)
        errors = col.errors - errors0
        errors.update(pub.errors)
        if server.worker_pids() != self.pids0:
            errors["worker restarted"] += 1
            self.pids0 = server.worker_pids()
        lat = lg.percentiles(col.lat, (50, 90, 99))
        lag = lg.percentiles(pub.send_lag, (50, 99))
        rlag = lg.percentiles(col.lag, (99,))
        send_span = (pub.last_us - pub.first_us) / 1e6
        r2 = lambda v, n=2: None if v is None else round(v, n)  # noqa: E731
        row.update({
            "accepted": accepted,
            "delivered": col.received,
            "lost": lost,
            "users_with_loss": users_with_loss,
            "duplicates": col.dup,
            "misdelivered": col.misdelivered,
            "stray": col.stray,
            "complete": complete,
            "sent_per_s": round((m - 1) / send_span) if send_span > 0 else None,
            "phase_wall_s": round(d["wall"], 3),
            "server_cpu_s": round(d["server"], 4),
            "server_cpu_s_psutil": round(d["server_ticks"], 2),
            "server_cpu_us_per_notification": round(d["server"] / accepted * 1e6, 1) if accepted else None,
            "server_cpu_cores": round(d["server"] / d["wall"], 3) if d["wall"] else None,
            # less what the server spends anyway with these subscribers and nothing published
            "server_cpu_net_us_per_notification": (
                round((d["server"] - self.idle_cores * d["wall"]) / accepted * 1e6, 1)
                if accepted and self.idle_cores is not None else None),
            "redis_cpu_us_per_notification": round(d["redis"] / accepted * 1e6, 1) if accepted else None,
            "latency_p50_ms": r2(lat["p50"]), "latency_p90_ms": r2(lat["p90"]),
            "latency_p99_ms": r2(lat["p99"]), "latency_max_ms": r2(lat["max"]),
            # how late each publish went out after its scheduled time (waiting for a free publisher
            # connection, i.e. for the server's answer to an earlier one, or for this loop)
            "send_lag_p50_ms": r2(lag["p50"]), "send_lag_p99_ms": r2(lag["p99"]), "send_lag_max_ms": r2(lag["max"]),
            "load_read_lag_p99_ms": r2(rlag["p99"]),
            "load_cpu_share": round(d["load"] / d["wall"], 3) if d["wall"] else None,
            "other_cpu_cores": round(max(0.0, d["machine"] - d["server"] - d["redis"] - d["load"]) / d["wall"], 2)
            if d["wall"] else None,
            "loadavg": [round(x, 2) for x in os.getloadavg()],
        })
        if col.lat:
            slow = sorted(zip(col.lat, col.seqs), reverse=True)[:5]
            row["slowest"] = [{"seq": s, "sent_at_s": round(s / rate, 2), "ms": round(v / 1000, 2)} for v, s in slow]
            # the worst latency of the notifications sent in each second of the phase: stalls show here
            worst = [0] * (int((m - 1) / rate) + 1)
            for v, s in zip(col.lat, col.seqs):
                k = int(s / rate)
                worst[k] = max(worst[k], v)
            row["max_ms_by_second"] = [round(v / 1000, 1) for v in worst]
        row["errors"] = dict(errors)
        row["error_count"] = sum(errors.values())
        why = []
        if row["error_count"]:
            why.append("errors")
        if lost or col.dup or col.misdelivered or not complete:
            why.append("lost/dup/misdelivered" if (lost or col.dup or col.misdelivered) else "incomplete")
        if not nobody and (lat["p99"] is None or lat["p99"] >= cfg.p99_limit):
            why.append(f"p99 ≥ {cfg.p99_limit:g} ms")
        if lag["p99"] is not None and lag["p99"] >= cfg.p99_limit:
            why.append(f"publishes late ≥ {cfg.p99_limit:g} ms (p99)")
        row["ok"], row["why"] = not why, why
        log(f"{label} {rate:g}/s: {col.received}/{accepted} delivered, lost {lost}, dup {col.dup}, "
            f"misdelivered {col.misdelivered}, errors {row['error_count']}, "
            f"{row['server_cpu_us_per_notification']} µs server CPU/notification "
            f"({row['server_cpu_cores']} cores), p50 {row['latency_p50_ms']} p99 {row['latency_p99_ms']} ms, "
            f"send lag p99 {row['send_lag_p99_ms']} ms, load CPU {row['load_cpu_share']:.0%}, "
            f"other CPU {row['other_cpu_cores']} → {'ok' if not why else 'FAIL: ' + ', '.join(why)}")
        self.phases.append(row)
        return row

    async def find_max(self) -> dict:
        """Step the rate up until one fails, then bisect between the last pass and that."""
        cfg = self.cfg
        start = time.monotonic()
        passed = failed = None
        note = None
        hard_failure = False

        def time_left() -> bool:
            return time.monotonic() - start + cfg.step_duration + cfg.pause + 15 <= cfg.budget

        async def step(rate: float, label: str) -> dict:
            row = await self.phase(label, rate, cfg.step_duration)
            tries = 0
            while (not row["ok"] and tries < cfg.retry and not row["error_count"] and not row["lost"]
                   and not row["duplicates"] and not row["misdelivered"] and time_left()):
                tries += 1
                row = await self.phase(label + " (again)", rate, cfg.step_duration)
            return row

        for rate in cfg.steps:
            if not time_left():
                note = f"time budget ({cfg.budget:g} s) spent before {rate:g}/s"
                break
            row = await step(rate, "step")
            if row["ok"]:
                passed = rate
                continue
            failed = rate
            hard_failure = bool(row["error_count"] or row["lost"] or row["duplicates"] or row["misdelivered"])
            break
        else:
            note = f"every step passed, up to {cfg.steps[-1]:g}/s"
        lo, hi = passed, failed
        if lo is not None and hi is not None and not hard_failure and self.col.live() == self.live0:
            for _ in range(cfg.refine):
                mid = round((lo + hi) / 2 / 25) * 25
                if mid <= lo or mid >= hi:
                    break
                if not time_left():
                    note = f"time budget ({cfg.budget:g} s) spent while bisecting"
                    break
                row = await step(mid, "bisect")
                if row["ok"]:
                    lo = mid
                else:
                    hi = mid
                    if row["error_count"] or row["lost"] or row["duplicates"] or row["misdelivered"]:
                        break
        result = {"max_sustained_rate": lo, "first_failing_rate": hi, "p99_limit_ms": cfg.p99_limit,
                  "workers": cfg.workers, "seconds": round(time.monotonic() - start, 1), "note": note}
        best = next((r for r in reversed(self.phases) if r["ok"] and r["rate"] == lo and r["label"] != "warm-up"),
                    None)
        if best is not None:
            result["at_max"] = {k: best.get(k) for k in ("server_cpu_us_per_notification", "server_cpu_cores",
                                                         "latency_p50_ms", "latency_p99_ms")}
        log(f"find-max: highest rate passed {lo if lo is not None else 'none'}/s"
            + (f", first failing {hi:g}/s" if hi is not None else "") + (f" ({note})" if note else ""))
        return result


# ------------------------------------------------------------------------------------
# Reporting
# ------------------------------------------------------------------------------------

COLUMNS = [
    ("label", "phase", None), ("rate", "rate/s", 0), ("sent_per_s", "sent/s", None),
    ("accepted", "notifs", None), ("server_cpu_us_per_notification", "server CPU µs/notif", 1),
    ("server_cpu_net_us_per_notification", "− idle µs/notif", 1), ("server_cpu_cores", "server cores", 2), ("redis_cpu_us_per_notification", "redis µs/notif", 1),
    ("latency_p50_ms", "p50 ms", 1), ("latency_p99_ms", "p99 ms", 1), ("latency_max_ms", "max ms", 1),
    ("send_lag_p99_ms", "late p99 ms", 1), ("lost", "lost", None), ("duplicates", "dup", None),
    ("misdelivered", "misdeliv", None), ("error_count", "errors", None), ("load_cpu_share", "load CPU", None),
    ("other_cpu_cores", "other CPU", None), ("ok", "result", None),
]


def cell(row: dict, key: str, digits) -> str:
    v = row.get(key)
    if key in ("load_cpu_share", "other_cpu_cores"):
        return "–" if v is None else f"{v:.0%}"
    if key == "ok":
        return "ok" if v else "FAIL: " + ", ".join(row.get("why", []))
    return b.fmt(v, digits) if digits is not None else b.fmt(v)


def table(rows: list[dict], markdown: bool) -> str:
    cells = [[c[1] for c in COLUMNS]] + [[cell(r, k, d) for k, _, d in COLUMNS] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(cells[0]) + " |",
                 "|" + "|".join("---" if i == 0 or i == len(COLUMNS) - 1 else "---:" for i in range(len(COLUMNS))) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in cells[1:]]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    lines = []
    for n, r in enumerate(cells):
        lines.append("  ".join(v.ljust(w) if i in (0, len(COLUMNS) - 1) else v.rjust(w)
                               for i, (v, w) in enumerate(zip(r, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summary(result: dict | None, setup: dict, phases: list[dict]) -> str:
    idle = setup.get("idle")
    lines = []
    if idle:
        lines.append(f"Idle (everyone connected, nothing published): the server used {idle['server_cores']:.1%} of a "
                     f"core ({idle['server_us_per_subscriber_s']} µs per subscriber per second: heartbeats).")
    for r in phases:
        if r.get("delivery_us_per_notification") is not None:
            lines.append(f"{r['label'].capitalize()} {r['rate']:g}/s: {r['server_cpu_net_us_per_notification']} µs "
                         f"server CPU per notification less idle; publishing alone (to users nobody is connected "
                         f"as, same rate) {r['publish_only_us']} µs; the difference, what the delivery adds: "
                         f"{r['delivery_us_per_notification']} µs (run to run, these move by ±20%).")
    if result:
        lines.append(find_max_summary(result))
    return "\n\n".join(lines)


def find_max_summary(result: dict) -> str:
    lo, hi = result["max_sustained_rate"], result["first_failing_rate"]
    text = (f"Highest rate sustained by {result['workers']} worker(s) (p99 publish→deliver and p99 publish "
            f"lateness < {result['p99_limit_ms']:g} ms, nothing lost, no error): "
            + (f"**{lo:g}/s**" if lo is not None else "**none** (the first step failed)")
            + (f"; {hi:g}/s failed" if hi is not None else "")
            + (f" ({result['note']})" if result.get("note") else "") + ".")
    at = result.get("at_max")
    if at:
        text += (f" At {lo:g}/s: {at['server_cpu_us_per_notification']} µs server CPU per notification "
                 f"({at['server_cpu_cores']} cores), p50 {at['latency_p50_ms']} ms, p99 {at['latency_p99_ms']} ms.")
    return text


def write_results(cfg: argparse.Namespace, meta: dict, setup: dict, phases: list[dict], result: dict | None,
                  problems: list[str]) -> tuple[Path, Path]:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    jpath, mpath = out / f"{cfg.name}.json", out / f"{cfg.name}.md"
    jpath.write_text(json.dumps({"meta": meta, "setup": setup, "phases": phases, "find_max": result,
                                 "server_log_problems": problems[:20], "server_log_problem_count": len(problems)},
                                indent=2, ensure_ascii=False) + "\n")
    src = meta["notifier_source"]
    issues = [f"- {r['label']} {r['rate']:g}/s: errors {json.dumps(r['errors'], ensure_ascii=False)}"
              for r in phases if r.get("errors")]
    issues += [f"- {r['label']} {r['rate']:g}/s: lost {r['lost']} (users {r['users_with_loss']}), "
               f"duplicates {r['duplicates']}, misdelivered {r['misdelivered']}"
               for r in phases if r.get("lost") or r.get("duplicates") or r.get("misdelivered")]
    if setup.get("errors"):
        issues.append(f"- connecting: {json.dumps(setup['errors'], ensure_ascii=False)}")
    if problems:
        issues.append(f"- {len(problems)} problem line(s) in the server log, first: `{problems[0][:200]}`")
    md = [
        f"# notifier: the notifications workload — {meta['started']}",
        "",
        f"Command: `{meta['command']}`  ",
        f"notifier: {'work tree at ' if src['from'] == 'work tree' else ''}commit {meta['git']}"
        + (f" plus uncommitted changes ({', '.join(src['uncommitted_changes'])})" if src["uncommitted_changes"] else "")
        + f" (sha256 {src['sha256']}).  ",
        f"Machine: {meta['machine']['cpus']} CPUs ({meta['machine']['cpu_model']}), load average at start "
        f"{meta['machine']['loadavg_at_start']}, at end {meta.get('loadavg_at_end')}; total {meta.get('wall_s')} s.",
        "",
        f"{setup.get('subscribers_open', 0):,} of {cfg.subscribers:,} users connected over {cfg.transport} "
        f"(one connection and one token each) to {cfg.workers} gunicorn gevent worker(s) with Redis, in "
        f"{setup.get('connect_s')} s. Each phase: notifications to one random user each (`user_id`), POSTed with a "
        f"publisher key on a fixed schedule over {cfg.publishers} keep-alive connections. "
        "`server CPU µs/notif`: gunicorn master + workers CPU over the phase ÷ accepted notifications; "
        "`server cores`: the same ÷ wall time. Latency: publish (stamped just before the POST is written) → the "
        "bytes reaching the user's socket (kernel receive timestamp). `late p99`: how late publishes went out "
        "after their scheduled time (waiting for a free publisher connection or for the load process). "
        "`misdeliv`: notifications that reached another user. See bench/README.md.",
        "",
        table(phases, markdown=True),
        "",
        summary(result, setup, phases),
        "",
        "## Errors, losses, server log",
        "",
        *(issues or ["none"]),
        "",
    ]
    mpath.write_text("\n".join(md))
    return jpath, mpath


# ------------------------------------------------------------------------------------

async def run(cfg: argparse.Namespace, argv: list[str]) -> int:
    b.raise_nofile()
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if nofile != resource.RLIM_INFINITY and nofile < cfg.subscribers + cfg.publishers + 100:
        print(f"open-file limit {nofile} is too low for {cfg.subscribers} subscribers: run through bench/run",
              file=sys.stderr)
        return 2
    workdir = Path(cfg.out) / "logs" / cfg.name
    workdir.mkdir(parents=True, exist_ok=True)
    source = b.snapshot_source(workdir / "notifier-src", cfg.notifier_rev)
    b.SOURCE = Path(source["copied_to"])
    sys.path.insert(0, str(b.SOURCE))
    from notifier.tokens import issue_token  # the copy that runs: same token code as the server

    if cfg.worker_connections is None and cfg.subscribers > 9000:
        cfg.worker_connections = math.ceil(cfg.subscribers / 0.95) + 100
    started = datetime.now(timezone.utc)
    meta = {
        "started": started.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "command": "bench/run notifications " + " ".join(argv),
        "git": source["commit"],
        "notifier_source": source,
        "machine": {"cpus": os.cpu_count(), "cpu_model": platform.processor() or b._cpu_model(),
                    "loadavg_at_start": [round(x, 2) for x in os.getloadavg()], "nofile": nofile,
                    "python": platform.python_version()},
        "settings": {k: v for k, v in vars(cfg).items() if k not in ("out", "name")},
        "versions": b.versions(["notifier"]),
        "server_logs": str(workdir),
    }
    secret, key = secrets.token_hex(32), secrets.token_hex(16)
    redis = b.Redis(workdir)
    server = b.Server("notifier", cfg.workers, redis, workdir / "notifier.log", cfg.worker_connections,
                      extra_env={"NOTIFIER_SECRET": secret, "NOTIFIER_API_KEYS": key})
    r = Run(cfg, server, redis, secret, key)
    setup: dict = {"worker_connections": cfg.worker_connections or 10000}
    result = None
    t0 = time.monotonic()
    status = 0
    try:
        redis.start()
        server.start()
        log(f"redis :{redis.port}, notifier :{server.port} ({cfg.workers} worker(s)); logs in {workdir}")
        setup.update(await r.connect(issue_token))
        if cfg.idle_sample > 0:
            await r.idle()
            setup["idle"] = await r.idle_sample(cfg.idle_sample)
        if cfg.warmup:
            # lazily loaded code paths and first-use allocations are not charged to the first phase
            await r.phase("warm-up", 200.0, cfg.warmup / 200.0)
        if cfg.find_max:
            result = await r.find_max()
        else:
            cal = await r.phase("to nobody", cfg.rate, cfg.calibrate, nobody=True) if cfg.calibrate > 0 else None
            row = await r.phase("paced", cfg.rate, cfg.duration)
            net, cal_net = row.get("server_cpu_net_us_per_notification"), (cal or {}).get(
                "server_cpu_net_us_per_notification")
            if net is not None and cal_net is not None:
                # what the delivery adds to a publish: the follower decoding and dispatching it, the write
                row["publish_only_us"] = cal_net
                row["delivery_us_per_notification"] = round(net - cal_net, 1)
                log(f"of {net} µs per notification (less idle), publishing to nobody costs {cal_net} µs: "
                    f"the delivery adds {row['delivery_us_per_notification']} µs")
    except (asyncio.CancelledError, KeyboardInterrupt):
        log("interrupted or timed out: stopping what this run started")
        setup.setdefault("errors", {})["interrupted or timed out"] = 1
        status = 130
    except Exception as exc:  # record it; the finally below stops everything
        log(f"FAILED: {type(exc).__name__}: {exc}")
        setup.setdefault("errors", {})[f"run failed: {type(exc).__name__}: {exc}"] = 1
        status = 1
    finally:
        gc.unfreeze()
        await lg.close_subs(r.col)
        server.stop()
        redis.stop()
        b.stop_started()
    problems = server.log_problems()
    meta["wall_s"] = round(time.monotonic() - t0, 1)
    meta["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    jpath, mpath = write_results(cfg, meta, setup, r.phases, result, problems)
    print()
    print(table(r.phases, markdown=False))
    text = summary(result, setup, r.phases).replace("**", "")
    if text:
        print()
        print(text)
    print(f"\nload average: start {meta['machine']['loadavg_at_start']}, end {meta['loadavg_at_end']}")
    print(f"wrote {jpath.relative_to(b.ROOT) if jpath.is_relative_to(b.ROOT) else jpath} and {mpath.name}")
    if status == 0 and any(p.get("lost") or p.get("duplicates") or p.get("misdelivered") for p in r.phases):
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(b.scenario_main(parse_args, run))
