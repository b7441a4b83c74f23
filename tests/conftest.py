"""Fixtures that run the real thing: redis-server and gunicorn as subprocesses.

Everything listens on 127.0.0.1 (or a unix socket) on a free port; every wait is
bounded; every process a fixture starts is stopped at teardown, even when the
test fails. A failing test's report shows the tail of each server's log, and a
test during which a server logged a Python traceback fails at teardown.

- ``free_port()``: an unused loopback TCP port.
- ``redis_server``: a private redis-server (never the system one on 6379) with
  ``.url``, ``.port``, ``.stop()``, ``.start()`` (same port again);
  ``module_redis`` and ``redis_factory(persist=...)`` for module-scoped use.
- ``sentinel_cluster``: a factory; ``sentinel_cluster(replicas=1)`` starts a master, its
  replicas and three Sentinels (``SentinelCluster``: ``.url`` is ``redis+sentinel://...``,
  ``.master``, ``.replicas()``, ``.kill_master()``, ``.wait_promoted(old_port)``).
- ``notifier_server``: a factory; ``notifier_server(workers=2, redis=redis_server)``
  starts ``python -m gunicorn wsgi:app -c gunicorn.conf.py`` from the repo root
  and waits until it is ready (every worker booted, and following Redis if any).
- ``server_factory``: the same, module-scoped, for modules that share a server.
- ``postgres_server``: a private PostgreSQL (``tests/pg_server.py``), module-scoped, with
  ``.url``, ``.port``, ``.stop()``, ``.start()``; ``postgres_database``: a new empty
  database on it for one test (its URL).
- ``closing``: closes the test clients handed to it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Sequence

import psutil
import pytest
import redis as redis_py
import requests

from pg_server import PostgresServer

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
SYSTEM_REDIS_PORT = 6379


def free_port() -> int:
    """An unused TCP port on 127.0.0.1 (never the system Redis port)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port != SYSTEM_REDIS_PORT:
            return port


_ACCESS_LINE = re.compile(r'^\S+ "[A-Z]+ \S* HTTP/[\d.]+" \d{3} ')


def _tail(path: Path, n: int = 60) -> str:
    """The last ``n`` lines of a log, access-log lines only counted (they drown the rest)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "<no log>"
    other = [line for line in lines if not _ACCESS_LINE.match(line)]
    skipped = len(lines) - len(other)
    head = f"[{skipped} access-log lines left out]\n" if skipped else ""
    return head + "\n".join(other[-n:])


def _stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM, bounded wait, then SIGKILL the process and whatever is left of its group."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            pass
    if proc.poll() is None:
        proc.kill()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    # gunicorn workers are in the process group we created for the master:
    # make sure none survives a killed master.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def cli_env(**extra) -> dict:
    """The environment of a ``flask notifier`` command: the calling shell's notifier settings left out."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("NOTIFIER_") and k not in ("REDIS_URL", "PORT", "WEB_CONCURRENCY")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def flask(*args, env=None, timeout=30) -> subprocess.CompletedProcess:
    """``flask --app wsgi notifier <args>`` from the repo root, as a user runs it."""
    return subprocess.run([PYTHON, "-m", "flask", "--app", "wsgi", "notifier", *args], cwd=ROOT,
                          env=env or cli_env(), capture_output=True, text=True, timeout=timeout)


# --------------------------------------------------------------------------
# Redis
# --------------------------------------------------------------------------


def _redis_binary() -> str:
    path = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None)
    if not path:
        raise RuntimeError("redis-server not found on PATH: run scripts/test, which installs it")
    return path


def redis_ping(port: int, timeout: float = 1.0) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"PING\r\n")
        return s.recv(64).startswith(b"+PONG")


