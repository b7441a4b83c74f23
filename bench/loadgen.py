"""The load side of the benchmark: many subscribers and a publisher in one asyncio process.

Subscribers are non-blocking TCP sockets read from asyncio loop callbacks (no client
library, no thread per connection): a minimal HTTP/1.1 upgrade and WebSocket frame
walker, an Engine.IO v4 client on top of it for Flask-SocketIO, and a minimal SSE reader.

Every published notification carries a marker in its ``message`` field::

    b|<phase>|<seq>|<publish time, µs since the epoch>|

stamped by the publisher just before it writes the request. A subscriber finds the
markers with one regex scan per read (the wire framing around them does not matter:
neither server splits a notification across WebSocket frames or HTTP chunks), and
counts each ``seq`` once per phase: a second copy is a duplicate, a missing one a
loss, and receipt time minus the stamp is the publish→deliver latency (same machine,
same clock). Receipt time is the kernel's (``SO_TIMESTAMPNS``): when the bytes reached
the subscriber's socket, so a busy load process does not inflate the latency; how long
this process then took to read them is kept apart (``lag``). ``s|<n>|0|0|`` markers are sync notifications, sent only to learn that
every subscriber is registered; they are never counted.

A phase is either a broadcast (every subscriber should get every notification) or
targeted (``Collector.start_phase(m, targets)``): notification ``seq`` is for the one
subscriber whose ``index`` is ``targets[seq]``, so it must arrive exactly once, there.
"""
from __future__ import annotations

import asyncio
import base64
import os
import re
import select
import socket
import struct
import time
from array import array
from collections import Counter

MARK = re.compile(rb"([bs])\|(\d+)\|(\d+)\|(\d+)\|")

HANDSHAKE, OPEN, CLOSED = 0, 1, 2
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; Python does not export it
TIMESPEC = struct.Struct("@qq")
ANC_SIZE = socket.CMSG_SPACE(TIMESPEC.size)
RECV_SIZE = 65536


def now_us() -> int:
    return time.time_ns() // 1000


def masked_frame(opcode: int, payload: bytes = b"") -> bytes:
    """A client frame (clients must mask); payloads here are tiny control/Engine.IO packets."""
    mask = os.urandom(4)
    body = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
    return bytes((0x80 | opcode, 0x80 | len(payload))) + mask + body


PONG = masked_frame(0xA)
EIO_CONNECT = masked_frame(0x1, b"40")
EIO_PONG = masked_frame(0x1, b"3")


class Collector:
    """What every subscriber of one case has received, phase by phase."""

    def __init__(self) -> None:
        self.subs: list[Sub] = []
        self.errors: Counter = Counter()
        self.phase = 0
        self.phase_b = b"0"
        self.m = 0
        self.received = 0
        self.dup = 0
        self.stray = 0
        self.expected = 1 << 62
        self.lat = array("q")
        self.seqs = array("l")
        self.lag = array("q")
        self.last_us = 0
        self.done: asyncio.Event | None = None
        self.sync_target = 0
        self.targets: array | None = None
        self.got = bytearray(0)  # a targeted phase: which seqs arrived (at the right subscriber or not)
        self.misdelivered = 0

    def error(self, kind: str) -> None:
        self.errors[kind] += 1

    def start_phase(self, m: int, targets: array | None = None) -> None:
        """Count a new set of ``m`` notifications (seq 0..m-1) from now on.

        ``targets``: a targeted phase, notification ``seq`` is for the subscriber whose
        ``index`` is ``targets[seq]`` (the caller picks open ones) and no other.
        """
        self.phase += 1
        self.phase_b = str(self.phase).encode()
        self.m = m
        self.received = self.dup = self.stray = self.misdelivered = 0
        self.targets = targets
        self.lat = array("q")
        self.seqs = array("l")
        self.lag = array("q")
        self.last_us = 0
        self.done = asyncio.Event()
        if targets is not None:
            # one delivery per seq in all: one shared table instead of one per subscriber
            self.got = bytearray(m)
            for s in self.subs:
                s.got = self.got
            self.expected = m
            return
        live = 0
        for s in self.subs:
            if s.state == OPEN:
                s.got = bytearray(m)
                live += 1
            else:
                s.got = bytearray(0)
        self.expected = live * m

    def set_accepted(self, accepted: int) -> None:
        if self.targets is not None:
            self.expected = accepted
        else:
            counted = sum(1 for s in self.subs if len(s.got) == self.m and self.m)
            self.expected = counted * accepted
        self.check_done()

    def check_done(self) -> None:
        if self.done is not None and self.received >= self.expected:
            self.done.set()

    def live(self) -> int:
        return sum(1 for s in self.subs if s.state == OPEN)


