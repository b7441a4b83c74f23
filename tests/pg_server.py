"""A private PostgreSQL for tests and benchmarks, from the Debian binaries (no pytest here).

``PostgresServer(workdir).start()`` runs ``initdb`` into a fresh directory and ``postgres`` on a
free loopback port (never the system cluster on 5432), with fsync off: the data is thrown away.
It runs as the ``postgres`` OS user when we are root (PostgreSQL refuses root), and the PID kept
is the postmaster's own, so ``stop()`` signals exactly it. ``stop()`` then ``start()`` again is a
restart on the same directory and port (for outage tests); ``remove()`` deletes the data.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

MISSING = "PostgreSQL's initdb and postgres not found: run scripts/test, which installs postgresql"


def binaries() -> tuple[str, str]:
    """(initdb, postgres): the newest /usr/lib/postgresql/<version>/bin, else the ones on PATH."""
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: _version(Path(d).parent.name))
    for bindir in reversed(dirs):
        initdb, postgres = Path(bindir, "initdb"), Path(bindir, "postgres")
        if initdb.is_file() and postgres.is_file():
            return str(initdb), str(postgres)
    initdb, postgres = shutil.which("initdb"), shutil.which("postgres")
    if initdb and postgres:
        return initdb, postgres
    raise RuntimeError(MISSING)


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(p) for p in name.split(".") if p.isdigit())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One postmaster on ``127.0.0.1:<port>``, trust auth for user ``postgres``, and one
    database made for the caller: ``.url`` is ``postgresql://postgres@127.0.0.1:<port>/<db>``.

    ``workdir`` holds the log (``postgres.log``). The data and socket directory is a fresh
    ``/tmp/ntf-pg-*`` (short, for the socket path; reachable by the postgres user, which a
    pytest tmp directory of root is not).
    """

    def __init__(self, workdir: Path, database: str = "notifier", port: int | None = None) -> None:
        self.initdb, self.postgres = binaries()
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log = self.workdir / "postgres.log"
        self.port = port or _free_port()
        self.database = database
        self.url = self.url_of(database)
        self.dir: Path | None = None  # made by the first start()
        self.proc: subprocess.Popen | None = None
        # root runs it as the postgres user; anyone else as themselves
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:
            self._as = {"user": "postgres", "group": pwd.getpwnam("postgres").pw_gid, "extra_groups": []}

    def url_of(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def data(self) -> Path:
        assert self.dir is not None, "not started yet"
        return self.dir / "data"

    # -- life ------------------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> "PostgresServer":
        """initdb (the first time), start the postmaster, wait until it accepts connections,
        and make the database (the first time)."""
        assert not self.running, "postgres already running"
        first = self.dir is None
        if first:
            self._initdb(timeout)
        logf = open(self.log, "ab")
        try:
            self.proc = subprocess.Popen(
                [self.postgres, "-D", str(self.data), "-p", str(self.port), "-k", str(self.dir),
                 "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off",
                 "-c", "max_connections=200"],  # room for many workers' pools (a bench)
                stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.dir,
                start_new_session=True, **self._as,
            )
        finally:
            logf.close()
        self._wait_ready(timeout)
        if first:
            self.create_database(self.database)
        return self

    def _initdb(self, timeout: float) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ntf-pg-"))
        self.data.mkdir(mode=0o700)
        if self._as:
            for path in (self.dir, self.data):
                shutil.chown(path, user="postgres", group=self._as["group"])
        done = subprocess.run(
            [self.initdb, "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
             "--locale=C", "--no-sync"],
            cwd=self.dir, capture_output=True, text=True, timeout=timeout, **self._as,
        )
        with open(self.log, "a") as log:
            log.write(done.stdout + done.stderr)
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}):\n{done.stdout}{done.stderr}")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited ({self.proc.returncode}):\n{self.log_tail()}")
            try:
                with self.connect("postgres", timeout=1):
                    return
            except psycopg.OperationalError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"postgres on {self.port} not accepting connections in {timeout}s:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGINT (fast shutdown: clients cut, no wait for them), bounded; SIGKILL if it hangs."""
        if not self.running:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
            try:  # the backends it forked are in its session's process group
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def remove(self) -> None:
        """Stop, and delete the data directory."""
        self.stop()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- use -------------------------------------------------------------------------------------
    def connect(self, database: str | None = None, timeout: float = 5) -> Any:
        """An autocommit psycopg connection (a context manager) to ``database`` (default: ours)."""
        return psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=database or self.database,
                               connect_timeout=max(int(timeout), 1), autocommit=True)

    def create_database(self, name: str) -> str:
        """A new empty database; returns its URL."""
        with self.connect("postgres") as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url_of(name)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "<no log>"