class RedisServer:
    """A private redis-server on a fixed loopback port; restartable on the same port.

    ``replicaof=<port>``: a replica of the redis-server on that loopback port.
    ``sentinel_of=<port>``: a Sentinel (``redis-server <conf> --sentinel``) monitoring the
    master on that port as ``SENTINEL_SERVICE``; its config file, which Sentinel rewrites
    with what it learns, is in ``workdir``. ``args``: more redis-server arguments.
    """

    def __init__(self, workdir: Path, *, persist: bool = False, aof: bool = False,
                 replicaof: int | None = None, sentinel_of: int | None = None, args: Sequence[str] = ()):
        self.persist = persist  # True: an RDB is saved at shutdown and loaded at start
        self.aof = aof  # True: append-only file, fsynced every second and at shutdown
        self.replicaof = replicaof
        self.sentinel_of = sentinel_of
        self.args = list(args)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = self.dir / "redis.log"
        self.proc: subprocess.Popen | None = None
        self.paused = False

    @property
    def ports(self) -> set[int]:
        """The ports a client of this Redis talks to (NotifierServer checks its workers do)."""
        return {self.port}

    def _argv(self) -> list[str]:
        if self.sentinel_of is not None:
            conf = self.dir / "sentinel.conf"
            if not conf.exists():  # a restart keeps what Sentinel wrote into it
                conf.write_text(
                    f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\ndaemonize no\n"
                    f"sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {self.sentinel_of} 2\n"
                    f"sentinel down-after-milliseconds {SENTINEL_SERVICE} {SENTINEL_DOWN_AFTER_MS}\n"
                    f"sentinel failover-timeout {SENTINEL_SERVICE} {SENTINEL_FAILOVER_TIMEOUT_MS}\n")
            return [_redis_binary(), str(conf), "--sentinel", *self.args]
        argv = [_redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "3600 1" if self.persist else "", "--dbfilename", "dump.rdb",
                "--appendonly", "yes" if self.aof else "no", "--dir", str(self.dir), "--daemonize", "no",
                "--enable-debug-command", "local"]  # DEBUG SLEEP: tests stall Redis with it
        if self.replicaof is not None:
            argv += ["--replicaof", "127.0.0.1", str(self.replicaof)]
        return argv + self.args

    def start(self, timeout: float = 10.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "redis-server already running"
        logf = open(self.log, "ab")
        try:
            self.proc = subprocess.Popen(
                self._argv(), stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            logf.close()
        self.paused = False

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited ({self.proc.returncode}):\n{_tail(self.log)}")
            return redis_ping(self.port)

        deadline = time.monotonic() + timeout
        while True:
            try:
                if ready():
                    return
            except RuntimeError:
                raise
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"redis-server on {self.port} did not answer PING:\n{_tail(self.log)}")
            time.sleep(0.05)

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections, nothing answers."""
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def kill(self) -> None:
        """SIGKILL, as a host that dies: no shutdown, no last word to replicas."""
        self.proc.kill()
        self.proc.wait(timeout=5)

    def stop(self) -> None:
        if self.proc is not None:
            if self.paused and self.proc.poll() is None:
                self.resume()  # a stopped process cannot act on the SIGTERM
            _stop_process(self.proc, timeout=10)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


SENTINEL_SERVICE = "mymaster"
SENTINEL_DOWN_AFTER_MS = 2000
"""Not 1000: a Sentinel PINGs at most once a second and reconnects a link at most once a
second, so a master it has just switched to (a new link) can go a second without a PONG. With
1000 two Sentinels then sometimes held the master they had just promoted down and failed over
again, from a live master (seen about once in ten failovers)."""
SENTINEL_FAILOVER_TIMEOUT_MS = 5000


def _redis(port: int, timeout: float = 1.0) -> redis_py.Redis:
    return redis_py.Redis(host="127.0.0.1", port=port, socket_timeout=timeout, socket_connect_timeout=timeout,
                          decode_responses=True)


class SentinelCluster:
    """A master, ``replicas`` replicas and three Sentinels (quorum 2), all private redis-servers
    on loopback ports. ``.url`` is the ``redis+sentinel://`` URL naming the three Sentinels.

    ``start()`` returns once every replica is in sync and every Sentinel knows the master, every
    replica and the other two Sentinels, so that a failover can start right away.
    """

    def __init__(self, workdir: Path, replicas: int = 1):
        # a replica starts its sync at once (the default waits 5 s for more replicas to join)
        fast_sync = ["--repl-diskless-sync-delay", "0"]
        master = RedisServer(workdir / "master", args=fast_sync)
        self.nodes = [master] + [RedisServer(workdir / f"replica{i}", replicaof=master.port, args=fast_sync)
                                 for i in range(1, replicas + 1)]
        self.sentinels = [RedisServer(workdir / f"sentinel{i}", sentinel_of=master.port) for i in range(1, 4)]
        self.service = SENTINEL_SERVICE
        self.url = ("redis+sentinel://" + ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
                    + f"/{self.service}/0")

    @property
    def ports(self) -> set[int]:
        """The data nodes' ports: a worker following this Redis has a connection to one of them."""
        return {n.port for n in self.nodes if n.running}

    def start(self, timeout: float = 20.0) -> "SentinelCluster":
        deadline = time.monotonic() + timeout
        for node in self.nodes:
            node.start()
        self.wait_replicas_in_sync(deadline - time.monotonic())
        for sentinel in self.sentinels:
            sentinel.start()
        self.wait_sentinels_agree(deadline - time.monotonic())
        return self

    def stop(self) -> None:
        for server in self.sentinels + self.nodes:  # Sentinels first: no failover during teardown
            server.stop()

    # -- state ---------------------------------------------------------------------------------
    def node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def master_port(self) -> int:
        """The master's port, as the first Sentinel that answers tells it."""
        last: Exception | None = None
        for sentinel in self.sentinels:
            if not sentinel.running or sentinel.paused:
                continue
            try:
                _, port = _redis(sentinel.port).sentinel_get_master_addr_by_name(self.service)
                return int(port)
            except (redis_py.RedisError, TypeError) as exc:
                last = exc
        raise RuntimeError(f"no Sentinel knows the master of {self.service}: {last!r}")

    @property
    def master(self) -> RedisServer:
        return self.node(self.master_port())

    def replicas(self) -> list[RedisServer]:
        """The data nodes that are running and not the master."""
        master = self.master_port()
        return [n for n in self.nodes if n.port != master and n.running]

    def _until(self, problems_now, timeout: float, what: str, interval: float = 0.05) -> None:
        """Poll ``problems_now`` (what is not so yet: empty once it is) until it is empty;
        after ``timeout``, a TimeoutError that names the problems, with every node's log."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                problems = problems_now()
            except (redis_py.RedisError, RuntimeError) as exc:
                problems = [repr(exc)]
            if not problems:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not so within {timeout}s: {problems}\n{self.logs(15)}")
            time.sleep(interval)

    def wait_replicas_in_sync(self, timeout: float = 10.0, replicas: list[RedisServer] | None = None) -> None:
        """Until each running replica (or each of ``replicas``) has its link to the master up
        and the master counts it among its online replicas."""
        def problems() -> list[str]:
            master = self.nodes[0] if not any(s.running for s in self.sentinels) else self.master
            todo = replicas if replicas is not None else [n for n in self.nodes if n is not master and n.running]
            online = _redis(master.port).info("replication")
            online_ports = {int(v["port"]) for k, v in online.items()
                            if re.fullmatch(r"slave\d+", k) and v.get("state") == "online"}
            found = []
            for node in todo:
                info = _redis(node.port).info("replication")
                if (info.get("role") != "slave" or int(info.get("master_port", 0)) != master.port
                        or info.get("master_link_status") != "up" or node.port not in online_ports):
                    found.append(f"{node.port}: {info.get('role')} of {info.get('master_port')}, "
                                 f"link {info.get('master_link_status')}")
            return found

        self._until(problems, timeout, "replicas in sync")

    def wait_sentinels_agree(self, timeout: float = 10.0) -> None:
        """Until every Sentinel names the same master, sees every running replica and the other
        Sentinels, and holds none of them down."""
        def problems() -> list[str]:
            master = self.master_port()
            replicas = {n.port for n in self.nodes if n.running and n.port != master}
            found = []
            for sentinel in self.sentinels:
                r = _redis(sentinel.port)
                state = r.sentinel_master(self.service)
                seen = {int(s["port"]) for s in r.sentinel_slaves(self.service)
                        if not ({"s_down", "o_down", "disconnected"} & set(s["flags"].split(",")))}
                if (int(state["port"]) != master or state["flags"] != "master"
                        or int(state["num-other-sentinels"]) != len(self.sentinels) - 1
                        or not replicas <= seen):
                    found.append(f"sentinel {sentinel.port}: master {state['port']} ({state['flags']}), "
                                 f"replicas {sorted(seen)} of {sorted(replicas)}, "
                                 f"{state['num-other-sentinels']} other sentinels")
            return found

        self._until(problems, timeout, "Sentinels agreeing", interval=0.1)

    # -- failures ------------------------------------------------------------------------------
    def kill_master(self) -> RedisServer:
        """SIGKILL the current master; returns it."""
        master = self.master
        master.kill()
        return master

    def wait_promoted(self, old_port: int, timeout: float = 15.0) -> RedisServer:
        """Until the Sentinels name another master than ``old_port`` and it says it is one."""
        def problems() -> list[str]:
            port = self.master_port()
            if port == old_port or _redis(port).info("replication")["role"] != "master":
                return [f"master still {old_port}, or {port} not yet a master"]
            return []

        self._until(problems, timeout, "a replica promoted")
        return self.master

    def logs(self, n: int = 20) -> str:
        return "\n".join(f"--- {kind} {s.port}:\n{_tail(s.log, n)}"
                         for kind, group in (("node", self.nodes), ("sentinel", self.sentinels)) for s in group)


@pytest.fixture
def redis_server(tmp_path):
    """A fresh redis-server for one test: ``.url``, ``.port``, ``.stop()``, ``.start()``."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def module_redis(tmp_path_factory):
    """A redis-server shared by the tests of one module."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def redis_factory(tmp_path_factory):
    """Module-scoped: ``redis_factory(persist=False)`` starts another redis-server; all stop at teardown."""
    servers = []

    def start(persist: bool = False):
        server = RedisServer(tmp_path_factory.mktemp("redis"), persist=persist)
        servers.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def sentinel_cluster(tmp_path):
    """Factory: ``sentinel_cluster(replicas=1)`` starts a ``SentinelCluster`` (a master, its
    replicas, three Sentinels) and waits until a failover could start; all stop at teardown.
    ``notifier_server(redis=cluster)`` runs notifier on its ``redis+sentinel://`` URL."""
    clusters = []

    def start(replicas: int = 1) -> SentinelCluster:
        cluster = SentinelCluster(tmp_path / f"sentinel-cluster{len(clusters)}", replicas=replicas)
        clusters.append(cluster)
        return cluster.start()

    try:
        yield start
    finally:
        for cluster in clusters:
            cluster.stop()


# --------------------------------------------------------------------------
# gunicorn + notifier
# --------------------------------------------------------------------------


class NotifierServer:
    """One gunicorn master (and its workers) running notifier or the example app."""

    def __init__(self, workdir: Path, *, workers: int = 1, redis: RedisServer | SentinelCluster | None = None,
                 env: dict | None = None, app: str = "wsgi:app", bind: list[str] | None = None,
                 prefix: str = "", host: str = "127.0.0.1"):
        self.workers = workers
        self.redis = redis
        self.app = app
        self.prefix = prefix
        self.port = free_port()
        self.url = f"http://{host}:{self.port}"  # another loopback address (127.0.0.2) stands in for another host
        self.binds = [f"{host}:{self.port}"] + list(bind or [])
        self.log = workdir / f"gunicorn-{self.port}.log"
        self.env = dict(os.environ)
        # whatever the calling shell had must not leak into the server under test
        for key in list(self.env):
            if key.startswith("NOTIFIER_") or key in ("REDIS_URL", "WEB_CONCURRENCY", "GUNICORN_CMD_ARGS"):
                del self.env[key]
        self.env.update({
            "PORT": str(self.port),
            "WEB_CONCURRENCY": str(workers),
            "GUNICORN_CMD_ARGS": " ".join(f"--bind {b}" for b in self.binds),
            "PYTHONUNBUFFERED": "1",
        })
        if redis is not None:
            self.env["REDIS_URL"] = redis.url
        env = dict(env or {})
        if "GUNICORN_CMD_ARGS" in env:  # more arguments, after the binds
            env["GUNICORN_CMD_ARGS"] = self.env["GUNICORN_CMD_ARGS"] + " " + env["GUNICORN_CMD_ARGS"]
        self.env.update({k: str(v) for k, v in env.items()})
        self.proc: subprocess.Popen | None = None
        self.started_by: str | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def spawn(self) -> subprocess.Popen:
        logf = open(self.log, "ab")
        try:
            self.proc = subprocess.Popen(
                [PYTHON, "-m", "gunicorn", self.app, "-c", "gunicorn.conf.py"],
                cwd=ROOT, env=self.env, stdout=logf, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        finally:
            logf.close()
        return self.proc

    def start(self, timeout: float = 30.0) -> "NotifierServer":
        self.spawn()
        deadline = time.monotonic() + timeout

        def check_alive():
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}:\n{self.log_tail()}")

        def get(path):
            return requests.get(self.url + self.prefix + path, timeout=2)

        while True:
            check_alive()
            try:
                if get("/healthz").status_code == 200 and get("/readyz").status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"server not ready within {timeout}s:\n{self.log_tail()}")
            time.sleep(0.1)
        # Every worker must be up (and, with Redis, following it) before a test
        # relies on fan-out across workers.
        self.wait_workers(deadline - time.monotonic())
        return self

    def wait_workers(self, timeout: float = 30.0) -> None:
        """Until every worker is up (and, with Redis, following it)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}:\n{self.log_tail()}")
            procs = self.worker_procs()
            now = time.time()
            if len(procs) >= self.workers and all(now - p.create_time() > 0.5 for p in procs):
                if self.redis is None or all(self._talks_to_redis(p) for p in procs):
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.workers} workers not all up within {timeout}s "
                                   f"(have {len(procs)}):\n{self.log_tail()}")
            time.sleep(0.1)

    def _talks_to_redis(self, proc: psutil.Process) -> bool:
        try:
            ports = self.redis.ports
            return any(c.raddr and c.raddr.port in ports for c in proc.net_connections("tcp"))
        except psutil.Error:
            return False

    def worker_procs(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children()
        except psutil.Error:
            return []

    def worker_pids(self) -> set[int]:
        return {p.pid for p in self.worker_procs()}

    def worker_of_ports(self) -> dict[int, int]:
        """Client-side TCP port -> pid of the worker holding that connection."""
        owners = {}
        for p in self.worker_procs():
            try:
                conns = p.net_connections("tcp")
            except psutil.Error:
                continue
            for c in conns:
                if c.laddr and c.laddr.port == self.port and c.raddr:
                    owners[c.raddr.port] = p.pid
        return owners

    def log_tail(self, n: int = 60) -> str:
        return _tail(self.log, n)

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is not None:
            _stop_process(self.proc, timeout=timeout)


class ServerFactory:
    """Starts servers on demand and stops every one of them at teardown."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.servers: list[NotifierServer] = []

    def __call__(self, workers: int = 1, redis: RedisServer | SentinelCluster | None = None, env: dict | None = None,
                 app: str = "wsgi:app", bind: list[str] | None = None, prefix: str = "",
                 wait: bool = True, timeout: float = 30.0, host: str = "127.0.0.1") -> NotifierServer:
        server = NotifierServer(self.workdir, workers=workers, redis=redis, env=env, app=app,
                                bind=bind, prefix=prefix, host=host)
        server.started_by = _CURRENT_TEST["nodeid"]
        self.servers.append(server)
        _SERVERS.append(server)
        if wait:
            server.start(timeout=timeout)
        else:
            server.spawn()
        return server

    def stop_all(self) -> None:
        for server in self.servers:
            server.stop()


