"""Secrets never reach the server's log: not the publisher key, not NOTIFIER_SECRET, not a token.

A server with NOTIFIER_SECRET and NOTIFIER_API_KEYS serves real traffic: publishes with the
key and with a wrong one, SSE / WebSocket / history subscribers with a token in the query
string and in ``Authorization: Bearer``, and invalid tokens (garbage, wrong signature,
expired, ``alg: none``). Then the whole log (gunicorn's error and access log, notifier's
own log, everything the process wrote) is read after the server stopped: no secret, no
token (valid or not) and no query string appears in it, while every request is there in
the access log by its path.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import socket
import time

import jwt
import pytest
import requests

from clients import SSEClient, WSClient, post_notify

SECRET = "log-secret-" + secrets.token_hex(32)
API_KEY = "log-key-" + secrets.token_hex(16)
WRONG_KEY = "log-wrongkey-" + secrets.token_hex(16)
USER = "log-user"
PRIVATE = "private-log"


def _token(claims: dict, key: str = SECRET, **kw) -> str:
    return jwt.encode(claims, key, algorithm="HS256", **kw)


def _alg_none(claims: dict) -> str:
    def b64(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."


def _claims(ttl: int = 3600, **extra) -> dict:
    return {"sub": USER, "exp": int(time.time()) + ttl, "topics": [PRIVATE], "jti": secrets.token_hex(8), **extra}


VALID_QUERY = _token(_claims())          # ?token=
VALID_HEADER = _token(_claims())         # Authorization: Bearer
VALID_WS_QUERY = _token(_claims())
VALID_WS_HEADER = _token(_claims())
VALID_HISTORY = _token(_claims())
GARBAGE = "log-badtoken-" + secrets.token_hex(16)
WRONG_SIGNATURE = _token(_claims(), key="not-the-secret-" + secrets.token_hex(24))
EXPIRED = _token(_claims(ttl=-60))
ALG_NONE = _alg_none(_claims())
INVALID = {"garbage": GARBAGE, "wrong signature": WRONG_SIGNATURE, "expired": EXPIRED, "alg none": ALG_NONE}
VALID = {"query": VALID_QUERY, "header": VALID_HEADER, "ws query": VALID_WS_QUERY, "ws header": VALID_WS_HEADER,
         "history": VALID_HISTORY}


def needles() -> dict[str, str]:
    """Every string that must not be in the log: secrets, whole tokens, and each token's signature."""
    out = {"NOTIFIER_SECRET": SECRET, "publisher key": API_KEY, "wrong publisher key": WRONG_KEY}
    for name, token in {**VALID, **INVALID}.items():
        out[f"token ({name})"] = token
        signature = token.rsplit(".", 1)[-1]
        if len(signature) >= 16:
            out[f"token signature ({name})"] = signature
    return out


ENV = {"NOTIFIER_SECRET": SECRET, "NOTIFIER_API_KEYS": f"{API_KEY},other-key", "NOTIFIER_HEARTBEAT": 1}
ACCESS_LINE = re.compile(r'^\S+ "[A-Z]+ \S* HTTP/[\d.]+" \d{3} ')


def _publish(server, key: str, **fields):
    return post_notify(server.url, fields, headers={"Authorization": f"Bearer {key}"})


