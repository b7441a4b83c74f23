"""A private PostgreSQL for the inbox benches: the tests' one (tests/pg_server.py), plus
what the bench needs beside it: its CPU, as redis-server's is read."""
from __future__ import annotations

import sys
from pathlib import Path

import psutil

import bench as b

sys.path.insert(0, str(b.ROOT / "tests"))
from pg_server import PostgresServer  # noqa: E402  (tests/ is not a package)

__all__ = ["PostgresServer", "PostgresCpu"]


class PostgresCpu:
    """CPU seconds of a postmaster and every process it forked (backends, walwriter,
    checkpointer, autovacuum) between ``start()`` and ``stop()``. Backends come and go with
    the server's pool: a process that appeared meanwhile counts from zero; one that exited
    before ``stop()`` takes its time with it (the pools here keep theirs open)."""

    def __init__(self, pg: PostgresServer) -> None:
        self.master = psutil.Process(pg.proc.pid)
        self.before: dict[int, float] = {}

    def _now(self) -> dict[int, float]:
        try:
            procs = [self.master, *self.master.children(recursive=True)]
        except psutil.Error:
            procs = [self.master]
        return {p.pid: b.cpu_seconds([p]) for p in procs}

    def start(self) -> None:
        self.before = self._now()

    def stop(self) -> float:
        return sum(cpu - self.before.get(pid, 0.0) for pid, cpu in self._now().items())
