"""The Heroku way, run locally: the Procfile's web line as written, ``honcho start``, and app.json."""

from __future__ import annotations

import ast
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from clients import SSEClient, WSClient, connect_until_spread, publish, sync_subscribers
from conftest import _SERVERS, PYTHON, ROOT, NotifierServer

VENV_BIN = str(Path(PYTHON).parent)


def config_keys() -> set[str]:
    """Every setting notifier/config.py reads: the key argument of its _raw/_number/_list/_flag
    calls, and the Redis URL keys it tries in turn (REDIS_URL_KEYS)."""
    tree = ast.parse((ROOT / "notifier" / "config.py").read_text())
    keys = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "REDIS_URL_KEYS" for t in node.targets):
            keys.update(element.value for element in node.value.elts)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in ("_raw", "_number", "_list", "_flag") and len(node.args) >= 2:
            key = node.args[1]
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                keys.add(key.value)
    return keys


def procfile_line(name: str) -> str:
    for line in (ROOT / "Procfile").read_text().splitlines():
        match = re.fullmatch(rf"{name}:\s*(.+)", line.strip())
        if match:
            return match.group(1)
    raise AssertionError(f"no {name}: line in the Procfile")


class ShellServer(NotifierServer):
    """A server started by a command line (a Procfile line, honcho), the way a platform starts it.

    The command's environment has only what a platform gives it (PORT, WEB_CONCURRENCY,
    REDIS_URL, the venv first on PATH): no GUNICORN_CMD_ARGS, so gunicorn.conf.py decides.
    It is stopped the way Heroku stops a dyno: SIGTERM to every process of it.
    """

    def __init__(self, workdir: Path, argv: list[str], unset: tuple[str, ...] = (), **kwargs):
        super().__init__(workdir, **kwargs)
        self.argv = [arg.format(port=self.port) for arg in argv]
        for key in ("GUNICORN_CMD_ARGS", *unset):
            self.env.pop(key, None)
        self.env["PATH"] = VENV_BIN + os.pathsep + self.env.get("PATH", "")

    def spawn(self) -> subprocess.Popen:
        logf = open(self.log, "ab")
        try:
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            logf.close()
        return self.proc

    def worker_procs(self) -> list[psutil.Process]:
        """The gunicorn master's children, wherever the master sits under the shell or honcho."""
        try:
            root = psutil.Process(self.proc.pid)
            for proc in [root, *root.children(recursive=True)]:
                if proc.name() not in ("sh", "bash", "dash") and any("gunicorn" in part for part in proc.cmdline()):
                    return proc.children()  # the first gunicorn below any shell is the master
        except psutil.Error:
            pass
        return []

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=timeout)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and any(p.is_running() for p in self._group()):
                time.sleep(0.1)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        super().stop(timeout=1)

    def _group(self) -> list[psutil.Process]:
        group = []
        for p in psutil.process_iter():
            try:
                if os.getpgid(p.pid) == self.proc.pid and p.status() != psutil.STATUS_ZOMBIE:
                    group.append(p)
            except (ProcessLookupError, psutil.Error):
                pass
        return group


@pytest.fixture
def shell_server(tmp_path):
    started = []

    def start(argv, **kwargs):
        server = ShellServer(tmp_path, argv, **kwargs)
        started.append(server)
        _SERVERS.append(server)
        return server.start(timeout=40)

    yield start
    for server in started:
        server.stop()


def publish_and_receive_on_both_workers(server, closing):
    clients = connect_until_spread(server, lambda i: closing((WSClient if i % 2 else SSEClient)(server.url)))
    sync_subscribers(server.url, clients)
    ids = [publish(server.url, title=f"n{i}") for i in range(5)]
    for client in clients:
        assert [n["id"] for n in client.notifications(5, timeout=10)] == ids


def test_the_procfile_web_line_as_written_runs_two_workers_behind_redis(shell_server, redis_server, closing):
    # Heroku runs a Procfile line with bash, in the app's directory, with PORT set.
    server = shell_server(["bash", "-c", procfile_line("web")], workers=2, redis=redis_server)
    assert len(server.worker_pids()) == 2
    publish_and_receive_on_both_workers(server, closing)


def test_honcho_start_reads_the_procfile_and_an_env_file_made_from_the_example(shell_server, redis_server,
                                                                                 closing, tmp_path):
    env_file = tmp_path / ".env"
    example = (ROOT / ".env.example").read_text()
    assert re.search(r"^REDIS_URL=", example, re.M) and re.search(r"^WEB_CONCURRENCY=2$", example, re.M)
    env_file.write_text(re.sub(r"^REDIS_URL=.*$", f"REDIS_URL={redis_server.url}", example, flags=re.M))
    # PORT, WEB_CONCURRENCY and REDIS_URL come from honcho and the env file only
    server = shell_server([PYTHON, "-m", "honcho", "start", "--no-colour", "-e", str(env_file), "-p", "{port}", "web"],
                          workers=2, redis=redis_server, unset=("PORT", "WEB_CONCURRENCY", "REDIS_URL"))
    assert len(server.worker_pids()) == 2
    publish_and_receive_on_both_workers(server, closing)


def test_app_json_declares_redis_and_only_settings_notifier_reads(monkeypatch):
    app = json.loads((ROOT / "app.json").read_text())
    assert any(addon["plan"].startswith("heroku-redis") for addon in app["addons"]), app["addons"]
    read = config_keys()
    assert {"REDIS_URL", "PORT", "WEB_CONCURRENCY", "NOTIFIER_SECRET", "NOTIFIER_API_KEYS"} <= read, read
    unknown = set(app["env"]) - read
    assert not unknown, f"app.json sets variables notifier/config.py never reads: {sorted(unknown)}"
    assert app["env"]["NOTIFIER_SECRET"].get("generator") == "secret"
    assert int(app["env"]["WEB_CONCURRENCY"]["value"]) >= 2
    assert app["formation"]["web"]["quantity"] >= 1

    # the values it sets load, with a Heroku Redis URL, and make a multi-worker setup
    from notifier.config import Settings, check_workers, server_workers

    for key, spec in app["env"].items():
        monkeypatch.setenv(key, spec.get("value", "generated-secret"))
    monkeypatch.setenv("REDIS_URL", "rediss://:pw@ec2-1-2-3-4.compute-1.amazonaws.com:12345")
    settings = Settings.load()
    check_workers(server_workers(), settings)
    assert settings.redis_url.endswith("?ssl_cert_reqs=none") and server_workers() >= 2


def test_env_example_sets_only_settings_notifier_reads():
    keys = {line.split("=", 1)[0].lstrip("# ").strip()
            for line in (ROOT / ".env.example").read_text().splitlines()
            if re.match(r"^#?\s*[A-Z_]+=", line)}
    assert keys and not keys - config_keys(), sorted(keys - config_keys())