def _traffic(server, closing) -> None:
    """Everything that carries a secret: publishes, subscribers of every kind, bad credentials."""
    # publishing: the right key, a wrong one, none
    assert _publish(server, API_KEY, title="hello").status == 202
    assert _publish(server, WRONG_KEY, title="nope").status == 403
    assert post_notify(server.url, {"title": "no key"}).status == 401

    # SSE and WebSocket with a token in the query string and in the Authorization header
    sse_q = closing(SSEClient(server.url, topics=[PRIVATE], token=VALID_QUERY))
    sse_h = closing(SSEClient(server.url, topics=[PRIVATE], headers={"Authorization": f"Bearer {VALID_HEADER}"}))
    ws_q = closing(WSClient(server.url, topics=[PRIVATE], token=VALID_WS_QUERY))
    ws_h = closing(WSClient(server.url, headers=[f"Authorization: Bearer {VALID_WS_HEADER}"]))
    ws_h.send_json({"action": "subscribe", "topic": PRIVATE})
    assert ws_h.recv_json() == {"ack": "subscribe", "topic": PRIVATE}
    for client in (sse_q, sse_h):
        assert client.status == 200, client.status
    # a subscriber registers a moment after its handshake: publish until all four got a private notification
    deadline = time.monotonic() + 10
    got = set()
    while len(got) < 4:
        assert time.monotonic() < deadline, f"subscribers did not all receive a notification: {sorted(got)}"
        assert _publish(server, API_KEY, title="secret news", topic=PRIVATE).status == 202
        for name, client in (("sse query", sse_q), ("sse header", sse_h), ("ws query", ws_q), ("ws header", ws_h)):
            if name not in got:
                try:
                    client.next_notification(0.3)
                    got.add(name)
                except TimeoutError:
                    pass
    assert _publish(server, API_KEY, title="for the user", user_id=USER).status == 202

    # history with a token, both ways
    http = closing(requests.Session())
    http.headers["Connection"] = "close"  # no idle keep-alive connection to hold up the server's shutdown
    h = http.get(server.url + "/notifications", params={"token": VALID_HISTORY, "topic": PRIVATE}, timeout=5)
    assert h.status_code == 200 and h.json()["notifications"], h.text
    h = http.get(server.url + "/notifications", headers={"Authorization": f"Bearer {VALID_HISTORY}"}, timeout=5)
    assert h.status_code == 200, h.text

    # invalid tokens, everywhere: 401 before any stream starts
    upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode()}
    for name, token in INVALID.items():
        for path in ("/events", "/notifications", "/ws"):
            extra = upgrade if path == "/ws" else {}
            r = http.get(server.url + path, params={"token": token}, headers=extra, timeout=5)
            assert r.status_code == 401, (name, path, r.status_code, r.text)
            r = http.get(server.url + path, headers={"Authorization": f"Bearer {token}", **extra}, timeout=5)
            assert r.status_code == 401, (name, path, r.status_code, r.text)
    # a token used as a publisher key, the key used as a token
    assert _publish(server, VALID_QUERY, title="x").status == 403
    assert http.get(server.url + "/notifications", params={"token": API_KEY}, timeout=5).status_code == 401
    closing.close_all()


@pytest.fixture(scope="module")
def log_text(server_factory):
    """The whole log of a server that served ``_traffic``, read after it stopped."""
    from conftest import Closing

    server = server_factory(workers=1, env=ENV)
    closing = Closing()
    try:
        _traffic(server, closing)
    finally:
        closing.close_all()
        server.stop()  # everything the process will ever write is in the file now
    return server.log.read_text(errors="replace")


def test_no_secret_or_token_in_the_log(log_text):
    leaks = {what: _context(log_text, needle) for what, needle in needles().items() if needle in log_text}
    assert not leaks, "secrets in the server log:\n" + "\n".join(f"{k}: ...{v}..." for k, v in leaks.items())
    queries = [line for line in log_text.splitlines() if re.search(r"[?&](token|topic)=", line)]
    assert not queries, "query strings in the log:\n" + "\n".join(queries[:10])


def test_the_requests_are_in_the_access_log_by_path(log_text):
    access = [line for line in log_text.splitlines() if ACCESS_LINE.match(line)]
    for method, path, status in [("POST", "/notify", 202), ("POST", "/notify", 403), ("POST", "/notify", 401),
                                 ("GET", "/events", 200), ("GET", "/events", 401),
                                 ("GET", "/notifications", 200), ("GET", "/notifications", 401),
                                 ("GET", "/ws", 401)]:
        assert any(f'"{method} {path} HTTP/1.1" {status} ' in line for line in access), \
            f"no access-log line for {method} {path} {status}:\n" + "\n".join(access[-30:])


def test_websocket_sessions_are_logged_by_path(log_text):
    """The two accepted WebSocket connections (101) are logged like every other request, by path:
    an access-log line ``"GET /ws HTTP/1.1" 101``, or a line of the server's own naming ``/ws`` and 101."""
    ws_lines = [line for line in log_text.splitlines() if "/ws" in line]
    accepted = [line for line in ws_lines if re.search(r'/ws(\s+HTTP/[\d.]+")?\s+101\b', line)]
    assert len(accepted) >= 2, "no log line for an accepted WebSocket; the /ws lines:\n" + "\n".join(ws_lines)


def _context(log: str, needle: str) -> str:
    at = log.find(needle)
    line_start = log.rfind("\n", 0, at) + 1
    line_end = log.find("\n", at)
    return log[line_start: line_end if line_end >= 0 else None][:300]


def test_a_malformed_request_line_does_not_log_the_token(notifier_server):
    """A client that sends a raw (not percent-encoded) byte in the URL, as curl does with a
    UTF-8 topic, gets a 400 from gunicorn: the request line, token included, must not be
    written to the log with it."""
    server = notifier_server(workers=1, env=ENV)
    token = VALID_QUERY
    for raw_line in (f"GET /events?token={token}&topic=caf\u00e9 HTTP/1.1".encode("utf-8"),
                     f"GET /ws?token={token}&topic=a b HTTP/1.1".encode()):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(raw_line + b"\r\nHost: x\r\nConnection: close\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    server.stop()
    log = server.log.read_text(errors="replace")
    assert token not in log, "the token is in the server log:\n" + _context(log, token)
