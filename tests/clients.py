"""Small, strict test clients for the live notifier server.

Every read has a deadline: a client never blocks longer than the timeout it is
given, and a timeout raises ``TimeoutError`` (never returns silently), so a
test that waits for something that does not come fails with a clear message
instead of hanging.

- ``WSClient``: a WebSocket subscriber (websocket-client underneath).
- ``SSEClient``: a Server-Sent Events subscriber on a raw socket that decodes
  HTTP/1.1 chunked bodies and SSE frames incrementally; it can be given a tiny
  ``SO_RCVBUF`` and simply stop reading to play a stalled client.
- ``publish`` / ``post_notify``: ``POST /notify`` over TCP (requests) or over a
  unix socket (http.client), returning status and parsed JSON body.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests
import websocket

#: notifications of this type are published by tests only to learn that a
#: subscriber is registered (see ``sync_subscribers``); helpers skip them.
SYNC_TYPE = "test.sync"


class StreamClosed(Exception):
    """The server ended the stream; ``code`` is the WebSocket close code if any."""

    def __init__(self, code: int | None = None, reason: str = ""):
        super().__init__(f"stream closed (code={code!r}, reason={reason!r})")
        self.code = code
        self.reason = reason


def _query(topics=(), **params) -> str:
    pairs = [("topic", t) for t in topics]
    pairs += [(k, v) for k, v in params.items() if v is not None]
    return ("?" + urlencode(pairs)) if pairs else ""


# --------------------------------------------------------------------------
# WebSocket
# --------------------------------------------------------------------------


class WSClient:
    """A WebSocket subscriber with deadline-bounded reads."""

    def __init__(self, base_url: str, path: str = "/ws", topics=(), *, cookie: str | None = None,
                 headers: list[str] | None = None, rcvbuf: int | None = None, timeout: float = 10.0,
                 suppress_origin: bool = False, **params):
        u = urlsplit(base_url)
        self.url = f"ws://{u.netloc}{u.path.rstrip('/')}{path}{_query(topics, **params)}"
        sockopt = []
        if rcvbuf is not None:
            sockopt.append((socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf))
        # skip_utf8_validation: websocket-client's own check is a pure-Python loop per
        # byte (~10 ms per 32 KB frame) that made a fast reader look slow; recv_json's
        # .decode("utf-8") still rejects invalid UTF-8.
        self.ws = websocket.create_connection(
            self.url, timeout=timeout, cookie=cookie, header=headers or [], sockopt=tuple(sockopt),
            skip_utf8_validation=True, suppress_origin=suppress_origin,
        )
        self.close_code: int | None = None
        self.closed = False
        self.pings = 0
        #: the client's TCP port, to find which worker holds this connection
        self.local_port: int = self.ws.sock.getsockname()[1]

    def send_json(self, obj: Any) -> None:
        self.ws.send(json.dumps(obj))

    def send_text(self, text: str) -> None:
        self.ws.send(text)

    def _recv_frame(self, deadline: float):
        """One data or control frame as (opcode, data); raises TimeoutError/StreamClosed."""
        if self.closed:
            raise StreamClosed(self.close_code)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed waiting for a WebSocket frame")
        self.ws.settimeout(remaining)
        try:
            opcode, frame = self.ws.recv_data_frame(control_frame=True)
        except websocket.WebSocketTimeoutException:
            raise TimeoutError("no WebSocket frame before the deadline") from None
        except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError) as exc:
            # the server shut the socket down without a close frame
            self.closed = True
            raise StreamClosed(None, f"socket closed: {exc!r}") from None
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            self.closed = True
            data = frame.data or b""
            if len(data) >= 2:
                self.close_code = int.from_bytes(data[:2], "big")
                reason = data[2:].decode("utf-8", "replace")
            else:
                reason = ""
            raise StreamClosed(self.close_code, reason)
        return opcode, frame.data

    def recv_json(self, timeout: float = 5.0) -> dict:
        """Next JSON text message (pings are answered and counted, not returned)."""
        deadline = time.monotonic() + timeout
        while True:
            opcode, data = self._recv_frame(deadline)
            if opcode == websocket.ABNF.OPCODE_PING:
                self.pings += 1
                continue
            if opcode == websocket.ABNF.OPCODE_PONG:
                continue
            if isinstance(data, bytes):
                data = data.decode("utf-8")
            return json.loads(data)

    def next_notification(self, timeout: float = 5.0, *, skip_sync: bool = True) -> dict:
        """Next message that is a notification (has an "id"); sync markers skipped."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self.recv_json(max(deadline - time.monotonic(), 0.001))
            if "id" not in msg:
                raise AssertionError(f"expected a notification, got {msg!r}")
            if skip_sync and msg.get("type") == SYNC_TYPE:
                continue
            return msg

    def notifications(self, n: int, timeout: float = 10.0) -> list[dict]:
        """Exactly the next ``n`` notifications, all within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        got = []
        while len(got) < n:
            try:
                got.append(self.next_notification(max(deadline - time.monotonic(), 0.001)))
            except TimeoutError:
                raise TimeoutError(f"received {len(got)} of {n} notifications before the deadline: "
                                   f"{[m.get('id') for m in got]}") from None
        return got

    def wait_ping(self, timeout: float) -> None:
        """Wait until the server sends a ping frame (data messages in between are discarded)."""
        deadline = time.monotonic() + timeout
        start = self.pings
        while self.pings == start:
            opcode, _ = self._recv_frame(deadline)
            if opcode == websocket.ABNF.OPCODE_PING:
                self.pings += 1

    def drain_until_closed(self, timeout: float) -> tuple[list[dict], int | None]:
        """Read everything until the server closes; returns (messages, close code)."""
        deadline = time.monotonic() + timeout
        msgs = []
        while True:
            try:
                msgs.append(self.recv_json(max(deadline - time.monotonic(), 0.001)))
            except StreamClosed as closed:
                return msgs, closed.code

    def close(self) -> None:
        try:
            self.ws.settimeout(1.0)
            self.ws.close(timeout=1.0)
        except Exception:
            pass
        try:
            self.ws.shutdown()
        except Exception:
            pass


# --------------------------------------------------------------------------
# Server-Sent Events
# --------------------------------------------------------------------------


@dataclass
class SSEEvent:
    id: str | None = None
    event: str = "message"
    data: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def json(self) -> dict:
        return json.loads(self.data)


class SSEClient:
    """A raw-socket SSE subscriber: HTTP/1.1, chunked decoding, incremental SSE parsing."""

    def __init__(self, base_url: str, path: str = "/events", topics=(), *, cookie: str | None = None,
                 headers: dict | None = None, rcvbuf: int | None = None, timeout: float = 10.0,
                 unix_socket: str | None = None, **params):
        u = urlsplit(base_url)
        self.target = f"{u.path.rstrip('/')}{path}{_query(topics, **params)}"
        if unix_socket:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            addr: Any = unix_socket
        else:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            addr = (u.hostname, u.port)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout)
        sock.connect(addr)
        self.sock = sock
        #: the client's TCP port (0 on a unix socket), to find which worker holds it
        self.local_port: int = sock.getsockname()[1] if not unix_socket else 0
        hdrs = {"Host": u.netloc or "localhost", "Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if cookie:
            hdrs["Cookie"] = cookie
        hdrs.update(headers or {})
        req = f"GET {self.target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
        sock.sendall(req.encode("latin-1"))

        self._raw = b""          # undecoded bytes from the socket
        self._text = b""         # decoded body bytes not yet split into lines
        self._eof = False
        self._chunked = False
        self._chunk_left = 0     # bytes left in the current chunk (chunked mode)
        self._body_done = False  # saw the terminating zero-length chunk
        self._cur = SSEEvent()
        self._has_field = False
        self.lines: list[str] = []      # every body line, for "starts with retry:" checks
        self.comments: list[str] = []   # ": keepalive" etc. (without the colon)
        self.retry: int | None = None
        self.events: list[SSEEvent] = []  # parsed, not yet consumed
        self.closed = False

        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self._raw:
            self._fill(deadline)
            if self._eof:
                raise ConnectionError(f"connection closed before response headers: {self._raw!r}")
        head, self._raw = self._raw.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {}
        for line in header_lines:
            k, _, v = line.partition(":")
            self.headers[k.strip().lower()] = v.strip()
        self._chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        self._content_length = (int(self.headers["content-length"])
                                if "content-length" in self.headers and not self._chunked else None)
        # whatever arrived with the headers is part of the body already
        self._decode()
        self._parse()
        if self._body_done:
            self.closed = True

    # -- byte level ------------------------------------------------------------------
    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed waiting for SSE data")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError("no SSE data before the deadline") from None
        except (ConnectionError, OSError):
            data = b""  # reset by the server: same as end of stream for a subscriber
        if not data:
            self._eof = True
        self._raw += data

    def _decode(self) -> None:
        """Move bytes from _raw to _text, undoing chunked transfer coding."""
        if not self._chunked:
            if self._content_length is not None:
                take = self._raw[: self._content_length]
                self._content_length -= len(take)
                self._raw = self._raw[len(take):]
                self._text += take
                if self._content_length == 0:
                    self._body_done = True
            else:
                self._text += self._raw
                self._raw = b""
            return
        while self._raw and not self._body_done:
            if self._chunk_left == 0:
                if b"\r\n" not in self._raw:
                    return
                size_line, rest = self._raw.split(b"\r\n", 1)
                if size_line == b"":  # CRLF closing the previous chunk
                    self._raw = rest
                    continue
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    self._body_done = True
                    self._raw = b""
                    return
                self._chunk_left = size
                self._raw = rest
            take = self._raw[: self._chunk_left]
            self._text += take
            self._raw = self._raw[len(take):]
            self._chunk_left -= len(take)

    def _parse(self) -> None:
        while True:
            idx = self._text.find(b"\n")
            if idx < 0:
                return
            line = self._text[:idx].rstrip(b"\r").decode("utf-8")
            self._text = self._text[idx + 1:]
            self.lines.append(line)
            if line == "":
                if self._has_field:
                    if self._cur.data.endswith("\n"):
                        self._cur.data = self._cur.data[:-1]
                    if self._cur.id is not None or self._cur.data:
                        self.events.append(self._cur)
                self._cur = SSEEvent()
                self._has_field = False
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if name == "retry":
                self.retry = int(value)
                continue
            self._has_field = True
            if name == "id":
                self._cur.id = value
            elif name == "event":
                self._cur.event = value
            elif name == "data":
                self._cur.data += value + "\n"
            else:
                self._cur.extra[name] = value

    def _pump(self, deadline: float) -> None:
        """Read once from the socket and parse; raise StreamClosed at end of stream."""
        if self.closed or self._body_done:
            self.closed = True
            raise StreamClosed()
        self._fill(deadline)
        self._decode()
        self._parse()
        if self._eof or self._body_done:
            self.closed = True

    # -- event level ------------------------------------------------------------------
    def next_event(self, timeout: float = 5.0) -> SSEEvent:
        """Next SSE event (any event type); raises TimeoutError or StreamClosed."""
        deadline = time.monotonic() + timeout
        while not self.events:
            self._pump(deadline)
        return self.events.pop(0)

    def next_notification(self, timeout: float = 5.0, *, skip_sync: bool = True) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            ev = self.next_event(max(deadline - time.monotonic(), 0.001))
            msg = ev.json
            if ev.id != msg.get("id") or ev.event != msg.get("type"):
                raise AssertionError(f"SSE frame id/event do not match its data: id={ev.id!r} "
                                     f"event={ev.event!r} data={ev.data!r}")
            if skip_sync and msg.get("type") == SYNC_TYPE:
                continue
            return msg

    def notifications(self, n: int, timeout: float = 10.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        got = []
        while len(got) < n:
            try:
                got.append(self.next_notification(max(deadline - time.monotonic(), 0.001)))
            except TimeoutError:
                raise TimeoutError(f"received {len(got)} of {n} notifications before the deadline: "
                                   f"{[m.get('id') for m in got]}") from None
        return got

    def wait_comment(self, text: str, timeout: float) -> None:
        """Wait for a comment line (e.g. ``: keepalive``); events seen meanwhile are kept."""
        deadline = time.monotonic() + timeout
        start = len(self.comments)
        while text not in self.comments[start:]:
            self._pump(deadline)

    def wait_first_line(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while not self.lines:
            self._pump(deadline)
        return self.lines[0]

    def drain_until_closed(self, timeout: float) -> list[dict]:
        """Read until the server ends the stream; returns the notifications received."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._pump(deadline)
            except StreamClosed:
                break
        out = [e.json for e in self.events if e.id is not None]
        self.events.clear()
        return out

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


