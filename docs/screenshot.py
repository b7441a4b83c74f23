"""Takes docs/demo.png: the /demo page with a few notifications on it, in headless Chromium.

Run from the repo root, after scripts/test has made .venv and installed chromium:

    .venv/bin/python docs/screenshot.py [output.png]

It starts its own server (gunicorn, embedded broker, the inbox in a SQLite file of a
temporary directory) on a free loopback port, opens the page as "alice" (a token), subscribes
it to a topic, publishes a few notifications (some to alice's inbox, one from the page's own
form), marks one read, and stops the server again.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from playwright.sync_api import expect, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from notifier.tokens import issue_token  # noqa: E402 (the repo's package, from its root)

CHROMIUM = "/usr/bin/chromium"
SECRET = "screenshot-only-secret-0123456789abcdef"

NOTIFICATIONS = [
    {"type": "deploy.finished", "title": "Deploy finished", "message": "v42 is live on all 4 hosts"},
    {"type": "order.created", "topic": "orders", "title": "New order #1017",
     "message": "2 × Espresso beans, 1 kg — ships tomorrow", "data": {"id": 1017}},
    {"type": "build.failed", "user_id": "alice", "title": "Build failed on main",
     "message": "test_checkout.py: 1 failed, 212 passed"},
    {"type": "review.requested", "user_id": "alice", "title": "Review requested", "message": "bob asked you to review #88"},
    {"type": "order.created", "topic": "orders", "title": "New order #1018", "message": "1 × Grinder"},
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {proc.returncode}")
        try:
            if requests.get(url + "/readyz", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready within {timeout}s")


def publish(url: str, body: dict) -> None:
    r = requests.post(url + "/notify", json=body, timeout=5)
    r.raise_for_status()


def main(out: Path, db_dir: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFIER_") and k != "REDIS_URL"}
    env.update(PORT=str(port), WEB_CONCURRENCY="1", GUNICORN_CMD_ARGS=f"--bind 127.0.0.1:{port}",
               NOTIFIER_INBOX_URL=f"sqlite:///{db_dir / 'inbox.db'}", NOTIFIER_SECRET=SECRET)
    server = subprocess.Popen([sys.executable, "-m", "gunicorn", "wsgi:app", "-c", "gunicorn.conf.py"],
                              cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_ready(url, server)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
            page = browser.new_page(viewport={"width": 1180, "height": 720}, device_scale_factor=1)
            page.goto(url + "/demo?topic=orders&token=" + issue_token(SECRET, "alice"))
            expect(page.locator("#state")).to_have_text("connected", timeout=10_000)
            # the subscriber is registered a moment after the WebSocket opens
            deadline = time.monotonic() + 10
            while page.evaluate("window.notifierClient.stats.received") == 0:
                if time.monotonic() > deadline:
                    raise TimeoutError("the page received nothing")
                publish(url, NOTIFICATIONS[0])
                page.wait_for_timeout(300)
            for body in NOTIFICATIONS[1:]:
                publish(url, body)
                page.wait_for_timeout(150)
            page.fill("#title", "Hello from the demo form")
            page.fill("#message", "published with POST /notify")
            page.click("#publish button[type=submit]")
            page.wait_for_function(f"document.querySelectorAll('#notifications li').length > {len(NOTIFICATIONS)}",
                                   timeout=10_000)
            page.click('#inbox-list li:has-text("Build failed on main")')  # read
            expect(page.locator("#unread")).to_have_text("2", timeout=10_000)
            page.fill("#title", "")
            page.fill("#message", "")
            page.evaluate("document.activeElement.blur()")
            page.wait_for_timeout(1500)  # the highlight of new items fades out
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out))
            browser.close()
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
    print(f"wrote {out}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "demo.png", Path(tmp))