class Reactor:
    """Thousands of subscriber sockets behind one asyncio reader: their own epoll.

    asyncio would wrap every readable socket in a Handle and a callback round; here the
    loop wakes once for the epoll fd and this calls each ready subscriber directly,
    which roughly halves the load process's CPU per read.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.ep = select.epoll()
        self.subs: dict[int, Sub] = {}
        loop.add_reader(self.ep.fileno(), self.poll)

    def register(self, fd: int, sub: "Sub") -> None:
        self.subs[fd] = sub
        self.ep.register(fd, select.EPOLLIN)

    def unregister(self, fd: int) -> None:
        if self.subs.pop(fd, None) is not None:
            try:
                self.ep.unregister(fd)
            except (OSError, ValueError):
                pass

    def poll(self) -> None:
        subs = self.subs
        for fd, _events in self.ep.poll(0, 4096):
            sub = subs.get(fd)
            if sub is not None:
                sub._readable()

    def close(self) -> None:
        self.loop.remove_reader(self.ep.fileno())
        self.ep.close()


_reactor: Reactor | None = None


def reactor() -> Reactor:
    global _reactor
    loop = asyncio.get_running_loop()
    if _reactor is None or _reactor.loop is not loop:
        _reactor = Reactor(loop)
    return _reactor


class Sub:
    """One subscriber: a non-blocking socket read by a loop callback. Subclasses parse framing.

    Reads use ``recvmsg`` with ``SO_TIMESTAMPNS``: the kernel says when the bytes reached
    this socket, so latency does not include time this process took to get to them
    (that lag is measured separately, per read).
    """

    def __init__(self, col: Collector, request: bytes, early_headers: bool = True) -> None:
        self.col = col
        self.request = request
        self.early_headers = early_headers
        self.sock: socket.socket | None = None
        self.reading = False
        self.state = HANDSHAKE
        self.buf = b""
        self.got = bytearray(0)
        self.synced = 0
        self.closing = False
        self.ts_us = 0
        self.index = -1  # its place among the subscribers open_subs opened (targeted phases)
        self.opened: asyncio.Future = asyncio.get_running_loop().create_future()

    async def connect(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock = sock
        await loop.sock_connect(sock, ("127.0.0.1", port))
        if self.closing:
            return
        self.write(self.request)
        reactor().register(sock.fileno(), self)
        self.reading = True
        if not self.early_headers:
            # Flask-SSE sends its response headers only with the first event.
            self._open()

    def write(self, data: bytes) -> None:
        """Small writes only (requests, pongs): the socket buffer always has room for them."""
        try:
            self.sock.send(data)
        except OSError:
            pass

    def _readable(self) -> None:
        try:
            data, anc, _flags, _addr = self.sock.recvmsg(RECV_SIZE, ANC_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._lost()
            return
        if not data:
            self._lost()
            return
        if anc:
            sec, nsec = TIMESPEC.unpack_from(anc[0][2])
            self.ts_us = sec * 1_000_000 + nsec // 1000
        else:
            self.ts_us = now_us()
        self.data_received(data)

    def _stop_reading(self) -> None:
        if self.reading:
            self.reading = False
            reactor().unregister(self.sock.fileno())

    def _lost(self) -> None:
        was = self.state
        self.state = CLOSED
        self._stop_reading()
        self.sock.close()
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("closed during handshake"))
        elif was == OPEN and not self.closing:
            self.col.error("disconnected by server")
            self.col.check_done()

    # -- helpers ---------------------------------------------------------------------
    def _open(self) -> None:
        if self.state == HANDSHAKE:
            self.state = OPEN
        if not self.opened.done():
            self.opened.set_result(True)

    def fail(self, kind: str) -> None:
        self.col.error(kind)
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(kind))
        self.close()

    def close(self) -> None:
        self.closing = True
        self.state = CLOSED
        if self.sock is not None:
            self._stop_reading()
            self.sock.close()

    def headers(self, data: bytes, status: bytes) -> bytes | None:
        """Consume the HTTP response head; the body bytes after it, or None if incomplete."""
        buf = self.buf + data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > 65536:
                self.fail("response head too large")
            self.buf = buf
            return None
        self.buf = b""
        code = buf[9:12]
        if code != status:
            self.fail(f"HTTP {code.decode(errors='replace')}")
            return None
        return buf[end + 4:]

    def scan(self, buf: bytes, end: int) -> None:
        """Count the markers in ``buf[:end]`` (complete frames or events only)."""
        found = MARK.findall(buf, 0, end)
        if not found:
            return
        col = self.col
        now = self.ts_us  # when the kernel got the bytes
        col.lag.append(now_us() - now)  # how long this process took to read them
        phase = col.phase_b
        got = self.got
        lat = col.lat
        seqs = col.seqs
        targets = col.targets
        n = 0
        for kind, ph, seq, t in found:
            if kind == b"s":
                self.synced = int(ph)
                continue
            if ph != phase:
                col.stray += 1
                continue
            s = int(seq)
            if got[s]:
                col.dup += 1
            else:
                got[s] = 1
                if targets is not None and targets[s] != self.index:
                    col.misdelivered += 1
                lat.append(now - int(t))
                seqs.append(s)
                n += 1
        if n:
            col.received += n
            col.last_us = now
            if col.received >= col.expected:
                col.done.set()


class WsSub(Sub):
    """WebSocket subscriber; with ``eio`` it also speaks Engine.IO v4 / Socket.IO."""

    def __init__(self, col: Collector, host: str, path: str, eio: bool = False) -> None:
        key = base64.b64encode(os.urandom(16))
        request = (b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + host.encode() +
                   b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + key +
                   b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
        super().__init__(col, request)
        self.eio = eio
        self.upgraded = False

    def data_received(self, data: bytes) -> None:
        if not self.upgraded:
            body = self.headers(data, b"101")
            if body is None:
                return
            self.upgraded = True
            if not self.eio:
                self._open()
            data = body
        buf = self.buf + data if self.buf else data
        n = len(buf)
        i = 0
        while n - i >= 2:
            ln = buf[i + 1] & 0x7F
            if ln < 126:
                h = 2
            elif ln == 126:
                if n - i < 4:
                    break
                ln = (buf[i + 2] << 8) | buf[i + 3]
                h = 4
            else:
                if n - i < 10:
                    break
                ln = int.from_bytes(buf[i + 2:i + 10], "big")
                h = 10
            j = i + h + ln
            if j > n:
                break
            op = buf[i] & 0x0F
            if op != 1:
                self.control(op, buf[i + h:j])
            elif self.eio and buf[i + h] != 0x34:  # Engine.IO packet that is not a Socket.IO message
                self.engineio(buf[i + h:j])
            elif self.eio and self.state == HANDSHAKE and buf[i + h:i + h + 2] == b"40":
                self._open()  # Socket.IO namespace connected
            i = j
        if i:
            self.scan(buf, i)
        self.buf = buf[i:] if i < n else b""

    def control(self, op: int, payload: bytes) -> None:
        if op == 0x9:
            self.write(PONG)
        elif op == 0x8:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            self.fail(f"ws close {code}")

    def engineio(self, packet: bytes) -> None:
        kind = packet[:1]
        if kind == b"2":
            self.write(EIO_PONG)
        elif kind == b"0":
            self.write(EIO_CONNECT)
        elif kind == b"1":
            self.fail("engine.io close")


class SseSub(Sub):
    """Server-Sent Events subscriber: scans whole events (up to the last blank line)."""

    def __init__(self, col: Collector, host: str, path: str, early_headers: bool = True) -> None:
        request = (b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + host.encode() +
                   b"\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n")
        super().__init__(col, request, early_headers)
        self._head = True

    def data_received(self, data: bytes) -> None:
        if self._head:
            body = self.headers(data, b"200")
            if body is None:
                return
            self._head = False
            self._open()
            data = body
        buf = self.buf + data if self.buf else data
        k = buf.rfind(b"\n\n")
        if k < 0:
            self.buf = buf
            return
        self.scan(buf, k)
        self.buf = buf[k + 2:]
        if buf.endswith(b"\r\n0\r\n\r\n"):  # last chunk: the server ended the stream
            if not self.closing:
                self.col.error("stream ended by server")
            self.close()


# --------------------------------------------------------------------------------
# Opening and closing subscribers
# --------------------------------------------------------------------------------

def make_sub(col: Collector, peer: str, transport: str, port: int, query: str = "") -> Sub:
    """``query``: a query string for notifier's /ws or /events (e.g. ``token=...``)."""
    host = f"127.0.0.1:{port}"
    q = "?" + query if query else ""
    if transport == "ws":
        if peer == "socketio":
            return WsSub(col, host, "/socket.io/?EIO=4&transport=websocket", eio=True)
        return WsSub(col, host, "/ws" + q)
    return SseSub(col, host, "/events" + q, early_headers=(peer != "flask-sse"))