# --------------------------------------------------------------------------
# Publishing
# --------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict
    text: str

    @property
    def error(self) -> Any:
        return self.body.get("error") if isinstance(self.body, dict) else None


def _parse_body(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def post_notify(base_url: str, body: Any = None, *, raw: bytes | None = None,
                content_type: str | None = "application/json", headers: dict | None = None,
                path: str = "/notify", timeout: float = 10.0) -> Reply:
    """POST /notify over TCP; ``body`` is JSON-encoded unless ``raw`` bytes are given."""
    data = raw if raw is not None else json.dumps(body).encode()
    hdrs = dict(headers or {})
    if content_type is not None:
        hdrs["Content-Type"] = content_type
    r = requests.post(base_url.rstrip("/") + path, data=data, headers=hdrs, timeout=timeout)
    return Reply(r.status_code, _parse_body(r.text), {k.lower(): v for k, v in r.headers.items()}, r.text)


def publish(base_url: str, timeout: float = 10.0, path: str = "/notify", headers: dict | None = None,
            **fields) -> str:
    """Publish and insist on 202; returns the notification id."""
    r = post_notify(base_url, fields, timeout=timeout, path=path, headers=headers)
    assert r.status == 202, f"publish {fields!r} -> {r.status} {r.text!r}"
    assert isinstance(r.body, dict) and isinstance(r.body.get("id"), str), r.text
    return r.body["id"]


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._unix_path)
        self.sock = s