#: every server started by any fixture, so a failing test's report can show the logs
_SERVERS: list[NotifierServer] = []
_POSTGRES: list[PostgresServer] = []
_CURRENT_TEST = {"nodeid": None}


def pytest_runtest_setup(item):
    _CURRENT_TEST["nodeid"] = item.nodeid


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and rep.when in ("setup", "call"):
        for server in _SERVERS:
            running = server.proc is not None and server.proc.poll() is None
            if running or server.started_by == item.nodeid:
                rep.sections.append((f"log of {server.app} {server.url} (workers={server.workers})",
                                     server.log_tail()))
        for pg in _POSTGRES:
            rep.sections.append((f"log of postgres {pg.port}", pg.log_tail()))


def _log_size(server: NotifierServer) -> int:
    try:
        return server.log.stat().st_size
    except OSError:
        return 0


@pytest.fixture(autouse=True)
def no_server_tracebacks():
    """Fail a test (at teardown) whose servers logged a Python traceback meanwhile.

    Clients that go away, stall or get cut are normal for this server: they must
    not show up as errors with tracebacks in its log.
    """
    offsets = {id(s): _log_size(s) for s in _SERVERS}
    yield
    problems = []
    for server in _SERVERS:
        start = offsets.get(id(server), 0)
        try:
            with open(server.log, "rb") as f:
                f.seek(start)
                new = f.read().decode("utf-8", "replace")
        except OSError:
            continue
        if "Traceback (most recent call last)" in new:
            lines = [ln for ln in new.splitlines() if not _ACCESS_LINE.match(ln)]
            first = next(i for i, ln in enumerate(lines) if "Traceback (most recent call last)" in ln)
            excerpt = "\n".join(lines[max(first - 3, 0): first + 40])
            problems.append(f"{server.app} on {server.url}:\n{excerpt}")
    if problems:
        pytest.fail("the server logged a traceback during this test:\n" + "\n\n".join(problems), pytrace=False)