async def open_subs(col: Collector, peer: str, transport: str, port: int, n: int,
                    concurrency: int = 200, timeout: float = 30.0, budget: float = 120.0,
                    queries: list[str] | None = None) -> list[Sub]:
    """Open ``n`` subscribers, at most ``concurrency`` handshakes at a time; failures are counted.

    A connection that is not open within ``timeout`` s counts as an error; after ``budget``
    s in all, the rest are not tried (counted too), so a server that stalls cannot hang the run.
    ``queries[i]``: the i-th subscriber's query string (its token); it gets ``index`` i.
    """
    loop = asyncio.get_running_loop()
    sem = asyncio.Semaphore(concurrency)
    subs: list[Sub] = []
    deadline = time.monotonic() + budget

    async def one(i: int) -> None:
        async with sem:
            if time.monotonic() > deadline:
                col.error("not tried: connect budget spent")
                return
            sub = make_sub(col, peer, transport, port, queries[i] if queries else "")
            sub.index = i
            subs.append(sub)
            try:
                await asyncio.wait_for(sub.connect(port), timeout)
                await asyncio.wait_for(asyncio.shield(sub.opened), timeout)
            except asyncio.TimeoutError:
                sub.fail("connect timeout")
            except OSError as exc:  # ConnectionError included
                if not sub.closing:  # fail() already counted its own reason
                    sub.fail(f"connect: {exc.strerror or exc}")

    await asyncio.gather(*(one(i) for i in range(n)))
    col.subs.extend(subs)
    return subs


