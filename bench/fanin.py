"""Fan-in cost: CPU a worker spends per notification it follows from Redis and delivers to
no one (keys none of its connections wants). Every worker reads every notification, so
this sets how many notifications per second a cluster can carry at all.

    bench/run fanin [--count 20000] [--rate 5000] [--via xadd|server] [--rev work --rev REV --rounds N] [--json FILE]

Starts its own redis-server and one gunicorn gevent worker (the measured one, with
``--listen`` SSE connections to a topic nothing is published to) on free loopback ports,
and publishes ``count`` notifications at ``rate`` per second (0: as fast as it can), a
``--step`` at a time evenly spaced: ``--via xadd`` XADDs them straight into the stream
(no wake: what a worker pays to skip entries in the stream, whoever wrote them);
``--via server`` POSTs them, ``--step`` to a JSON array, to a second server (its own
worker) of the same code, through the real publish script, each for another user. Then
it waits until the worker is idle again, and prints the worker's CPU per notification and
the ceiling that implies: a worker spending all of one core on following reads 1e6 / (µs
per notification) a second, and since every worker reads every notification, that is
what the whole cluster can carry. ``--rev`` (repeatable; ``work``: the work tree) runs
each revision in turn, ``--rounds`` times, and gives medians. Everything it starts it stops.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import select
import threading

import redis
import requests

from bench import _sched_runtime, snapshot_source

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """The worker's CPU to the ns (bench.py's reading of /proc/<pid>/task/*/sched)."""
    exact = _sched_runtime(pid)
    if exact is not None:
        return exact
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(source: Path, rport: int, work: Path, name: str) -> tuple[subprocess.Popen, int, int]:
    """A one-worker gunicorn of ``source``: (master, its worker's pid, port)."""
    port = free_port()
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{rport}/0", "PORT": str(port), "WEB_CONCURRENCY": "1",
           "GUNICORN_CMD_ARGS": f"--bind 127.0.0.1:{port}", "NOTIFIER_LOG_LEVEL": "WARNING",
           "NOTIFIER_PUBLISH_RATE": "100000000"}
    env.pop("NOTIFIER_REDIS_URL", None)
    log = open(work / f"{name}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "wsgi:app", "-c", "gunicorn.conf.py"],
                            cwd=source, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        try:
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            if children and requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok:
                return proc, int(children[0]), port
        except (OSError, requests.RequestException):
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit(f"{name} did not start: {(work / f'{name}.log').read_text()[-2000:]}")
        time.sleep(0.1)


LISTENED = "somewhere-else"


def listen(port: int, n: int) -> list[socket.socket]:
    """``n`` SSE connections to the topic LISTENED (read and dropped in a thread): the
    worker has subscribers, for a key nothing is published to but with ``--wanted``."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(f"GET /events?topic={LISTENED} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        socks.append(s)
    threading.Thread(target=_drop_all, args=(socks,), daemon=True).start()
    return socks


def _drop_all(socks: list[socket.socket]) -> None:
    try:
        while True:
            for s in select.select(socks, [], [], 1.0)[0]:
                if not s.recv(65536):
                    return
    except (OSError, ValueError):  # closed at the end
        return


def wait_idle(worker: int) -> None:
    """Until the worker has used no CPU to speak of for a second (more than its timed read)."""
    idle_since, last = time.monotonic(), cpu_seconds(worker)
    while time.monotonic() - idle_since < 1.5:
        time.sleep(0.25)
        now = cpu_seconds(worker)
        if now - last > 0.02:
            idle_since = time.monotonic()
        last = now


def run_once(source: Path, args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="fanin-"))
    rport = free_port()
    procs: list[subprocess.Popen] = []
    socks: list[socket.socket] = []
    try:
        procs.append(subprocess.Popen([shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(rport),
                                       "--bind", "127.0.0.1", "--save", "", "--dir", str(work)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(0.3)
        master, worker, port = start_server(source, rport, work, "follower")
        procs.append(master)
        if args.via == "server":
            publisher, _, pport = start_server(source, rport, work, "publisher")
            procs.append(publisher)
        socks = listen(port, args.listen)
        client = redis.Redis(port=rport)
        session = requests.Session()
        time.sleep(1.5)
        fields = {"t": "nobody-watches", "y": "notification",
                  "n": json.dumps({"type": "notification", "title": "x", "message": "y" * 100, "topic": "nobody-watches",
                                   "ts": "2026-11-28T00:00:00.000Z"}, separators=(",", ":"))}
        before = cpu_seconds(worker)
        started = time.monotonic()
        step = args.step
        for i in range(0, args.count, step):
            if args.via == "server":
                body = [{"topic": LISTENED} if args.wanted else {"user_id": f"u{(i + j) % 5000}"} for j in range(step)]
                for item in body:
                    item.update(title="x", message="y" * 100)
                r = session.post(f"http://127.0.0.1:{pport}/notify", json=body if step > 1 else body[0], timeout=30)
                if r.status_code != 202:
                    raise SystemExit(f"publish: {r.status_code} {r.text}")
            else:
                with client.pipeline(transaction=False) as pipe:
                    for _ in range(step):
                        pipe.xadd("notifier:stream", fields, maxlen=10000, approximate=True)
                    pipe.execute()
            if args.rate:
                time.sleep(max(0.0, started + (i + step) / args.rate - time.monotonic()))
        sent = time.monotonic() - started
        wait_idle(worker)
        used = cpu_seconds(worker) - before
        per = used / args.count * 1e6
        return {"rate": round(args.count / sent), "worker_cpu_s": round(used, 4), "us_per_notification": round(per, 2),
                "core_share": round(used / sent, 4), "ceiling_per_s": round(1e6 / per)}
    finally:
        for s in socks:
            s.close()
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--rate", type=int, default=5000, help="notifications per second (0: as fast as possible)")
    parser.add_argument("--step", type=int, default=None,
                        help="notifications per round trip, spaced evenly (xadd default 1: one by one, as separate "
                             "publishers send them; server default 20, a JSON array: one publish costs the "
                             "publishing worker ~1 ms)")
    parser.add_argument("--via", choices=("xadd", "server"), default="xadd")
    parser.add_argument("--listen", type=int, default=1, help="SSE connections the measured worker holds")
    parser.add_argument("--wanted", action="store_true",
                        help="with --via server: publish to the topic the --listen connections are on (the cost of "
                             "a notification the worker delivers, not of one it skips)")
    parser.add_argument("--rev", action="append", default=None,
                        help="git revision of notifier to run (repeatable; 'work': the work tree, the default)")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each --rev, alternating")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    args.step = args.step or (20 if args.via == "server" else 1)
    revs = args.rev or ["work"]
    snapshots = Path(tempfile.mkdtemp(prefix="fanin-src-"))
    try:
        sources = {rev: snapshot_source(snapshots / str(i), None if rev == "work" else rev)
                   for i, rev in enumerate(revs)}
        results: dict[str, list[dict[str, Any]]] = {rev: [] for rev in revs}
        for round_ in range(args.rounds):
            for rev in revs if round_ % 2 == 0 else revs[::-1]:
                got = run_once(Path(sources[rev]["copied_to"]), args)
                results[rev].append(got)
                print(f"round {round_ + 1} {rev} ({sources[rev]['commit']}): {args.count} via {args.via} at "
                      f"{got['rate']}/s: {got['us_per_notification']} us per notification, "
                      f"{got['core_share'] * 100:.1f}% of a core", flush=True)
        summary = {}
        for rev in revs:
            per = statistics.median(r["us_per_notification"] for r in results[rev])
            summary[rev] = {"commit": sources[rev]["commit"], "median_us_per_notification": round(per, 2),
                            "runs_us": [r["us_per_notification"] for r in results[rev]],
                            "median_ceiling_per_s": round(1e6 / per)}
            print(f"fan-in {rev} ({sources[rev]['commit']}): median {per:.1f} us per notification followed "
                  f"(runs {summary[rev]['runs_us']}); ceiling: a worker (and so the whole cluster) follows at most "
                  f"{1e6 / per:,.0f}/s on a full core")
        if args.json:
            # At the top, the first revision's median run, as targets.py reads it.
            first = sorted(results[revs[0]], key=lambda r: r["us_per_notification"])[len(results[revs[0]]) // 2]
            Path(args.json).write_text(json.dumps({
                **first, "count": args.count, "via": args.via, "step": args.step, "listen": args.listen,
                "rounds": args.rounds, "summary": summary, "runs": results}, indent=2))
    finally:
        shutil.rmtree(snapshots, ignore_errors=True)


if __name__ == "__main__":
    main()
