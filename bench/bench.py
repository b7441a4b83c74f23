"""notifier's benchmark: the same load against notifier, Flask-SSE and Flask-SocketIO, side by side.

Run it through ``bench/run`` (which creates the venvs); see bench/README.md. For every
case (peer × transport × number of subscribers) it starts a private redis-server and the
server under test on free loopback ports, opens the subscribers from this process
(asyncio, raw sockets: bench/loadgen.py), publishes, and measures:

- server CPU (gunicorn master + workers, psutil) over the publish phase ÷ deliveries;
- publish→deliver latency (stamped by the publisher, read by the subscriber);
- worker RSS with the subscribers connected minus with none, ÷ subscribers;
- errors, losses and duplicates (every subscriber must get every notification once);
- this process's own CPU over the same phase, to show the load side is not the bottleneck.

Writes bench/results/<name>.json and <name>.md and prints the table.
"""
from __future__ import annotations

import argparse
import random
import asyncio
import gc
import hashlib
import http.client
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path

import psutil

import loadgen as lg

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PEERS = ("notifier", "flask-sse", "socketio")
TRANSPORTS = {"notifier": ("ws", "sse"), "flask-sse": ("sse",), "socketio": ("ws",)}
PYTHON = {
    "notifier": ROOT / ".venv" / "bin" / "python",
    "flask-sse": BENCH / ".venvs" / "flask-sse" / "bin" / "python",
    "socketio": BENCH / ".venvs" / "socketio" / "bin" / "python",
}
NOFILE = 65536
PROBLEM = re.compile(r"\[(ERROR|CRITICAL|WARNING)\]| (ERROR|CRITICAL|WARNING) |Traceback|WORKER TIMEOUT")
"""Server log lines worth reporting (gunicorn's "[ERROR]" style and notifier's " ERROR " style)."""