async def close_subs(col: Collector) -> None:
    for s in col.subs:
        s.close()
    col.subs = []
    await asyncio.sleep(0.2)


# --------------------------------------------------------------------------------
# Publishing
# --------------------------------------------------------------------------------

class Publisher:
    """One keep-alive HTTP/1.1 connection that POSTs JSON to /notify (or GETs, ``get``)."""

    def __init__(self, port: int, path: str = "/notify", key: str | None = None) -> None:
        self.port = port
        self.path = path
        self.auth = f"Authorization: Bearer {key}\r\n" if key else ""  # a publisher key (NOTIFIER_API_KEYS)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, body: bytes, timeout: float = 10.0) -> int:
        """Status of one publish (0: no answer); reconnects when the server closed the connection."""
        head = (f"POST {self.path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                f"{self.auth}Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        return (await self._exchange(head + body, timeout))[0]

    async def get(self, path: str, token: str, timeout: float = 10.0) -> tuple[int, bytes]:
        """(status, body) of ``GET path`` as the user of ``token`` (0, b"": no answer)."""
        head = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
                f"Authorization: Bearer {token}\r\n\r\n").encode()
        return await self._exchange(head, timeout)

    async def _exchange(self, request: bytes, timeout: float) -> tuple[int, bytes]:
        """Write one request, read its answer (a Content-Length body); reconnects when the
        server closed the connection."""
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(request)
        try:
            raw = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
            status = int(raw[9:12])
            length, close, body = 0, False, b""
            for line in raw.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            if length:
                body = await asyncio.wait_for(self.reader.readexactly(length), timeout)
            if close:
                self.close()
            return status, body
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError, ValueError):
            self.close()
            return 0, b""

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def notification_body(phase: int, seq: int) -> bytes:
    return (b'{"title":"bench","message":"b|%d|%d|%d|"}' % (phase, seq, now_us()))


def user_notification_body(phase: int, seq: int, user: str) -> bytes:
    """For one user (``user_id``): only that user's connections get it."""
    return (b'{"title":"bench","message":"b|%d|%d|%d|","user_id":"%s"}' % (phase, seq, now_us(), user.encode()))