@pytest.fixture
def notifier_server(tmp_path):
    """Factory: ``notifier_server(workers=1, redis=None, env={}, app="wsgi:app", bind=None)``.

    A failing test's report gets a section with the tail of each server's log.
    """
    factory = ServerFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture(scope="module")
def server_factory(tmp_path_factory):
    """Module-scoped factory for servers shared by the tests of one module."""
    factory = ServerFactory(tmp_path_factory.mktemp("servers"))
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture(scope="module")
def postgres_server(tmp_path_factory):
    """A private PostgreSQL shared by the tests of one module (``.url``: its database)."""
    server = PostgresServer(tmp_path_factory.mktemp("postgres"))
    _POSTGRES.append(server)
    try:
        yield server.start()
    finally:
        server.remove()
        _POSTGRES.remove(server)


@pytest.fixture
def postgres_database(postgres_server):
    """The URL of a new empty database for one test (CREATE DATABASE: some 40 ms)."""
    return postgres_server.create_database(f"t_{uuid.uuid4().hex[:16]}")


@pytest.fixture(scope="module")
def short_tmp():
    """A short directory under /tmp, per module (unix socket paths are limited to ~107 bytes)."""
    path = tempfile.mkdtemp(prefix="ntf-")
    try:
        yield Path(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Closing:
    """Collects clients to close: ``ws = closing(WSClient(...))``; ``closing.close_all()``."""

    def __init__(self):
        self.clients = []

    def __call__(self, client):
        self.clients.append(client)
        return client

    def close_all(self) -> None:
        while self.clients:
            self.clients.pop().close()


@pytest.fixture
def closing():
    """Closes every client handed to it at teardown, even when the test fails."""
    pool = Closing()
    try:
        yield pool
    finally:
        pool.close_all()
