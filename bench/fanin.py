"""Fan-in cost: CPU a worker spends per notification it follows from Redis and delivers to
no one (a topic none of its connections wants). Every worker reads every notification, so
this sets how many notifications per second a cluster can carry at all.

    bench/run fanin [--count 20000] [--rate 5000] [--json FILE]

Starts its own redis-server and one gunicorn gevent worker on free loopback ports,
XADDs ``count`` entries straight into the stream at ``rate`` per second (0: as fast as
it can), one at a time evenly spaced (or ``--step`` at a time), waits until the worker is idle again, and prints the worker's CPU per entry and
the ceiling that implies: a worker spending all of one core on following reads 1e6 / (µs per
entry) entries a second, and since every worker reads every notification, that is what the
whole cluster can carry, however many hosts it has. Everything it starts it stops.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from bench import _sched_runtime

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--rate", type=int, default=5000, help="entries per second (0: as fast as possible)")
    parser.add_argument("--step", type=int, default=1,
                        help="entries per XADD round trip, spaced evenly (1: one by one, as separate publishers "
                             "send them; 100: in bursts)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fanin-"))
    rport, port = free_port(), free_port()
    procs = []
    try:
        procs.append(subprocess.Popen([shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(rport),
                                       "--bind", "127.0.0.1", "--save", "", "--dir", str(work)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{rport}/0", "PORT": str(port), "WEB_CONCURRENCY": "1",
               "GUNICORN_CMD_ARGS": f"--bind 127.0.0.1:{port}", "NOTIFIER_LOG_LEVEL": "WARNING"}
        env.pop("NOTIFIER_REDIS_URL", None)
        log = open(work / "gunicorn.log", "wb")
        procs.append(subprocess.Popen([sys.executable, "-m", "gunicorn", "wsgi:app", "-c", "gunicorn.conf.py"],
                                      cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
        client = redis.Redis(port=rport)
        deadline = time.monotonic() + 30
        while True:
            try:
                children = Path(f"/proc/{procs[1].pid}/task/{procs[1].pid}/children").read_text().split()
                if children and client.ping():
                    time.sleep(1.5)
                    break
            except (OSError, redis.RedisError):
                pass
            if time.monotonic() > deadline:
                raise SystemExit("server did not start")
            time.sleep(0.1)
        worker = int(children[0])
        fields = {"t": "nobody-watches", "y": "notification",
                  "n": json.dumps({"type": "notification", "title": "x", "message": "y" * 100, "topic": "nobody-watches",
                                   "ts": "2026-11-28T00:00:00.000Z"}, separators=(",", ":"))}
        before = cpu_seconds(worker)
        started = time.monotonic()
        step = args.step
        for i in range(0, args.count, step):
            with client.pipeline(transaction=False) as pipe:
                for _ in range(step):
                    pipe.xadd("notifier:stream", fields, maxlen=10000, approximate=True)
                pipe.execute()
            if args.rate:
                time.sleep(max(0.0, started + (i + step) / args.rate - time.monotonic()))
        sent = time.monotonic() - started
        idle_since, last = time.monotonic(), cpu_seconds(worker)
        while time.monotonic() - idle_since < 1.0:  # idle for a second: it has caught up
            time.sleep(0.2)
            now = cpu_seconds(worker)
            if now - last > 0.02:
                idle_since, last = time.monotonic(), now
        used = cpu_seconds(worker) - before
        per = used / args.count * 1e6
        print(f"fan-in: {args.count} entries at {args.count / sent:.0f}/s; worker CPU {used:.2f} s = "
              f"{per:.1f} us per notification followed, {used / sent * 100:.0f}% of a core while they came; "
              f"ceiling: a worker (and so the whole cluster) follows at most {1e6 / per:,.0f}/s on a full core")
        if args.json:
            Path(args.json).write_text(json.dumps({
                "count": args.count, "rate": round(args.count / sent), "worker_cpu_s": round(used, 4),
                "us_per_notification": round(per, 2), "core_share": round(used / sent, 4),
                "ceiling_per_s": round(1e6 / per)}, indent=2))
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