def sync_body(n: int) -> bytes:
    return b'{"title":"bench sync","message":"s|%d|0|0|"}' % n


async def sync(col: Collector, port: int, tries: int = 10, wait: float = 3.0, key: str | None = None) -> int:
    """Publish sync notifications until every open subscriber got one; the number still missing."""
    pub = Publisher(port, key=key)
    try:
        for _ in range(tries):
            col.sync_target += 1
            status = await pub.post(sync_body(col.sync_target))
            if status not in (200, 201, 202):
                col.error(f"sync publish HTTP {status}" if status else "sync publish: no answer")
                if status == 0 and col.errors["sync publish: no answer"] >= 2:
                    break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                missing = sum(1 for s in col.subs if s.state == OPEN and s.synced == 0)
                if missing == 0:
                    return 0
                await asyncio.sleep(0.05)
        return sum(1 for s in col.subs if s.state == OPEN and s.synced == 0)
    finally:
        pub.close()


OK = (200, 201, 202)
GIVE_UP = 3
"""Publishes left unanswered (10 s each) before a phase stops trying: a stuck server must not hang the run."""


async def sync_users(col: Collector, port: int, user_of, spread: float = 15.0, batch: int = 100,
                     tries: int = 5, wait: float = 3.0, key: str | None = None) -> int:
    """Publish a sync notification to each open subscriber's own user (``user_of(index)``)
    until every one got its own; the number still missing.

    Batches (``POST /notify`` with an array of ``batch``) go out evenly over ``spread`` s,
    then again to whoever is still missing. Unlike one broadcast, this confirms each user's
    routing, and it leaves the connections' last writes as spread out as before: notifier
    times each connection's heartbeat from its last write, so after one broadcast to all of
    them, all of them ping at once a heartbeat later (batches of 100 over 15 s: 100 pings
    together every 0.15 s, ~10 ms of a worker's time).
    """
    pub = Publisher(port, key=key)
    loop = asyncio.get_running_loop()
    try:
        for attempt in range(tries):
            missing = [s for s in col.subs if s.state == OPEN and s.synced == 0]
            if not missing:
                return 0
            col.sync_target += 1
            chunks = [missing[i:i + batch] for i in range(0, len(missing), batch)]
            gap = spread / len(chunks) if attempt == 0 else 0.0
            t0 = loop.time()
            for k, chunk in enumerate(chunks):
                delay = t0 + k * gap - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                body = b"[" + b",".join(b'{"title":"bench sync","message":"s|%d|0|0|","user_id":"%s"}'
                                        % (col.sync_target, user_of(s.index).encode()) for s in chunk) + b"]"
                status = await pub.post(body, timeout=30.0)
                if status not in OK:
                    col.error(f"sync publish HTTP {status}" if status else "sync publish: no answer")
            deadline = loop.time() + wait
            while loop.time() < deadline:
                if not any(s.state == OPEN and s.synced == 0 for s in col.subs):
                    return 0
                await asyncio.sleep(0.05)
        return sum(1 for s in col.subs if s.state == OPEN and s.synced == 0)
    finally:
        pub.close()


class Published:
    """What a publish phase sent: accepted seqs, error statuses, first send time, lateness."""

    def __init__(self) -> None:
        self.accepted: list[int] = []
        self.errors: Counter = Counter()
        self.first_us = 0
        self.last_us = 0
        self.worst_late_s = 0.0
        self.unanswered = 0
        self.send_lag = array("q")  # paced: µs from each publish's scheduled time to its send

    def record(self, seq: int, status: int) -> None:
        if status in OK:
            self.accepted.append(seq)
        else:
            if status == 0:
                self.unanswered += 1
            self.errors[f"publish HTTP {status}" if status else "publish: no answer"] += 1


async def publish_burst(col: Collector, port: int, m: int, publishers: int = 4) -> Published:
    """POST ``m`` notifications as fast as ``publishers`` keep-alive connections go."""
    pubs = [Publisher(port) for _ in range(publishers)]
    out = Published()
    phase = col.phase
    out.first_us = now_us()

    async def run(k: int) -> None:
        for seq in range(k, m, publishers):
            if out.unanswered >= GIVE_UP:
                out.errors["publish: not sent (server stopped answering)"] += 1
                continue
            out.record(seq, await pubs[k].post(notification_body(phase, seq)))

    try:
        await asyncio.gather(*(run(k) for k in range(min(publishers, m))))
    finally:
        for p in pubs:
            p.close()
    out.accepted.sort()
    return out


