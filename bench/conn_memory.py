"""Where an idle connection's memory goes: RSS and tracemalloc, per connection, in one worker.

Why: ``bench/run`` says how much an idle connection costs; this says what it is made of.
It starts a redis-server and one gunicorn gevent worker (notifier as deployed, its app
wrapped with two diagnostic routes), opens N idle subscribers of one transport, and
prints per connection: the worker's RSS growth, the objects (by type) and the bytes
(by allocation site, with tracemalloc) that came with them, and the stacks their
greenlets wait in. Resident memory tracemalloc does not see is mostly each greenlet's
frame-stack pages (``bench/greenlet_rss.py``).

    .venv/bin/python bench/conn_memory.py ws 1000            # RSS, object types, stacks
    .venv/bin/python bench/conn_memory.py sse 1000 --trace   # + tracemalloc by line (slower)
"""
from __future__ import annotations

import collections
import gc
import io
import os
import sys
import tracemalloc

_base: dict = {}


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def _types() -> collections.Counter:
    return collections.Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects())


def _stacks(out: io.StringIO) -> None:
    import greenlet

    waits: collections.Counter = collections.Counter()
    for g in (o for o in gc.get_objects() if isinstance(o, greenlet.greenlet)):
        frame, names = g.gr_frame, []
        while frame is not None:
            names.append(f"{frame.f_code.co_name} ({os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno})")
            frame = frame.f_back
        waits[tuple(names)] += 1
    for names, count in waits.most_common(3):
        print(f"{count} greenlets waiting {len(names)} frames deep:", *names, sep="\n    ", file=out)


def _report(n: int, out: io.StringIO) -> None:
    gc.collect()
    print(f"RSS: {(_rss() - _base['rss']) / n / 1024:.2f} KB per connection", file=out)
    print("objects per connection:", file=out)
    for name, count in (_types() - _base["types"]).most_common(40):
        if count >= n / 2:
            print(f"  {count / n:5.1f}  {name}", file=out)
    if "snapshot" in _base:
        stats = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)]) \
            .compare_to(_base["snapshot"], "lineno")
        print(f"tracemalloc: {sum(s.size_diff for s in stats) / n:.0f} B per connection, by line:", file=out)
        for s in stats[:40]:
            print(f"  {s.size_diff / n:7.0f} B  {s.traceback[0]}", file=out)
    _stacks(out)


def _wrap(inner):
    """notifier's app, with /_mem/base (before the subscribers) and /_mem/report?n=N."""
    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if not path.startswith("/_mem/"):
            return inner(environ, start_response)
        out = io.StringIO()
        if path == "/_mem/base":
            if environ.get("QUERY_STRING") == "trace":
                tracemalloc.start(1)
            gc.collect()
            _base.update(rss=_rss(), types=_types())
            if tracemalloc.is_tracing():
                _base["snapshot"] = tracemalloc.take_snapshot()
        else:
            _report(int(environ["QUERY_STRING"].partition("=")[2]), out)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [out.getvalue().encode()]
    return app


if __name__ != "__main__":  # imported by gunicorn, in the worker
    from wsgi import app as _notifier_app

    app = _wrap(_notifier_app)
else:
    import argparse
    import asyncio
    import http.client
    import subprocess
    import tempfile
    import time
    from pathlib import Path

    import loadgen as lg
    from bench import Redis, free_port, raise_nofile, stop_process

    ROOT = Path(__file__).resolve().parent.parent

    def get(port: int, path: str) -> str:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        conn.request("GET", path)
        return conn.getresponse().read().decode()

    async def main(args: argparse.Namespace) -> None:
        raise_nofile()  # this process holds the subscribers' sockets
        redis = Redis(Path(tempfile.mkdtemp(prefix="conn-memory-")))
        redis.start()
        port = free_port()
        env = dict(os.environ, PYTHONPATH=str(ROOT / "bench"), REDIS_URL=redis.url, PORT=str(port),
                   WEB_CONCURRENCY="1", NOTIFIER_PUBLISH_RATE="1000000",
                   NOTIFIER_WORKER_CONNECTIONS=str(int(args.n / 0.95) + 200),
                   GUNICORN_CMD_ARGS=f"--bind 127.0.0.1:{port} --timeout 600 --access-logfile /dev/null")
        server = subprocess.Popen([sys.executable, "-m", "gunicorn", "conn_memory:app", "-c", "gunicorn.conf.py"],
                                  cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True, preexec_fn=raise_nofile)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if "ready" in get(port, "/readyz"):
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError("the server did not get ready")
                time.sleep(0.1)
            col = lg.Collector()  # a few come and go first: lazily loaded code is not counted
            await lg.open_subs(col, "notifier", args.transport, port, 20)
            await lg.sync(col, port)
            await lg.close_subs(col)
            await asyncio.sleep(1)
            get(port, "/_mem/base" + ("?trace" if args.trace else ""))
            col = lg.Collector()
            await lg.open_subs(col, "notifier", args.transport, port, args.n, concurrency=200,
                               budget=max(60.0, args.n / 50))
            await lg.sync(col, port)
            await asyncio.sleep(1)
            print(f"{col.live()} idle {args.transport} subscribers on one worker")
            print(get(port, f"/_mem/report?n={args.n}"))
            await lg.close_subs(col)
        finally:
            stop_process(server, 25)
            redis.stop()

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("transport", choices=("ws", "sse"))
    parser.add_argument("n", type=int, nargs="?", default=1000)
    parser.add_argument("--trace", action="store_true", help="also tracemalloc, by allocation line")
    asyncio.run(main(parser.parse_args()))