def unix_request(sock_path: str, method: str, path: str, body: Any = None, *,
                 headers: dict | None = None, timeout: float = 10.0) -> Reply:
    """One HTTP request over a unix socket (the peer is then *not* a loopback TCP peer)."""
    conn = _UnixHTTPConnection(sock_path, timeout)
    try:
        hdrs = dict(headers or {})
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        text = resp.read().decode("utf-8", "replace")
        return Reply(resp.status, _parse_body(text), {k.lower(): v for k, v in resp.getheaders()}, text)
    finally:
        conn.close()


# --------------------------------------------------------------------------
# Waiting
# --------------------------------------------------------------------------


def wait_until(predicate, timeout: float, interval: float = 0.05, message: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception as exc:  # the thing polled is allowed to fail until ready
            last_exc = exc
            value = None
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{message} not reached within {timeout}s (last error: {last_exc!r})")


# --------------------------------------------------------------------------
# Helpers over several clients
# --------------------------------------------------------------------------


def sync_subscribers(base_url: str, clients, timeout: float = 15.0, path: str = "/notify",
                     headers: dict | None = None, **target) -> None:
    """Make sure every client is registered with the hub before a test publishes.

    A connection is registered a moment after its handshake completes, so a test
    publishes a sync marker (again every 0.5 s) until every client has received
    one. Markers are skipped by ``next_notification``; everything a test
    publishes after this returns is therefore seen by every client.
    """
    deadline = time.monotonic() + timeout
    pending = list(clients)
    first: str | None = None
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} of {len(clients)} subscribers never received a sync marker")
        marker = publish(base_url, path=path, headers=headers, type=SYNC_TYPE, title="sync", **target)
        first = first or marker
        round_deadline = time.monotonic() + 0.5
        still = []
        for c in pending:
            if not _saw_sync(c, round_deadline, first):
                still.append(c)
        pending = still
    # markers still in flight to clients that already saw one are skipped by
    # next_notification, so they cannot be mistaken for a test's notifications