async def publish_paced(col: Collector, port: int, m: int, rate: float, pool: int = 8, key: str | None = None,
                        body=notification_body) -> Published:
    """POST ``m`` notifications at ``rate`` per second on a fixed schedule (not after each answer).

    ``pool`` keep-alive connections; a publish whose time has come waits for a free one, and
    that wait (plus this loop's own lateness) is kept per publish in ``send_lag``: the stamp
    in the body is taken at the send, so a server that answers too slowly for the rate shows
    there, not in the latency. ``body(phase, seq)`` makes each request body.
    """
    free: asyncio.Queue = asyncio.Queue()
    pubs = [Publisher(port, key=key) for _ in range(pool)]
    for p in pubs:
        free.put_nowait(p)
    out = Published()
    phase = col.phase
    loop = asyncio.get_running_loop()
    t0 = loop.time() + 0.05
    tasks = []

    async def one(seq: int, target: float) -> None:
        p = await free.get()
        try:
            if out.unanswered >= GIVE_UP:
                out.errors["publish: not sent (server stopped answering)"] += 1
                return
            out.send_lag.append(int((loop.time() - target) * 1e6))
            data = body(phase, seq)
            out.last_us = now_us()
            out.record(seq, await p.post(data))
        finally:
            free.put_nowait(p)

    try:
        for seq in range(m):
            target = t0 + seq / rate
            delay = target - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            out.worst_late_s = max(out.worst_late_s, loop.time() - target)
            if seq == 0:
                out.first_us = now_us()
            tasks.append(asyncio.ensure_future(one(seq, target)))
        await asyncio.gather(*tasks)
    finally:
        for p in pubs:
            p.close()
    out.accepted.sort()
    return out


async def wait_delivered(col: Collector, stall: float = 10.0, cap: float = 120.0) -> bool:
    """Wait until every expected delivery arrived, or nothing arrived for ``stall`` s, or ``cap``."""
    start = time.monotonic()
    last_count, last_change = -1, time.monotonic()
    while not col.done.is_set():
        try:
            await asyncio.wait_for(col.done.wait(), 0.25)
        except asyncio.TimeoutError:
            pass
        now = time.monotonic()
        if col.received != last_count:
            last_count, last_change = col.received, now
        if now - last_change > stall or now - start > cap:
            return False
    return True


def losses(col: Collector, accepted: list[int]) -> tuple[int, int]:
    """(lost deliveries, subscribers with any loss) over the accepted seqs, among the
    subscribers open when the phase began (one closed since then loses what it missed)."""
    if col.targets is not None:
        missing = [i for i in accepted if not col.got[i]]
        return len(missing), len({col.targets[i] for i in missing})
    lost = subs_with_loss = 0
    everything = len(accepted) == col.m
    for s in col.subs:
        if len(s.got) != col.m or not col.m:
            continue
        missing = s.got.count(0) if everything else sum(1 for i in accepted if not s.got[i])
        if missing:
            lost += missing
            subs_with_loss += 1
    return lost, subs_with_loss


def percentiles(values: array, ps: tuple[float, ...] = (50, 99)) -> dict:
    """Exact percentiles (nearest rank) and max of µs values, in ms."""
    if not values:
        return {f"p{p:g}": None for p in ps} | {"max": None}
    ordered = sorted(values)
    n = len(ordered)
    out = {f"p{p:g}": ordered[min(n - 1, max(0, int(round(p / 100 * n)) - 1))] / 1000 for p in ps}
    out["max"] = ordered[-1] / 1000
    return out


def per_notification(col: Collector) -> list[list]:
    """For each notification: [seq, p50 ms, max ms] over its deliveries — in the paced case
    seq ÷ rate is when it was sent, so slow ones that cluster in time show up."""
    by_seq: dict[int, list[int]] = {}
    for s, v in zip(col.seqs, col.lat):
        by_seq.setdefault(s, []).append(v)
    rows = []
    for s in sorted(by_seq):
        v = sorted(by_seq[s])
        rows.append([s, v[len(v) // 2] / 1000, v[-1] / 1000])
    return rows
