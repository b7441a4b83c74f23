"""How much resident memory an idle greenlet keeps, by how deep it went before it waited.

Why per-connection memory has a floor here: each greenlet has its own Python frame
stack (a 16 KB chunk on CPython 3.11), and pages it touched once stay resident while it
waits, so a request greenlet that went deep through gunicorn, Flask, the handshake and
auth keeps them for the connection's whole life. Run: .venv/bin/python bench/greenlet_rss.py
(seen on 2026-11-26, this machine: shallow 8.4 KB, 40 frames deep 12.4 KB, 60 frames
deep and back 16.4 KB per greenlet).
"""
import gc

import gevent
import gevent.event

N = 5000
ready = gevent.event.Event()


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def wait_at_depth(n: int) -> None:
    """Wait with ``n`` frames (8 locals each) on the stack."""
    if n == 0:
        ready.wait()
        return
    a = b = c = d = e = f = g = h = 0  # noqa: F841
    wait_at_depth(n - 1)


def deep_then_wait(n: int) -> None:
    """Go ``n`` frames deep once, come back, then wait shallow (like a handshake, then idling)."""
    wait_at_depth_no_wait(n)
    ready.wait()


def wait_at_depth_no_wait(n: int) -> None:
    if n:
        a = b = c = d = e = f = g = h = i = j = 0  # noqa: F841
        wait_at_depth_no_wait(n - 1)


def measure(name: str, target, *args) -> None:
    gc.collect()
    before = rss()
    greenlets = [gevent.spawn(target, *args) for _ in range(N)]
    gevent.sleep(0.1)
    print(f"{name:28s} {(rss() - before) / N / 1024:6.1f} KB per greenlet")
    ready.set()
    gevent.joinall(greenlets)
    ready.clear()


CASES = {
    "shallow": ("shallow (1 frame)", wait_at_depth, 1),
    "deep": ("40 frames deep", wait_at_depth, 40),
    "spike": ("60 frames deep, then back", deep_then_wait, 60),
}

if __name__ == "__main__":
    import subprocess
    import sys

    if len(sys.argv) > 1:
        name, target, depth = CASES[sys.argv[1]]
        measure(name, target, depth)
    else:  # each case in a fresh process: freed memory would be reused by the next one
        for case in CASES:
            subprocess.run([sys.executable, __file__, case], check=True)