PRESENCE_TYPES = ("notifier.join", "notifier.leave")


def _saw_sync(client, deadline: float, first_marker: str) -> bool:
    """Until a sync marker; anything else is a leak, except join/leave and what was published
    before the first marker (a connection may get what was dispatched just before it
    attached: the hub offers a batch to whoever is attached when it flushes)."""
    while True:
        remaining = deadline - time.monotonic()
        try:
            if isinstance(client, WSClient):
                msg = client.recv_json(max(remaining, 0.01))
            else:
                msg = client.next_event(max(remaining, 0.01)).json
        except TimeoutError:
            return False
        if msg.get("type") == SYNC_TYPE:
            return True
        if msg.get("type") in PRESENCE_TYPES:  # join/leave come whenever someone does
            continue
        if isinstance(msg.get("id"), str) and msg["id"] < first_marker:
            continue
        raise AssertionError(f"unexpected message while syncing: {msg!r}")


def login(url: str, user: str) -> requests.Session:
    """Log in through a host app's ``/login?user=`` (the example apps); the session keeps the cookie."""
    session = requests.Session()
    assert session.get(url + "/login", params={"user": user}, timeout=5).status_code == 200
    return session


def cookie_of(session: requests.Session) -> str:
    """The Cookie header value of a requests session (for the WebSocket and SSE clients)."""
    return "; ".join(f"{c.name}={c.value}" for c in session.cookies)


def connect_until_spread(server: Any, make: Any, limit: int = 200, timeout: float = 20.0) -> list:
    """Open clients (``make(i)``, WS and SSE alternating as the caller likes) until at least
    two workers hold some. Bounded by count and time: a worker still booting (a fresh clone
    compiles every module) may take the first seconds' connections all to the other."""
    clients: list = []
    deadline = time.monotonic() + timeout
    while len({server.worker_of_ports().get(c.local_port) for c in clients} - {None}) < 2:
        assert len(clients) < limit and time.monotonic() < deadline, (
            f"{len(clients)} connections in {timeout:g}s never spread over two workers")
        clients.append(make(len(clients)))
        time.sleep(0.05)
    return clients