TARGETS = [
    # (what, case filter, metric, limit, unit)
    ("burst: 1,000 WS subscribers x 200, server CPU per delivery",
     dict(peer="notifier", transport="ws", subscribers=1000, scenario="burst"), "cpu_us_per_delivery", 2, "µs"),
    ("burst: 1,000 SSE subscribers x 200, server CPU per delivery",
     dict(peer="notifier", transport="sse", subscribers=1000, scenario="burst"), "cpu_us_per_delivery", 2, "µs"),
    ("paced 20/s, 1,000 WS subscribers, Redis, 2 workers: CPU per delivery",
     dict(peer="notifier", transport="ws", subscribers=1000, scenario="paced", workers=2), "cpu_us_per_delivery", 10, "µs"),
    ("paced 20/s, 1,000 WS subscribers, Redis, 2 workers: latency p99",
     dict(peer="notifier", transport="ws", subscribers=1000, scenario="paced", workers=2), "latency_p99_ms", 10, "ms"),
    ("paced 20/s, 1,000 SSE subscribers, Redis, 2 workers: CPU per delivery",
     dict(peer="notifier", transport="sse", subscribers=1000, scenario="paced", workers=2), "cpu_us_per_delivery", 10, "µs"),
    ("paced 20/s, 1,000 SSE subscribers, Redis, 2 workers: latency p99",
     dict(peer="notifier", transport="sse", subscribers=1000, scenario="paced", workers=2), "latency_p99_ms", 10, "ms"),
    ("RSS per idle WebSocket (largest size run)",
     dict(peer="notifier", transport="ws", scenario="burst", largest=True), "rss_kb_per_conn", 20, "KB"),
    ("RSS per idle SSE connection (largest size run)",
     dict(peer="notifier", transport="sse", scenario="burst", largest=True), "rss_kb_per_conn", 12, "KB"),
    ("10,000 WS connections on one worker: errors + losses",
     dict(peer="notifier", transport="ws", subscribers=10000, scenario="burst", workers=1), "errors_and_losses", 0, ""),
    ("10,000 SSE connections on one worker: errors + losses",
     dict(peer="notifier", transport="sse", subscribers=10000, scenario="burst", workers=1), "errors_and_losses", 0, ""),
]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def raise_nofile() -> None:
    """As many file descriptors as the hard limit allows (up to 65536): 10,000 sockets need it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = NOFILE if hard == resource.RLIM_INFINITY else min(NOFILE, hard)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port: int, path: str, timeout: float = 2.0) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def cpu_seconds(procs: list[psutil.Process]) -> float:
    """CPU seconds of these processes, to the nanosecond where Linux tells it.

    psutil (``/proc/<pid>/stat``) counts in clock ticks (10 ms): too coarse for a phase
    of a few hundred ms. ``se.sum_exec_runtime`` in ``/proc/<pid>/task/*/sched`` is in
    ns, per live thread (a thread that exits takes its time with it: gunicorn's gevent
    workers keep theirs). Falls back to psutil when that file is not there.
    """
    total = 0.0
    for p in procs:
        exact = _sched_runtime(p.pid)
        if exact is not None:
            total += exact
            continue
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def cpu_ticks(procs: list[psutil.Process]) -> float:
    """The same from psutil (clock ticks, includes exited threads): a cross-check."""
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _sched_runtime(pid: int) -> float | None:
    total, found = 0.0, False
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/sched") as f:
                for line in f:
                    if line.startswith("se.sum_exec_runtime"):
                        total += float(line.split(":", 1)[1]) / 1000.0  # ms -> s
                        found = True
                        break
        except OSError:
            continue
    return total if found else None


STARTED: list[subprocess.Popen] = []
"""Every process this run started, so none outlives it (see main)."""


def stop_process(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM the process (a session leader), wait, then SIGKILL its process group."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # this group is the one we started: its id is proc.pid
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


def run_defaults(cfg: argparse.Namespace, scenario: str) -> argparse.Namespace:
    """A run's ``name`` (``<scenario>-<date-time>``) and random ``seed``, where not given:
    the seed is kept in the results, so a run can be repeated."""
    if cfg.name is None:
        cfg.name = f"{scenario}-" + datetime.now().strftime("%Y-%m-%d-%H%M")
    if cfg.seed is None:
        cfg.seed = random.randrange(1 << 31)
    return cfg


def stop_started() -> None:
    """Stop every process this run started that still runs (the last line of every scenario)."""
    for proc in STARTED:
        if proc.poll() is None:
            stop_process(proc, 5)


class Redis:
    """A private redis-server on a free loopback port (never the system one)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = workdir
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        with open(self.dir / f"redis-{self.port}.log", "ab") as logf:
            self.proc = subprocess.Popen(
                [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(self.dir), "--daemonize", "no", "--maxclients", "15000"],
                stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=raise_nofile,
            )
        STARTED.append(self.proc)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        self.ps = psutil.Process(self.proc.pid)
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError("redis-server did not answer PING")

    def cpu(self) -> float:
        return cpu_seconds([self.ps])

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 5)


class Server:
    """The server under test: gunicorn (gevent worker) running notifier or a peer app."""

    def __init__(self, peer: str, workers: int, redis: Redis, logfile: Path, worker_connections: int | None,
                 extra_env: dict[str, str] | None = None) -> None:
        self.peer, self.workers, self.redis, self.logfile = peer, workers, redis, logfile
        self.port = free_port()
        env = {k: v for k, v in os.environ.items()
               if not (k.startswith("NOTIFIER_") or k in ("REDIS_URL", "WEB_CONCURRENCY", "GUNICORN_CMD_ARGS"))}
        env.update(PYTHONUNBUFFERED="1", REDIS_URL=redis.url)
        python = str(PYTHON[peer])
        if peer == "notifier":
            self.cmd = [python, "-m", "gunicorn", "wsgi:app", "-c", "gunicorn.conf.py"]
            self.cwd = SOURCE or ROOT
            env.update(PORT=str(self.port), WEB_CONCURRENCY=str(workers),
                       GUNICORN_CMD_ARGS=f"--bind 127.0.0.1:{self.port}",
                       # a benchmark is not a rate-limit test: bursts above 500/s must not get 429
                       NOTIFIER_PUBLISH_RATE="1000000")
            if worker_connections:
                env["NOTIFIER_WORKER_CONNECTIONS"] = str(worker_connections)
            env.update(extra_env or {})
        else:
            app = {"flask-sse": "flask_sse_app:app", "socketio": "socketio_app:app"}[peer]
            # the same gunicorn settings as notifier's gunicorn.conf.py, where they matter here
            self.cmd = [python, "-m", "gunicorn", app, "-k", "gevent", "-w", str(workers),
                        "--worker-connections", str(worker_connections or 10000),
                        "--bind", f"127.0.0.1:{self.port}", "--timeout", "30", "--keep-alive", "5",
                        "--graceful-timeout", "3", "--access-logfile", "-"]
            self.cwd = BENCH / "peers"
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.master: psutil.Process | None = None
        self._workers: dict[int, psutil.Process] = {}

    def start(self, timeout: float = 60.0) -> None:
        with open(self.logfile, "ab") as logf:
            self.log_offset = self.logfile.stat().st_size
            self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, env=self.env, stdout=logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=raise_nofile)
        STARTED.append(self.proc)
        self.master = psutil.Process(self.proc.pid)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.peer} exited with {self.proc.returncode}: see {self.logfile}")
            try:
                if http_get(self.port, "/readyz") == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.peer} not ready in {timeout}s: see {self.logfile}")
            time.sleep(0.1)
        # every worker up, and (notifier) its Redis follower running, before anything is measured
        while True:
            procs = self.worker_procs()
            now = time.time()
            if len(procs) >= self.workers and all(now - p.create_time() > 0.5 for p in procs):
                if self.peer != "notifier" or all(self._talks_to_redis(p) for p in procs):
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.peer}: {self.workers} workers not up in {timeout}s")
            time.sleep(0.1)
        self._workers = {p.pid: p for p in self.worker_procs()}

    def _talks_to_redis(self, p: psutil.Process) -> bool:
        try:
            return any(c.raddr and c.raddr.port == self.redis.port for c in p.net_connections("tcp"))
        except psutil.Error:
            return False

    def worker_procs(self) -> list[psutil.Process]:
        try:
            return self.master.children()
        except psutil.Error:
            return []

    def procs(self) -> list[psutil.Process]:
        """The master and every worker it started (the same Process objects each time)."""
        for p in self.worker_procs():
            self._workers.setdefault(p.pid, p)
        return [self.master, *self._workers.values()]

    def cpu(self) -> float:
        return cpu_seconds(self.procs())

    def worker_pids(self) -> set[int]:
        return {p.pid for p in self.worker_procs()}

    def rss(self) -> int:
        total = 0
        for p in self.worker_procs():
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def log_problems(self) -> list[str]:
        """Lines of this server's log that say something went wrong (errors, tracebacks, worker deaths)."""
        try:
            with open(self.logfile, "rb") as f:
                f.seek(self.log_offset)
                text = f.read().decode(errors="replace")
        except OSError:
            return []
        return [line.strip() for line in text.splitlines() if PROBLEM.search(line)]

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 25)


SOURCE: Path | None = None
"""Where notifier runs from: a copy of the work tree taken when the run starts."""

SOURCE_FILES = ("notifier", "wsgi.py", "gunicorn.conf.py")


def snapshot_source(dest: Path, rev: str | None = None) -> dict:
    """Copy notifier as it is on disk now (or as it was at git ``rev``), so every case of this
    run measures the same code even if the work tree changes meanwhile; say which it is."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    if rev is not None:
        archive = subprocess.run(["git", "archive", "--format=tar", rev, "--", *SOURCE_FILES], cwd=ROOT,
                                 capture_output=True, timeout=60)
        if archive.returncode != 0:
            raise SystemExit(f"git archive {rev}: {archive.stderr.decode(errors='replace').strip()}")
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True, timeout=60)
        commit = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        return {"commit": commit, "uncommitted_changes": [], "sha256": _tree_digest(dest), "copied_to": str(dest),
                "from": f"git {rev}"}
    for name in SOURCE_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dest / name)
    try:
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *SOURCE_FILES], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        dirty = "?"
    return {"commit": git_commit(), "uncommitted_changes": dirty.splitlines() if dirty else [],
            "sha256": _tree_digest(dest), "copied_to": str(dest), "from": "work tree"}


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def snapshot(server: Server, redis: Redis) -> dict:
    t = psutil.cpu_times()
    own = os.times()
    return {"wall": time.monotonic(), "server": server.cpu(), "redis": redis.cpu(), "load": time.process_time(),
            "load_user": own.user, "load_system": own.system,
            "server_ticks": cpu_ticks(server.procs()),
            "machine": sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0)
            - getattr(t, "guest_nice", 0.0) - getattr(t, "steal", 0.0)}


def delta(a: dict, b: dict) -> dict:
    return {k: b[k] - a[k] for k in a}


async def run_case(cfg: argparse.Namespace, workdir: Path, peer: str, transport: str, size: int,
                   workers: int, scenario: str, queries: list[str] | None = None) -> dict:
    """One server, one transport, ``size`` subscribers, one publish phase; always stops what it started.

    ``queries[i]``: the i-th subscriber's query string (e.g. its ``token=``; bench/presence.py)."""
    m = cfg.burst if scenario == "burst" else cfg.paced_count
    case = {"peer": peer, "transport": transport, "subscribers": size, "workers": workers, "scenario": scenario,
            "notifications": m, "rate": cfg.paced_rate if scenario == "paced" else None, "errors": {},
            "server_log_problems": []}
    tag = f"{peer} {transport} {size} subs, {workers}w, {scenario}"
    redis = Redis(workdir)
    server = Server(peer, workers, redis, workdir / f"{peer}-{transport}-{size}-{scenario}.log",
                    cfg.worker_connections, extra_env=dict(getattr(cfg, "notifier_env", None) or []))
    col = lg.Collector()
    t_case = time.monotonic()
    try:
        redis.start()
        server.start()
        case["worker_connections"] = cfg.worker_connections or 10000
        pids0 = server.worker_pids()

        # Baseline: a few subscribers get a notification and leave, so code paths loaded
        # lazily are not charged to the idle connections measured next.
        await lg.open_subs(col, peer, transport, server.port, cfg.warmup)
        await lg.sync(col, server.port)
        await lg.close_subs(col)
        await asyncio.sleep(cfg.settle)
        warm_errors = sum(col.errors.values())
        if warm_errors:
            case["errors"].update({f"warmup: {k}": v for k, v in col.errors.items()})
        rss0 = server.rss()

        # Calibration: the same publishes with nobody listening, to split the server's CPU
        # into handling publishes and fanning out (both are in cpu_us_per_delivery).
        n_cal = min(m, cfg.calibrate) if scenario == "burst" else min(m, cfg.calibrate, int(cfg.paced_rate * 2))
        if n_cal:
            col.start_phase(20)
            await lg.publish_burst(col, server.port, 20, cfg.publishers)  # warm the publish path up, untimed
            await asyncio.sleep(0.2)
            col.start_phase(n_cal)
            before = snapshot(server, redis)
            if scenario == "burst":
                cal = await lg.publish_burst(col, server.port, n_cal, cfg.publishers)
            else:
                cal = await lg.publish_paced(col, server.port, n_cal, cfg.paced_rate)
            await asyncio.sleep(0.2)  # let the follower(s) read and dispatch them
            d = delta(before, snapshot(server, redis))
            if cal.accepted:
                case["publish_cpu_us"] = round(d["server"] / len(cal.accepted) * 1e6, 1)
            if cal.errors:
                case["errors"].update({f"calibration: {k}": v for k, v in cal.errors.items()})

        col = lg.Collector()
        load0, wall0 = time.process_time(), time.monotonic()
        await lg.open_subs(col, peer, transport, server.port, size, concurrency=cfg.connect_concurrency,
                           budget=max(60.0, size / 50), queries=queries)
        case["connect_s"] = round(time.monotonic() - wall0, 2)
        case["connect_load_cpu_s"] = round(time.process_time() - load0, 2)
        not_synced = await lg.sync(col, server.port, tries=10, wait=3.0)
        if not_synced:
            col.error("never saw a sync notification")
            case["not_synced"] = not_synced
        log(f"{tag}: {col.live()} open in {case['connect_s']}s"
            + (f", errors {dict(col.errors)}" if col.errors else ""))
        gc.collect()
        gc.freeze()  # the subscribers live for the whole case: keep the collector off them
        await asyncio.sleep(cfg.settle)
        rss1 = server.rss()
        case["rss_baseline_mb"] = round(rss0 / 2**20, 1)
        case["rss_loaded_mb"] = round(rss1 / 2**20, 1)
        case["rss_kb_per_conn"] = round((rss1 - rss0) / 1024 / size, 2) if size else None

        col.start_phase(m)
        live = col.live()
        before = snapshot(server, redis)
        if scenario == "burst":
            pub = await lg.publish_burst(col, server.port, m, cfg.publishers)
        else:
            pub = await lg.publish_paced(col, server.port, m, cfg.paced_rate)
            case["worst_publish_lateness_ms"] = round(pub.worst_late_s * 1000, 1)
        col.set_accepted(len(pub.accepted))
        complete = await lg.wait_delivered(col, stall=cfg.stall, cap=cfg.cap)
        after = snapshot(server, redis)
        d = delta(before, after)

        lost, subs_with_loss = lg.losses(col, pub.accepted)
        delivered = col.received
        span_s = (col.last_us - pub.first_us) / 1e6 if col.last_us else None
        lat = lg.percentiles(col.lat)
        lag = lg.percentiles(col.lag)
        case.update({
            "subscribers_open": live,
            "accepted": len(pub.accepted),
            "expected": live * len(pub.accepted),
            "delivered": delivered,
            "lost": lost,
            "subscribers_with_loss": subs_with_loss,
            "duplicates": col.dup,
            "stray": col.stray,
            "complete": complete,
            "deliveries_per_s": round(delivered / span_s) if span_s else None,
            "publish_to_last_delivery_s": round(span_s, 3) if span_s else None,
            "phase_wall_s": round(d["wall"], 3),
            "server_cpu_s": round(d["server"], 4),
            "server_cpu_s_psutil": round(d["server_ticks"], 2),
            "cpu_us_per_delivery": round(d["server"] / delivered * 1e6, 2) if delivered else None,
            "fanout_cpu_us_per_delivery": (
                round((d["server"] - case["publish_cpu_us"] / 1e6 * len(pub.accepted)) / delivered * 1e6, 2)
                if delivered and case.get("publish_cpu_us") is not None else None),
            "redis_cpu_s": round(d["redis"], 3),
            "redis_cpu_us_per_delivery": round(d["redis"] / delivered * 1e6, 2) if delivered else None,
            "latency_p50_ms": round(lat["p50"], 2) if lat["p50"] is not None else None,
            "latency_p99_ms": round(lat["p99"], 2) if lat["p99"] is not None else None,
            "latency_max_ms": round(lat["max"], 2) if lat["max"] is not None else None,
            # CPU the rest of the machine used meanwhile (other work on a shared machine), in cores
            "other_cpu_cores": round(max(0.0, d["machine"] - d["server"] - d["redis"] - d["load"]) / d["wall"], 2)
            if d["wall"] else None,
            # how long this process took to read bytes after the kernel had them (per read)
            "load_read_lag_p50_ms": round(lag["p50"], 2) if lag["p50"] is not None else None,
            "load_read_lag_p99_ms": round(lag["p99"], 2) if lag["p99"] is not None else None,
            "load_cpu_s": round(d["load"], 3),
            "load_cpu_user_system_s": [round(d["load_user"], 2), round(d["load_system"], 2)],
            # reads that carried notifications: > 1 delivery per read means the server batched writes
            "deliveries_per_read": round(delivered / len(col.lag), 2) if col.lag else None,
            "load_cpu_share": round(d["load"] / d["wall"], 3) if d["wall"] else None,
        })
        if scenario == "paced":
            rows = lg.per_notification(col)
            case["per_notification_seq_p50_max_ms"] = rows
            slow = sorted(rows, key=lambda r: -r[2])[:5]
            case["slowest_notifications"] = [
                {"seq": r[0], "sent_at_s": round(r[0] / cfg.paced_rate, 2), "p50_ms": r[1], "max_ms": r[2]} for r in slow]
        for k, v in pub.errors.items():
            col.error(k)
            col.errors[k] += v - 1
        if server.worker_pids() != pids0:
            col.error("worker restarted during the case")
        case["errors"].update(col.errors)
        case["error_count"] = sum(case["errors"].values())
        case["errors_and_losses"] = case["error_count"] + lost + col.dup
        log(f"{tag}: {delivered}/{case['expected']} delivered, lost {lost}, dup {col.dup}, "
            f"{case['cpu_us_per_delivery']} µs CPU/delivery, p99 {case['latency_p99_ms']} ms, "
            f"RSS {case['rss_kb_per_conn']} KB/conn, load CPU {case['load_cpu_share']:.0%}")
    except Exception as exc:  # record and go on: one peer failing must not end the run
        log(f"{tag}: FAILED: {type(exc).__name__}: {exc}")
        case["errors"][f"case failed: {type(exc).__name__}: {exc}"] = 1
        case["errors"].update(col.errors)
        case["error_count"] = sum(case["errors"].values())
        case["errors_and_losses"] = case["error_count"]
    finally:
        gc.unfreeze()
        await lg.close_subs(col)
        server.stop()
        redis.stop()
        problems = server.log_problems()
        case["server_log_problems"] = problems[:20]
        case["server_log_problem_count"] = len(problems)
        case["case_wall_s"] = round(time.monotonic() - t_case, 1)
    return case


def plan(cfg: argparse.Namespace) -> list[tuple[str, str, int, int, str]]:
    cases = []
    for peer in cfg.peers:
        sizes = cfg.sizes if peer == "notifier" else cfg.peer_sizes
        for transport in cfg.transports:
            if transport not in TRANSPORTS[peer]:
                continue
            if cfg.burst > 0:
                for size in sizes:
                    cases.append((peer, transport, size, cfg.workers if peer == "notifier" else 1, "burst"))
    if cfg.paced_count > 0:
        for peer in cfg.peers:
            for transport in cfg.transports:
                if transport in TRANSPORTS[peer]:
                    workers = cfg.paced_workers if peer == "notifier" else 1
                    cases.append((peer, transport, cfg.paced_size, workers, "paced"))
    return cases


# ------------------------------------------------------------------------------------
# Reporting
# ------------------------------------------------------------------------------------

def fmt(v, digits: int = 1) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


COLUMNS = [
    ("peer", "peer", None), ("transport", "tr", None), ("subscribers", "subs", None), ("workers", "w", None),
    ("scenario", "scenario", None), ("deliveries_per_s", "deliveries/s", None),
    ("cpu_us_per_delivery", "server CPU µs/deliv", 2), ("publish_cpu_us", "µs/publish", 0),
    ("fanout_cpu_us_per_delivery", "fan-out µs/deliv", 2), ("redis_cpu_us_per_delivery", "redis µs/deliv", 2),
    ("latency_p50_ms", "p50 ms", 1), ("latency_p99_ms", "p99 ms", 1), ("latency_max_ms", "max ms", 1),
    ("rss_kb_per_conn", "RSS KB/conn", 1), ("error_count", "errors", None), ("lost", "lost", None),
    ("duplicates", "dup", None), ("deliveries_per_read", "deliv/read", 1), ("load_cpu_share", "load CPU", None), ("load_read_lag_p99_ms", "load lag p99 ms", 1), ("other_cpu_cores", "other CPU", None),
]


def cell(case: dict, key: str, digits) -> str:
    v = case.get(key)
    if key in ("load_cpu_share", "other_cpu_cores"):
        return "–" if v is None else f"{v:.0%}"
    if key == "scenario" and v == "paced":
        return f"paced {case['rate']:g}/s"
    return fmt(v, digits) if digits is not None else fmt(v)


def markdown_table(cases: list[dict]) -> str:
    head = "| " + " | ".join(c[1] for c in COLUMNS) + " |"
    sep = "|" + "|".join("---" if i < 5 else "---:" for i in range(len(COLUMNS))) + "|"
    rows = ["| " + " | ".join(cell(c, k, d) for k, _, d in COLUMNS) + " |" for c in cases]
    return "\n".join([head, sep, *rows])


def text_table(cases: list[dict]) -> str:
    cells = [[c[1] for c in COLUMNS]] + [[cell(c, k, d) for k, _, d in COLUMNS] for c in cases]
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    lines = []
    for n, r in enumerate(cells):
        lines.append("  ".join(v.ljust(w) if i < 5 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def ratios(cases: list[dict]) -> list[dict]:
    """Each peer against notifier in the same scenario, transport and size (peer ÷ notifier)."""
    out = []
    for c in cases:
        if c["peer"] == "notifier":
            continue
        ref = next((n for n in cases if n["peer"] == "notifier" and n["transport"] == c["transport"]
                    and n["subscribers"] == c["subscribers"] and n["scenario"] == c["scenario"]), None)
        if ref is None:
            continue

        def ratio(key: str, invert: bool = False):
            a, b = c.get(key), ref.get(key)
            if not a or not b:
                return None
            return round(b / a, 2) if invert else round(a / b, 2)

        out.append({"peer": c["peer"], "transport": c["transport"], "subscribers": c["subscribers"],
                    "scenario": c["scenario"], "notifier_workers": ref["workers"], "peer_workers": c["workers"],
                    "cpu_per_delivery": ratio("cpu_us_per_delivery"),
                    "cpu_plus_redis_per_delivery": (
                        round(((c.get("cpu_us_per_delivery") or 0) + (c.get("redis_cpu_us_per_delivery") or 0))
                              / ((ref.get("cpu_us_per_delivery") or 0) + (ref.get("redis_cpu_us_per_delivery") or 0)), 2)
                        if c.get("cpu_us_per_delivery") and ref.get("cpu_us_per_delivery") else None),
                    "latency_p99": ratio("latency_p99_ms"),
                    "rss_per_conn": ratio("rss_kb_per_conn"),
                    "notifier_speedup_deliveries_per_s": ratio("deliveries_per_s", invert=True)})
    return out


def ratio_table(rows: list[dict]) -> str:
    if not rows:
        return "(no peer ran beside notifier)"
    head = ("| peer | tr | subs | scenario | server CPU/deliv | + redis | p99 latency | RSS/conn | "
            "notifier deliveries/s ÷ peer's |\n|---|---|---|---|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r['peer']} | {r['transport']} | {r['subscribers']:,} | {r['scenario']} | "
                     f"{fmt(r['cpu_per_delivery'], 1)}× | {fmt(r['cpu_plus_redis_per_delivery'], 1)}× | "
                     f"{fmt(r['latency_p99'], 1)}× | {fmt(r['rss_per_conn'], 1)}× | "
                     f"{fmt(r['notifier_speedup_deliveries_per_s'], 1)}× |")
    return "\n".join(lines)


def check_targets(cases: list[dict]) -> list[dict]:
    out = []
    for what, where, metric, limit, unit in TARGETS:
        where = dict(where)
        largest = where.pop("largest", False)
        found = [c for c in cases if all(c.get(k) == v for k, v in where.items()) and c.get(metric) is not None]
        if largest and found:
            found = [max(found, key=lambda c: c["subscribers"])]
        if not found:
            out.append({"target": what, "limit": f"≤ {limit} {unit}".strip(), "measured": None, "met": None})
            continue
        c = found[0]
        value = c[metric]
        note = f" ({c['subscribers']:,} subs)" if largest else ""
        out.append({"target": what + note, "limit": f"≤ {limit} {unit}".strip(), "measured": value,
                    "met": value <= limit})
    return out


def targets_table(rows: list[dict]) -> str:
    lines = ["| target | limit | measured | met |", "|---|---:|---:|---|"]
    for r in rows:
        met = {True: "yes", False: "**no**", None: "not run"}[r["met"]]
        lines.append(f"| {r['target']} | {r['limit']} | {fmt(r['measured'], 2)} | {met} |")
    return "\n".join(lines)


def versions(peers: list[str]) -> dict:
    out = {}
    for peer in peers:
        python = PYTHON[peer]
        if not python.exists():
            continue
        try:
            freeze = subprocess.run([str(python), "-m", "pip", "freeze", "--disable-pip-version-check"],
                                    capture_output=True, text=True, timeout=60).stdout.split()
        except (OSError, subprocess.TimeoutExpired):
            continue
        keep = ("flask", "flask-sock", "flask-sse", "flask-socketio", "python-socketio", "python-engineio",
                "simple-websocket", "gevent", "greenlet", "gunicorn", "redis", "werkzeug")
        out[peer] = {n: v for n, _, v in (line.partition("==") for line in freeze) if n.lower() in keep}
    try:
        out["redis-server"] = subprocess.run(["redis-server", "--version"], capture_output=True, text=True,
                                             timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return out


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def write_results(cfg: argparse.Namespace, meta: dict, cases: list[dict]) -> tuple[Path, Path]:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    rat = ratios(cases)
    tgt = check_targets(cases)
    data = {"meta": meta, "cases": cases, "ratios_peer_over_notifier": rat, "targets": tgt}
    jpath = out / f"{cfg.name}.json"
    jpath.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")

    problems = []
    for c in cases:
        tag = f"{c['peer']} {c['transport']} {c['subscribers']:,} {c['scenario']}"
        if c.get("errors"):
            problems.append(f"- {tag}: errors {json.dumps(c['errors'], ensure_ascii=False)}")
        if c.get("lost") or c.get("duplicates"):
            problems.append(f"- {tag}: lost {c.get('lost')}, duplicates {c.get('duplicates')}, "
                            f"subscribers with loss {c.get('subscribers_with_loss')}")
        if c.get("server_log_problem_count"):
            problems.append(f"- {tag}: {c['server_log_problem_count']} problem line(s) in the server log, first: "
                            f"`{c['server_log_problems'][0][:200]}`")
    md = [
        f"# notifier benchmark — {meta['started']}",
        "",
        f"Command: `{meta['command']}`  ",
        f"notifier: {'work tree at ' if meta['notifier_source']['from'] == 'work tree' else ''}commit {meta['git']}"
        + (f" plus uncommitted changes ({', '.join(meta['notifier_source']['uncommitted_changes'])})"
           if meta['notifier_source']['uncommitted_changes'] else "")
        + f", copied when the run started (sha256 {meta['notifier_source']['sha256']}), so every row ran the "
        "same code.  ",
        f"Machine: {meta['machine']['cpus']} CPUs ({meta['machine']['cpu_model']}), load average at start "
        f"{meta['machine']['loadavg_at_start']}, at end {meta['loadavg_at_end']}; total {meta['wall_s']} s.",
        "",
        "Every row is one fresh server (gunicorn, gevent worker) with its own redis-server. "
        "`server CPU µs/deliv`: gunicorn master + workers CPU over the publish phase ÷ deliveries. "
        "`µs/publish`: server CPU per publish measured first with no subscriber (HTTP, validation, Redis, "
        "follower); `fan-out µs/deliv`: what is left of the server's CPU after that, ÷ deliveries. "
        "`redis µs/deliv`: redis-server CPU ÷ deliveries (Flask-SSE fans out inside Redis). "
        "Latency: publish (stamped by the publisher) → the bytes reaching the subscriber's socket (kernel "
        "receive timestamp, so the load process's own delays are not in it; `load lag p99` is how long the "
        "load process then took to read them). "
        "`RSS KB/conn`: (worker RSS with the subscribers idle − with none) ÷ subscribers. "
        "`deliv/read`: notifications per socket read on the subscriber side (> 1: the server batched its "
        "writes). `load CPU`: the load process's own CPU over the phase ÷ wall time (one core = 100%). "
        "`other CPU`: CPU used by everything else on the machine meanwhile (it is shared). "
        "See bench/README.md.",
        "",
        markdown_table(cases),
        "",
        "## Peers against notifier (peer ÷ notifier, same run, same load; > 1× means notifier does better)",
        "",
        ratio_table(rat),
        "",
        "## Targets",
        "",
        targets_table(tgt),
        "",
        "## Errors, losses, server log",
        "",
        *(problems or ["none"]),
        "",
    ]
    mpath = out / f"{cfg.name}.md"
    mpath.write_text("\n".join(md))
    return jpath, mpath


# ------------------------------------------------------------------------------------

def _env_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"not KEY=VALUE: {text!r}")
    return key, value


def parse_args(argv: list[str]) -> argparse.Namespace:
    ints = lambda s: [int(x) for x in s.split(",") if x.strip()]  # noqa: E731
    names = lambda s: [x.strip() for x in s.split(",") if x.strip()]  # noqa: E731
    p = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sizes", type=ints, default=[100, 1000, 5000, 10000], help="subscriber counts for notifier")
    p.add_argument("--peer-sizes", type=ints, default=None,
                   help="subscriber counts for Flask-SSE and Flask-SocketIO (default: --sizes up to 1000)")
    p.add_argument("--burst", type=int, default=200, metavar="M", help="notifications per burst case (0: no burst)")
    p.add_argument("--paced-rate", type=float, default=20.0, metavar="R", help="notifications/s in the paced case")
    p.add_argument("--paced-count", type=int, default=200, metavar="M", help="notifications in the paced case (0: none)")
    p.add_argument("--paced-size", type=int, default=1000, help="subscribers in the paced case")
    p.add_argument("--paced-workers", type=int, default=2, help="notifier workers in the paced case (peers: 1)")
    p.add_argument("--workers", type=int, default=1, help="notifier workers in the burst cases (peers: 1)")
    p.add_argument("--transports", type=names, default=["ws", "sse"])
    p.add_argument("--peers", type=names, default=list(PEERS))
    p.add_argument("--publishers", type=int, default=4, help="keep-alive connections publishing a burst")
    p.add_argument("--worker-connections", type=int, default=None,
                   help="gunicorn worker_connections (NOTIFIER_WORKER_CONNECTIONS); default: notifier's own "
                        "(10000), raised to the largest size + 100 when a case has more than 9,900 subscribers")
    p.add_argument("--calibrate", type=int, default=100,
                   help="publishes sent with no subscriber first, to measure the CPU of one publish (0: skip)")
    p.add_argument("--warmup", type=int, default=20, help="subscribers opened and closed before the RSS baseline")
    p.add_argument("--settle", type=float, default=1.0, help="seconds to wait before reading RSS")
    p.add_argument("--connect-concurrency", type=int, default=200, help="handshakes in flight at once")
    p.add_argument("--stall", type=float, default=10.0, help="give up a phase after this many s without a delivery")
    p.add_argument("--cap", type=float, default=120.0, help="give up a phase after this many s in all")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 100 subscribers, 50 notifications, notifier only (paced: 20 at 20/s)")
    p.add_argument("--notifier-env", action="append", default=[], metavar="KEY=VALUE", type=_env_pair,
                   help="an extra environment variable for notifier (repeatable), e.g. "
                        "NOTIFIER_PRESENCE_EVENTS='room:*'")
    p.add_argument("--notifier-rev", default=None, metavar="REV",
                   help="benchmark notifier as of this git revision (default: the work tree as it is at start)")
    p.add_argument("--out", default=str(BENCH / "results"), help="directory for <name>.json and <name>.md")
    p.add_argument("--name", default=None, help="file name stem (default: date and time)")
    cfg = p.parse_args(argv)
    if cfg.quick:
        cfg.sizes, cfg.peer_sizes, cfg.burst, cfg.peers = [100], [100], 50, ["notifier"]
        cfg.paced_count, cfg.paced_size, cfg.calibrate, cfg.settle = 20, 100, 20, 0.5
    if cfg.peer_sizes is None:
        cfg.peer_sizes = [s for s in cfg.sizes if s <= 1000] or cfg.sizes[:1]
    for peer in cfg.peers:
        if peer not in PEERS:
            p.error(f"unknown peer {peer!r}: choose from {', '.join(PEERS)}")
    for t in cfg.transports:
        if t not in ("ws", "sse"):
            p.error(f"unknown transport {t!r}: ws or sse")
    if cfg.name is None:
        cfg.name = datetime.now().strftime("%Y-%m-%d-%H%M") + ("-quick" if cfg.quick else "")
    return cfg


async def main(argv: list[str]) -> int:
    cfg = parse_args(argv)
    raise_nofile()
    cases_plan = plan(cfg)
    biggest = max([c[2] for c in cases_plan] or [0])
    if cfg.worker_connections is None and biggest > 9000:
        # notifier keeps 5% of worker_connections for publishes and health checks and
        # answers further subscribers 503: make room for every subscriber, plus slack
        cfg.worker_connections = math.ceil(biggest / 0.95) + 100
    for peer in {c[0] for c in cases_plan}:
        if not PYTHON[peer].exists():
            print(f"{PYTHON[peer]} missing: run bench/run, which creates it", file=sys.stderr)
            return 2
    workdir = Path(cfg.out) / "logs" / cfg.name
    workdir.mkdir(parents=True, exist_ok=True)
    global SOURCE
    source = snapshot_source(workdir / "notifier-src", cfg.notifier_rev)
    SOURCE = Path(source["copied_to"])
    started = datetime.now(timezone.utc)
    meta = {
        "started": started.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "command": "bench/run " + " ".join(argv),
        "git": source["commit"],
        "notifier_source": source,
        "machine": {"cpus": os.cpu_count(), "cpu_model": platform.processor() or _cpu_model(),
                    "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
                    "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0], "python": platform.python_version()},
        "settings": {k: v for k, v in vars(cfg).items() if k not in ("out", "name")},
        "versions": versions(sorted({c[0] for c in cases_plan})),
        "server_logs": str(workdir),
    }
    log(f"{len(cases_plan)} cases; logs in {workdir}")
    cases = []
    t0 = time.monotonic()
    # SIGTERM/SIGHUP (e.g. `timeout`) end the run like Ctrl-C: cases stop what they started.
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, task.cancel)
    try:
        for peer, transport, size, workers, scenario in cases_plan:
            cases.append(await run_case(cfg, workdir, peer, transport, size, workers, scenario))
    except (asyncio.CancelledError, KeyboardInterrupt):
        log("interrupted: stopping servers")
        return 130
    finally:
        stop_started()
    meta["wall_s"] = round(time.monotonic() - t0, 1)
    meta["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    jpath, mpath = write_results(cfg, meta, cases)
    print()
    print(text_table(cases))
    print()
    print(targets_table(check_targets(cases)))
    print(f"\nwrote {jpath.relative_to(ROOT) if jpath.is_relative_to(ROOT) else jpath} and {mpath.name}")
    failed = sum(1 for c in cases if any(k.startswith("case failed") for k in c.get("errors", {})))
    return 1 if failed == len(cases) and cases else 0


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


async def run_bounded(run: Awaitable[int], timeout: float) -> int:
    """Await ``run`` (a scenario's coroutine) for at most ``timeout`` seconds; SIGTERM and
    SIGHUP (e.g. `timeout`) end it like Ctrl-C. Either way it is cancelled, so its
    ``finally`` stops the servers and writes what it has: 124 after the timeout, 130
    after a signal, else what it returned."""
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, task.cancel)
    inner = asyncio.ensure_future(run)
    try:
        return await asyncio.wait_for(asyncio.shield(inner), timeout)
    except asyncio.TimeoutError:
        inner.cancel()
        try:
            await inner
        except asyncio.CancelledError:
            pass
        return 124
    except asyncio.CancelledError:
        inner.cancel()
        try:
            return await inner
        except asyncio.CancelledError:
            return 130



def scenario_main(parse_args: Callable[[list[str]], argparse.Namespace],
                  run: Callable[[argparse.Namespace, list[str]], Awaitable[int]]) -> int:
    """A scenario script's entry point (bench/<name>.py): its arguments parsed, ``run(cfg, argv)``
    bounded by its ``--timeout`` (see run_bounded); the exit status."""
    argv = sys.argv[1:]
    cfg = parse_args(argv)
    return asyncio.run(run_bounded(run(cfg, argv), cfg.timeout))


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
