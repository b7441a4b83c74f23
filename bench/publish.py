"""The publish path: server CPU per POST /notify with nobody subscribed, beside the floor of
any Flask request on the same gunicorn gevent worker.

    bench/run publish [--cases floor,memory,redis,memory-batch,redis-batch,inbox-sqlite,...] [--count 4000]
                      [--batch 100] [--publishers 8] [--rounds 3] [--rev REV ...] [--name NAME]

Cases (each a fresh server, 1 gevent worker, notifier's gunicorn settings, a publisher key):
- ``floor``: bench/peers/floor_app.py, a bare Flask route (``request.get_json()``,
  ``jsonify``, 202). Whatever notifier costs above it is notifier's own.
- ``memory`` / ``redis``: notifier's POST /notify, one notification a request, with the
  in-process broker / through a private redis-server.
- ``inbox-sqlite`` / ``inbox-pg``: ``memory`` with the inbox on: ``NOTIFIER_INBOX_URL`` on a
  SQLite file in the work directory / on a private PostgreSQL (tests/pg_server.py), a fresh
  file or database each run. Every body has a ``user_id`` (u0..u999), so every notification
  is kept: ``memory`` is the same publish with the inbox off.
- ``floor-batch`` / ``memory-batch`` / ``redis-batch`` / ``inbox-sqlite-batch`` /
  ``inbox-pg-batch``: arrays of ``--batch`` notifications a request; reported per
  notification (the floor app parses the array and answers 202).

``--publishers`` keep-alive connections post back to back; the server's CPU (master +
worker) over the measured requests ÷ requests (÷ notifications for batches) is the
figure, with Redis's (PostgreSQL's) own CPU beside it. Every case runs ``--rounds`` times, interleaved,
and the table shows medians. ``--rev`` (repeatable; ``work`` is the work tree) runs every
case for each revision, interleaved in one run: an A/B of a change.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import bench as b
import loadgen as lg
from pgserver import PostgresCpu, PostgresServer

KEY = "bench-publisher-key"
CASES = ("floor", "memory", "redis", "inbox-sqlite", "inbox-pg",
         "floor-batch", "memory-batch", "redis-batch", "inbox-sqlite-batch", "inbox-pg-batch")


def body(seq: int, batch: int) -> bytes:
    one = b'{"user_id":"u%d","title":"bench","message":"publish path %d","data":{"seq":%d}}'
    if not batch:
        return one % (seq % 1000, seq, seq)
    return b"[" + b",".join(one % ((seq + i) % 1000, seq + i, seq + i) for i in range(batch)) + b"]"


async def post_all(port: int, bodies: list[bytes], publishers: int) -> tuple[int, dict[int, int]]:
    """Post every body over ``publishers`` keep-alive connections; (requests, statuses)."""
    pubs = [lg.Publisher(port, key=KEY) for _ in range(publishers)]
    statuses: dict[int, int] = {}
    it = iter(bodies)

    async def run(pub: lg.Publisher) -> None:
        for data in it:
            status = await pub.post(data)
            statuses[status] = statuses.get(status, 0) + 1

    try:
        await asyncio.wait_for(asyncio.gather(*(run(p) for p in pubs)), 300)
    finally:
        for p in pubs:
            p.close()
    return len(bodies), statuses


def profile(server: b.Server, out: Path) -> subprocess.Popen:
    """py-spy sampling the worker while the measured requests run (its own cost inflates the
    CPU figures of that run: profile and measure in separate runs)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    spy = subprocess.Popen([str(b.ROOT / ".venv" / "bin" / "py-spy"), "record", "--pid",
                            str(server.worker_procs()[0].pid), "--rate", "1000", "--format", "raw", "--nonblocking",
                            "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    return spy


RUNS: dict[str, int] = {}
"""Runs of each inbox case so far: each gets a database of its own."""


def inbox_url(case: str, workdir: Path, pg: PostgresServer | None) -> str | None:
    """Where an inbox case keeps its notifications: a fresh SQLite file or PostgreSQL database."""
    if not case.startswith("inbox-"):
        return None
    RUNS[case] = RUNS.get(case, 0) + 1
    name = f"{case.replace('-', '_')}_{RUNS[case]}"
    if case.startswith("inbox-pg"):
        assert pg is not None
        return pg.create_database(name)
    return f"sqlite:///{workdir / name}.db"


def run_case(case: str, source: Path, args: argparse.Namespace, workdir: Path,
             pg: PostgresServer | None = None) -> dict:
    batch = args.batch if case.endswith("-batch") else 0
    redis = b.Redis(workdir)
    redis.start()
    server = b.Server("notifier", 1, redis, workdir / f"{case}.log", None)
    server.cwd = source
    server.env["NOTIFIER_API_KEYS"] = KEY
    if case.startswith("floor"):
        server.cmd = [*server.cmd[:3], "floor_app:app", "-c", "gunicorn.conf.py",
                      "--pythonpath", str(b.BENCH / "peers")]
    url = inbox_url(case, workdir, pg)
    if url:
        server.env["NOTIFIER_INBOX_URL"] = url
    if not case.startswith("redis"):
        del server.env["REDIS_URL"]
        server.peer = case  # no Redis follower to wait for
    pg_cpu = PostgresCpu(pg) if case.startswith("inbox-pg") else None
    try:
        server.start()
        per = batch or 1
        warm = [body(i, batch) for i in range(max(50, 400 // per))]
        asyncio.run(post_all(server.port, warm, args.publishers))
        n = args.count // per
        bodies = [body(i, batch) for i in range(n)]
        time.sleep(0.3)
        spy = profile(server, Path(args.profile) / f"{case}-{source.name}.txt") if args.profile else None
        if pg_cpu is not None:
            pg_cpu.start()
        cpu0, rcpu0, me0, t0 = server.cpu(), redis.cpu(), time.process_time(), time.monotonic()
        requests, statuses = asyncio.run(post_all(server.port, bodies, args.publishers))
        wall = time.monotonic() - t0
        cpu, rcpu, me = server.cpu() - cpu0, redis.cpu() - rcpu0, time.process_time() - me0
        pcpu = pg_cpu.stop() if pg_cpu is not None else None
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        accepted = statuses.get(202, 0)
        if accepted != requests:
            b.log(f"{case}: statuses {statuses} (expected {requests} x 202)")
        return {"case": case, "batch": batch, "requests": requests, "notifications": requests * per,
                "statuses": {str(k): v for k, v in statuses.items()}, "wall_s": round(wall, 3),
                "requests_per_s": round(requests / wall), "server_cpu_s": round(cpu, 4),
                "us_per_request": round(cpu / requests * 1e6, 1),
                "us_per_notification": round(cpu / (requests * per) * 1e6, 2),
                "redis_us_per_notification": round(rcpu / (requests * per) * 1e6, 2) if case.startswith("redis")
                else None,
                "postgres_us_per_notification": round(pcpu / (requests * per) * 1e6, 2) if pcpu is not None
                else None,
                "load_cpu_share": round(me / wall, 2)}
    finally:
        server.stop()
        redis.stop()
        if url and url.startswith("sqlite"):
            for f in workdir.glob(url.rsplit("/", 1)[1] + "*"):
                f.unlink()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--count", type=int, default=4000, help="notifications measured per case")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--publishers", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--rev", action="append", default=None, help="git revision, or 'work' (repeatable)")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="py-spy the worker in every case; collapsed stacks to DIR/<case>-<src>.txt")
    p.add_argument("--out", default=str(b.BENCH / "results"))
    p.add_argument("--name", default=None)
    args = p.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    unknown = set(cases) - set(CASES)
    if unknown:
        p.error(f"unknown cases: {', '.join(sorted(unknown))}")
    revs = args.rev or ["work"]
    name = args.name or "publish-" + datetime.now().strftime("%Y-%m-%d-%H%M")
    workdir = Path(tempfile.mkdtemp(prefix="bench-publish-"))
    sources = {rev: b.snapshot_source(workdir / f"src-{i}", None if rev == "work" else rev)
               for i, rev in enumerate(revs)}
    results: list[dict] = []
    pg = None
    try:
        if any(c.startswith("inbox-pg") for c in cases):
            pg = PostgresServer(workdir / "postgres").start()
        for r in range(args.rounds):
            for case in cases:
                for rev in revs:
                    res = run_case(case, Path(sources[rev]["copied_to"]), args, workdir, pg)
                    res.update(rev=rev, round=r)
                    results.append(res)
                    b.log(f"round {r + 1} {case:18} {rev:10} {res['us_per_request']:8.1f} us/request "
                          f"{res['us_per_notification']:7.2f} us/notification  {res['requests_per_s']}/s")
    finally:
        b.stop_started()
        if pg is not None:
            pg.remove()
    rows = []
    # The floor of each kind of request (single, batch), per revision.
    floor = {(kind, rev): statistics.median(x["us_per_request"] for x in results if x["case"] == kind and x["rev"] == rev)
             for kind in ("floor", "floor-batch") for rev in revs
             if any(x["case"] == kind and x["rev"] == rev for x in results)}
    for case in cases:
        for rev in revs:
            mine = [x for x in results if x["case"] == case and x["rev"] == rev]
            req = statistics.median(x["us_per_request"] for x in mine)
            base = floor.get(("floor-batch" if mine[0]["batch"] else "floor", rev))
            row = {"case": case, "rev": rev, "us_per_request": req,
                   "us_per_notification": statistics.median(x["us_per_notification"] for x in mine),
                   "requests_per_s": statistics.median(x["requests_per_s"] for x in mine),
                   "x_floor": round(req / base, 2) if base else None,
                   "redis_us_per_notification": round(statistics.median(x["redis_us_per_notification"] for x in mine), 2)
                   if mine[0]["redis_us_per_notification"] is not None else None,
                   "postgres_us_per_notification":
                       round(statistics.median(x["postgres_us_per_notification"] for x in mine), 2)
                       if mine[0].get("postgres_us_per_notification") is not None else None,
                   "load_cpu_share": statistics.median(x["load_cpu_share"] for x in mine)}
            rows.append(row)
    lines = [f"# publish path — {name}", "",
             f"{args.count} notifications a case, {args.publishers} keep-alive publishers, batch {args.batch}, "
             f"median of {args.rounds} rounds; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", "",
             "| case | rev | server CPU µs/request | µs/notification | × floor | requests/s | Redis µs/notification "
             "| PostgreSQL µs/notification | load-side CPU |", "|---|---|---|---|---|---|---|---|---|"]
    dash = lambda v: "—" if v is None else v  # noqa: E731
    for row in rows:
        lines.append(f"| {row['case']} | {row['rev']} | {row['us_per_request']:.1f} | {row['us_per_notification']:.2f} "
                     f"| {dash(row['x_floor'])} | {row['requests_per_s']:.0f} "
                     f"| {dash(row['redis_us_per_notification'])} | {dash(row['postgres_us_per_notification'])} "
                     f"| {row['load_cpu_share']:.0%} |")
    table = "\n".join(lines) + "\n"
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(table)
    (out / f"{name}.json").write_text(json.dumps({
        "name": name, "args": vars(args), "sources": sources, "rows": rows, "runs": results,
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "python": sys.version.split()[0],
    }, indent=2))


if __name__ == "__main__":
    main()
