"""Every target of the project's performance work, measured in one run, in one table.

    bench/run targets [--name NAME] [--quick]

Runs, one after the other on this machine, each against notifier as it is in the work
tree (each part copies it when it starts: do not edit it while this runs):

1. ``bench.py``: bursts to 1,000 and 10,000 WebSocket and SSE subscribers on one worker
   (server CPU per delivery, RSS per idle connection, errors and losses), and the paced
   case (20/s to 1,000 subscribers through Redis on 2 workers: p99);
2. ``publish.py``: POST /notify beside the bare-Flask floor, in-process and Redis, single
   and a batch of 100;
3. ``fanin.py`` at 1,000/s and 5,000/s: CPU per notification a worker follows for no one;
4. ``notifications.py``: 10,000 users with a token each, paced single-user notifications,
   and the highest rate one worker sustains with p99 under 100 ms;
5. ``flask notifier send``: the median wall time of 10 runs against a running server.

Writes bench/results/<name>.md (the table, each figure with the floor or reference it is
measured against and whether the target is met) and <name>.json (the figures and the
result files of every part, which hold the details).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import bench as b

PY = str(b.ROOT / ".venv" / "bin" / "python")


def run(cmd: list[str], timeout: float) -> None:
    b.log("running: " + " ".join(cmd[1:]))
    subprocess.run(cmd, cwd=b.ROOT, check=True, timeout=timeout)


def case(cases: list[dict], **match) -> dict:
    for c in cases:
        if all(c.get(k) == v for k, v in match.items()):
            return c
    return {}


def cli_send_seconds(source: Path, workdir: Path, runs: int = 10) -> float:
    """Median wall time of ``flask --app wsgi notifier send`` against a server on the
    in-process broker (so the CLI posts over HTTP, as it does without Redis)."""
    redis = b.Redis(workdir)  # unused by the server (no REDIS_URL), kept for Server's signature
    server = b.Server("notifier", 1, redis, workdir / "cli-server.log", None)
    server.cwd = source
    del server.env["REDIS_URL"]
    server.peer = "memory"  # no follower to wait for
    times = []
    try:
        server.start()
        env = {**server.env, "PORT": str(server.port)}
        for _ in range(runs):
            t0 = time.monotonic()
            subprocess.run([PY, "-m", "flask", "--app", "wsgi", "notifier", "send", "bench", "cli"], cwd=source, env=env, check=True, timeout=30,
                           stdout=subprocess.DEVNULL)
            times.append(time.monotonic() - t0)
    finally:
        server.stop()
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", default=None)
    p.add_argument("--quick", action="store_true", help="smaller parts: a smoke run of this script, not figures")
    p.add_argument("--out", default=str(b.BENCH / "results"))
    args = p.parse_args()
    name = args.name or "targets-" + datetime.now().strftime("%Y-%m-%d-%H%M")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-targets-"))
    source = b.snapshot_source(workdir / "src")
    started = time.monotonic()
    loadavg = os.getloadavg()
    q = args.quick
    parts = {k: f"{name}-{k}" for k in ("fanout", "publish", "notifications")}
    try:
        run([PY, "bench/bench.py", "--peers", "notifier", "--sizes", "100" if q else "1000,10000",
             "--burst", "20" if q else "200", "--paced-count", "20" if q else "200",
             "--paced-size", "100" if q else "1000", "--name", parts["fanout"]], 1800)
        run([PY, "bench/publish.py", "--rounds", "1" if q else "3", "--count", "500" if q else "4000",
             "--name", parts["publish"]], 1800)
        fanin = {}
        for rate in (1000, 5000):
            path = workdir / f"fanin-{rate}.json"
            run([PY, "bench/fanin.py", "--count", str(rate if q else rate * 4), "--rate", str(rate),
                 "--json", str(path)], 300)
            fanin[rate] = json.loads(path.read_text())
        run([PY, "bench/notifications.py", "--subscribers", "500" if q else "10000", "--find-max",
             "--budget", "60" if q else "300", "--name", parts["notifications"]], 1800)
        cli = cli_send_seconds(Path(source["copied_to"]), workdir, 3 if q else 10)
    finally:
        b.stop_started()
        shutil.rmtree(workdir, ignore_errors=True)

    fan = json.loads((out / f"{parts['fanout']}.json").read_text())["cases"]
    pub = {(r["case"]): r for r in json.loads((out / f"{parts['publish']}.json").read_text())["rows"]}
    notif = json.loads((out / f"{parts['notifications']}.json").read_text())
    big = 100 if q else 10000
    small = 100 if q else 1000
    rows = []

    def row(what: str, figure, limit, unit: str, against: str, lower: bool = True) -> None:
        met = None if figure is None else (figure <= limit if lower else figure >= limit)
        rows.append({"target": what, "figure": figure, "limit": limit, "unit": unit, "against": against,
                     "met": met})

    for tr, name_ in (("ws", "WebSocket"), ("sse", "SSE")):
        c = case(fan, transport=tr, subscribers=small, scenario="burst")
        row(f"burst to {small:,} {name_} subscribers: server CPU per delivery", c.get("cpu_us_per_delivery"), 2,
            "µs", "Go hub (seed design): 4.4 µs")
    floor = pub.get("floor", {}).get("us_per_request")
    for key, limit in (("memory", 1.3), ("redis", 1.8)):
        r = pub.get(key, {})
        row(f"POST /notify, {'in-process' if key == 'memory' else 'through Redis'}: server CPU per request "
            f"÷ bare Flask route ({r.get('us_per_request')} µs ÷ {floor} µs)", r.get("x_floor"), limit, "×",
            "bare Flask route, same run")
    batch_floor = pub.get("floor-batch", {}).get("us_per_notification")
    row("batch of 100 through Redis: server CPU per notification", pub.get("redis-batch", {}).get(
        "us_per_notification"), 25, "µs", f"bare Flask route given the same body: {batch_floor} µs; "
        "Go hub, through Redis: 50 µs per publish")
    for rate in (1000, 5000):
        row(f"fan-in at {rate:,}/s, for no connection of the worker: CPU per notification",
            fanin[rate]["us_per_notification"], 10, "µs",
            f"{fanin[rate]['core_share']:.1%} of a core; ceiling {fanin[rate]['ceiling_per_s']:,}/s per "
            "worker and so per cluster")
    for tr, name_, limit in (("ws", "WebSocket", 20), ("sse", "SSE", 12)):
        for size in sorted({small, big}):
            c = case(fan, transport=tr, subscribers=size, scenario="burst")
            row(f"RSS per idle {name_} at {size:,}", c.get("rss_kb_per_conn"), limit, "KB",
                "Go hub 21.4 KB, tuned Centrifugo 10.9 KB")
        c = case(fan, transport=tr, subscribers=big, scenario="burst")
        row(f"{big:,} {name_} connections on one worker: errors + losses", c.get("errors_and_losses"), 0, "", "")
        c = case(fan, transport=tr, scenario="paced")
        row(f"paced 20/s to {c.get('subscribers', small):,} {name_}, Redis, 2 workers: p99 publish→deliver",
            c.get("latency_p99_ms"), 10, "ms", f"CPU per delivery {c.get('cpu_us_per_delivery')} µs")
    fm = notif.get("find_max") or {}
    at = fm.get("at_max") or {}
    users = (notif.get("setup") or {}).get("subscribers_open", 0)
    row(f"notifications workload ({users:,} users, one worker): highest rate with p99 < 100 ms",
        fm.get("max_sustained_rate"), 0, "/s",
        f"there: {at.get('server_cpu_us_per_notification')} µs CPU per notification, p50 "
        f"{at.get('latency_p50_ms')} ms, p99 {at.get('latency_p99_ms')} ms", lower=False)
    row("flask notifier send (over HTTP): wall time, median", round(cli, 3), 0.3, "s", "")

    meta = {"name": name, "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "source": source, "loadavg_at_start": loadavg, "loadavg_at_end": os.getloadavg(),
            "wall_s": round(time.monotonic() - started), "python": sys.version.split()[0],
            "parts": {k: f"{v}.json" for k, v in parts.items()}, "fanin": fanin, "cli_send_s": cli}
    md = [f"# notifier targets — {name}", "",
          f"notifier {source['from']} at {source['commit']}"
          + (f" + uncommitted {source['uncommitted_changes']}" if source["uncommitted_changes"] else "")
          + f"; load average {loadavg[0]:.2f} at start, {meta['loadavg_at_end'][0]:.2f} at end; "
          f"{meta['wall_s']} s. Parts: " + ", ".join(f"`{v}.md`" for v in parts.values()) + ".", "",
          "| target | figure | limit | met | against |", "|---|---:|---:|---|---|"]
    for r in rows:
        fig = "—" if r["figure"] is None else f"{r['figure']:,}" if isinstance(r["figure"], int) else r["figure"]
        lim = f"{'≥' if r['target'].startswith('notifications') else '≤'} {r['limit']} {r['unit']}".strip()
        met = {True: "yes", False: "**no**", None: "not run"}[r["met"]]
        if r["target"].startswith("notifications"):
            met, lim = "(reported)", "—"
        md.append(f"| {r['target']} | {fig} {r['unit']} | {lim} | {met} | {r['against']} |")
    text = "\n".join(md) + "\n"
    (out / f"{name}.md").write_text(text)
    (out / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2, ensure_ascii=False))
    print(text)


if __name__ == "__main__":
    main()
