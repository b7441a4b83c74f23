"""What reading the inbox costs: ``GET /inbox`` latency and server CPU per request with
``--per-user`` stored notifications for each of ``--users`` users, on SQLite and PostgreSQL.

    bench/run inbox [--users 10000] [--per-user 1000] [--stores sqlite,pg] [--clients 1,4]
                    [--requests 2000] [--limit 50] [--timeout 3600] [--name NAME]

Per store: fill the database straight (bench/inbox_fill.py: notifier's own tables from
``InboxStore.init()``, rows as the server stores them, loaded in bulk), start one notifier
server (gunicorn, one gevent worker, notifier's ``gunicorn.conf.py``, a copy of the work
tree taken at start; the in-process broker, ``NOTIFIER_SECRET`` set, ``NOTIFIER_INBOX_URL``
on that database) on a free loopback port, warm it up, then for each ``--clients`` count
two phases of ``--requests`` requests from that many keep-alive connections, each request
for a random user with its own token (``issue_token``):

- ``page 1``: ``GET /inbox?limit=50``, the newest;
- ``page 2``: ``GET /inbox?limit=50&before=<the last id of page 1>``.

Every answer is checked (200, the user's expected ids, ``unread``, ``more``). Figures per
phase: latency (request written → answer read, in this process) p50/p99/max, requests/s,
the server's CPU (master + worker, ns) ÷ requests and PostgreSQL's (postmaster and its
backends) beside it. The private PostgreSQL is tests/pg_server.py's; the SQLite file is in
the run's log directory. Everything started is stopped by PID and every database removed,
also on failure, Ctrl-C, SIGTERM or ``--timeout``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import secrets
import shutil
import statistics
import sys
import threading
import time
from array import array
from datetime import datetime, timezone
from typing import Any, Callable
from pathlib import Path

import bench as b
import loadgen as lg
from pgserver import PostgresCpu, PostgresServer

log = b.log
STORES = ("sqlite", "pg")


def parse_args(argv: list[str]) -> argparse.Namespace:
    ints = lambda s: [int(x) for x in s.split(",") if x.strip()]  # noqa: E731
    p = argparse.ArgumentParser(prog="bench/run inbox", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--users", type=int, default=10000)
    p.add_argument("--per-user", type=int, default=1000, help="stored notifications per user")
    p.add_argument("--unread", type=int, default=20, help="of them, the newest this many are unread")
    p.add_argument("--days", type=float, default=30.0, help="the notifications span this many days up to now "
                   "(within NOTIFIER_INBOX_TTL's 90)")
    p.add_argument("--stores", default=",".join(STORES), help="sqlite, pg or both")
    p.add_argument("--clients", type=ints, default=[1, 4], help="keep-alive connections, one phase pair each")
    p.add_argument("--requests", type=int, default=2000, help="requests per phase")
    p.add_argument("--warmup", type=int, default=300, help="requests (of each page) before measuring")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--seed", type=int, default=None, help="seed for picking the users (default: random)")
    p.add_argument("--timeout", type=float, default=3600.0, help="hard limit on the whole run, s")
    p.add_argument("--out", default=str(b.BENCH / "results"), help="directory for <name>.json and <name>.md")
    p.add_argument("--name", default=None, help="file name stem (default: inbox-<date-time>)")
    cfg = p.parse_args(argv)
    cfg.stores = [s.strip() for s in cfg.stores.split(",") if s.strip()]
    if set(cfg.stores) - set(STORES) or not cfg.stores:
        p.error(f"--stores: {', '.join(STORES)}")
    if cfg.users < 1 or cfg.per_user < 2 * cfg.limit + 1 or not cfg.clients or min(cfg.clients) < 1:
        p.error("--users ≥ 1, --per-user > 2 × --limit (two full pages and more), --clients ≥ 1")
    return b.run_defaults(cfg, "inbox")


class Reader:
    """Random users' pages over keep-alive connections, each answer checked against the plan."""

    def __init__(self, cfg: argparse.Namespace, port: int, plan, secret: str, issue_token) -> None:
        self.cfg, self.port, self.plan, self.secret, self.issue_token = cfg, port, plan, secret, issue_token
        self.rng = random.Random(cfg.seed)
        self.tokens: dict[int, str] = {}
        self.expected = {}

    def users(self, n: int) -> list[int]:
        """``n`` random users, their tokens minted beforehand (not while measuring)."""
        picked = [self.rng.randrange(self.cfg.users) for _ in range(n)]
        for u in picked:
            if u not in self.tokens:
                self.tokens[u] = self.issue_token(self.secret, f"u{u}", ttl=int(self.cfg.timeout) + 3600)
        return picked

    def check(self, user: int, page: int, status: int, body: bytes) -> str | None:
        """What is wrong with an answer, or None."""
        if status != 200:
            return f"HTTP {status}" if status else "no answer"
        limit = self.cfg.limit
        got = json.loads(body)
        want = self.plan.newest_ids(user, 2 * limit)[(page - 1) * limit:page * limit]
        if [n["id"] for n in got["notifications"]] != want:
            return "not the user's expected ids"
        if got["unread"] != self.plan.unread or got["more"] is not True:
            return "wrong unread or more"
        return None

    async def phase(self, label: str, clients: int, page: int, n: int, server: b.Server,
                    pg_cpu: PostgresCpu | None) -> dict:
        limit = self.cfg.limit
        users = self.users(n)
        before = {u: self.plan.newest_ids(u, limit)[-1] for u in users} if page == 2 else {}
        todo = iter(users)
        lat = array("q")  # µs
        errors: dict[str, int] = {}
        conns = [lg.Publisher(self.port) for _ in range(clients)]

        async def run(conn: lg.Publisher) -> None:
            for u in todo:
                path = f"/inbox?limit={limit}" + (f"&before={before[u]}" if page == 2 else "")
                t0 = time.perf_counter_ns()
                status, body = await conn.get(path, self.tokens[u])
                lat.append((time.perf_counter_ns() - t0) // 1000)
                wrong = self.check(u, page, status, body)
                if wrong:
                    errors[wrong] = errors.get(wrong, 0) + 1

        if pg_cpu is not None:
            pg_cpu.start()
        cpu0, me0, t0 = server.cpu(), time.process_time(), time.monotonic()
        try:
            await asyncio.wait_for(asyncio.gather(*(run(c) for c in conns)), max(60.0, n * 0.5))
        finally:
            for c in conns:
                c.close()
        wall = time.monotonic() - t0
        cpu, me = server.cpu() - cpu0, time.process_time() - me0
        pcpu = pg_cpu.stop() if pg_cpu is not None else None
        ms = lg.percentiles(lat)
        row = {"phase": label, "clients": clients, "page": page, "requests": len(lat), "errors": errors,
               "wall_s": round(wall, 2), "requests_per_s": round(len(lat) / wall),
               "p50_ms": round(ms["p50"], 2), "p99_ms": round(ms["p99"], 2), "max_ms": round(ms["max"], 2),
               "server_us_per_request": round(cpu / len(lat) * 1e6),
               "postgres_us_per_request": round(pcpu / len(lat) * 1e6) if pcpu is not None else None,
               "load_cpu_share": round(me / wall, 2)}
        log(f"  {label}: {row['requests_per_s']}/s, p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, "
            f"server {row['server_us_per_request']} µs/request"
            + (f", PostgreSQL {row['postgres_us_per_request']} µs/request" if pcpu is not None else "")
            + (f", errors {errors}" if errors else ""))
        return row


async def measure(cfg: argparse.Namespace, store: str, url: str, plan, workdir: Path, issue_token,
                  pg: PostgresServer | None) -> list[dict]:
    """One server on ``url``: warm-up, then a page-1 and a page-2 phase per --clients."""
    secret = secrets.token_hex(32)
    server = b.Server("notifier", 1, b.Redis(workdir), workdir / f"notifier-{store}.log", None,
                      extra_env={"NOTIFIER_SECRET": secret, "NOTIFIER_INBOX_URL": url})
    del server.env["REDIS_URL"]  # the in-process broker: GET /inbox does not touch it
    server.peer = "notifier-inbox"  # no Redis follower to wait for
    try:
        server.start()
        log(f"{store}: notifier :{server.port}, log {server.logfile}")
        reader = Reader(cfg, server.port, plan, secret, issue_token)
        pg_cpu = PostgresCpu(pg) if pg is not None else None
        for page in (1, 2):
            warm = await reader.phase(f"warm-up page {page}", max(cfg.clients), page, cfg.warmup, server, None)
            if warm["errors"]:
                raise RuntimeError(f"warm-up answers wrong: {warm['errors']}")
        rows = []
        for clients in cfg.clients:
            for page in (1, 2):
                row = await reader.phase(f"{clients} client(s), page {page}", clients, page, cfg.requests, server,
                                         pg_cpu)
                rows.append({"store": store, **row})
        problems = server.log_problems()
        if problems:
            rows[-1]["server_log_problems"] = problems[:20]
        return rows
    finally:
        server.stop()


def table(rows: list[dict]) -> str:
    lines = ["| store | clients | page | requests/s | p50 ms | p99 ms | max ms | server CPU µs/request "
             "| PostgreSQL CPU µs/request | load-side CPU | errors |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        pgc = r["postgres_us_per_request"]
        lines.append(f"| {r['store']} | {r['clients']} | {r['page']} | {r['requests_per_s']:,} | {r['p50_ms']} "
                     f"| {r['p99_ms']} | {r['max_ms']} | {r['server_us_per_request']:,} "
                     f"| {'—' if pgc is None else f'{pgc:,}'} | {r['load_cpu_share']:.0%} "
                     f"| {sum(r['errors'].values()) or 0} |")
    return "\n".join(lines)


def write_results(cfg: argparse.Namespace, meta: dict, fills: dict, rows: list[dict]) -> tuple[Path, Path]:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    jpath, mpath = out / f"{cfg.name}.json", out / f"{cfg.name}.md"
    jpath.write_text(json.dumps({"meta": meta, "fills": fills, "rows": rows}, indent=2, ensure_ascii=False) + "\n")
    fill_lines = [f"- {s}: {f['rows']:,} rows loaded in {f['load_s']} s"
                  + (f" + {f['after_s']} s VACUUM ANALYZE" if f.get("after_s") else "")
                  + f", {f['bytes'] / 1e9:.2f} GB (table and indexes)" for s, f in fills.items() if "rows" in f]
    errors = [f"- {r['store']} {r['phase']}: {r['errors']}" for r in rows if r["errors"]]
    errors += [f"- {s}: {f['error']}" for s, f in fills.items() if "error" in f]
    errors += [f"- {r['store']} server log: {r['server_log_problems'][:3]}" for r in rows
               if r.get("server_log_problems")]
    md = [f"# GET /inbox — {meta['started']}", "",
          f"Command: `{meta['command']}`  ",
          f"notifier: commit {meta['git']}" + (f" plus uncommitted changes ({', '.join(meta['uncommitted'])})"
                                               if meta["uncommitted"] else "")
          + f"; {meta['machine']['cpus']} CPUs ({meta['machine']['cpu_model']}), load average at start "
          f"{meta['machine']['loadavg_at_start']}, at end {meta.get('loadavg_at_end')}; total {meta.get('wall_s')} s.",
          "",
          f"{cfg.users:,} users × {cfg.per_user:,} stored notifications ({cfg.unread} unread each), "
          f"`GET /inbox?limit={cfg.limit}` (page 1) and `&before=<its last id>` (page 2) for random users, "
          f"{cfg.requests:,} requests a phase over keep-alive connections; one notifier server (one gevent "
          "worker) per store. Latency: request written → answer read, in the load process. Server CPU: "
          "gunicorn master + worker ÷ requests; PostgreSQL CPU: postmaster + backends ÷ requests. "
          "Every answer checked (ids, unread, more). See bench/README.md.", "",
          "Filling the database (straight into notifier's tables, not through the server):", "",
          *fill_lines, "",
          table(rows), "",
          "## Errors", "", *(errors or ["none"]), ""]
    mpath.write_text("\n".join(md))
    return jpath, mpath


async def in_thread(fn: Callable[[], Any], stop: threading.Event) -> Any:
    """``fn()`` in a thread, so the loop still answers SIGTERM and ``--timeout`` meanwhile;
    cancelled, it sets ``stop`` (the fill checks it between chunks) and waits a while for the
    thread (a COPY or VACUUM under way ends when its database is stopped)."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = fn()
        except BaseException as exc:  # noqa: BLE001  (raised again in the loop)
            result["error"] = exc

    thread = threading.Thread(target=target, name="inbox-fill", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            await asyncio.sleep(0.2)
    except asyncio.CancelledError:
        stop.set()
        await asyncio.to_thread(thread.join, 30)
        raise
    if "error" in result:
        raise result["error"]
    return result["value"]


async def run(cfg: argparse.Namespace, argv: list[str]) -> int:
    workdir = Path(cfg.out) / "logs" / cfg.name
    workdir.mkdir(parents=True, exist_ok=True)
    source = b.snapshot_source(workdir / "notifier-src")
    b.SOURCE = Path(source["copied_to"])
    sys.path.insert(0, str(b.SOURCE))
    from notifier.tokens import issue_token  # the copy that runs: the same code as the server

    import inbox_fill  # imports notifier from that copy too

    meta = {"started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "command": "bench/run inbox " + " ".join(argv), "git": source["commit"],
            "uncommitted": source["uncommitted_changes"], "notifier_source": source,
            "machine": {"cpus": os.cpu_count(), "cpu_model": platform.processor() or b._cpu_model(),
                        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
                        "python": platform.python_version()},
            "settings": {k: v for k, v in vars(cfg).items() if k not in ("out", "name")},
            "server_logs": str(workdir)}
    plan = inbox_fill.Plan(cfg.users, cfg.per_user, cfg.unread, cfg.days, int(time.time() * 1000))
    fills: dict[str, dict] = {}
    rows: list[dict] = []
    status = 0
    t0 = time.monotonic()
    for store in cfg.stores:
        pg: PostgresServer | None = None
        sqlite_file = workdir / "inbox.db"
        try:
            t1 = time.monotonic()
            if store == "pg":
                pg = PostgresServer(workdir / "postgres").start()
                url = pg.url
            else:
                url = f"sqlite:///{sqlite_file}"
            stop = threading.Event()
            fills[store] = await in_thread(lambda: inbox_fill.fill(store, url, plan, pg, stop), stop)
            fills[store]["fill_wall_s"] = round(time.monotonic() - t1, 1)
            rows += await measure(cfg, store, url, plan, workdir, issue_token, pg)
        except (asyncio.CancelledError, KeyboardInterrupt):
            log("interrupted or timed out: stopping what this run started")
            fills.setdefault(store, {})["error"] = "interrupted or timed out"
            status = 130
            break
        except Exception as exc:  # record it; the finally stops and removes what this store started
            log(f"{store} FAILED: {type(exc).__name__}: {exc}")
            fills.setdefault(store, {})["error"] = f"{type(exc).__name__}: {exc}"
            status = 1
        finally:
            if pg is not None:
                pg.remove()
            for f in workdir.glob("inbox.db*"):
                f.unlink()
            b.stop_started()
    meta["wall_s"] = round(time.monotonic() - t0, 1)
    meta["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    jpath, mpath = write_results(cfg, meta, fills, rows)
    print()
    print(table(rows))
    print(f"\nwrote {jpath.relative_to(b.ROOT) if jpath.is_relative_to(b.ROOT) else jpath} and {mpath.name}")
    if status == 0 and any(r["errors"] for r in rows):
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(b.scenario_main(parse_args, run))
