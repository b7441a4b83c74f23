"""The WebSocket session in-process: what simple-websocket sends for the client (a pong)
goes out after the rest of a half-written notification frame, never inside it."""
import base64
import os
import struct
import time

import gevent
from gevent import socket

from notifier.core.hub import Hub
from notifier.core.notification import BROADCAST, Notification, encode_fields, format_id
from notifier.runtime.gevent import GeventRuntime
from notifier.transports.socket_writer import SocketWriter
from notifier.transports.websocket import WIRE, WebSocketSession


def masked_frame(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    return struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload)) + mask + bytes(
        b ^ mask[i % 4] for i, b in enumerate(payload))


def read_frames(sock, count: int) -> list[tuple[int, int]]:
    """(opcode, payload length) of the next ``count`` server frames; raises on a malformed one."""
    buf, frames = b"", []

    def need(n: int) -> None:
        nonlocal buf
        while len(buf) < n:
            data = sock.recv(65536)
            assert data, "connection closed"
            buf += data

    while len(frames) < count:
        need(2)
        b0, b1 = buf[0], buf[1]
        assert b0 & 0x70 == 0 and b0 & 0x0F in (1, 2, 8, 9, 10), f"not a frame start: {buf[:8]!r}"
        n, off = b1 & 0x7F, 2
        if n == 126:
            need(4)
            n, off = struct.unpack("!H", buf[2:4])[0], 4
        elif n == 127:
            need(10)
            n, off = struct.unpack("!Q", buf[2:10])[0], 10
        need(off + n)
        frames.append((b0 & 0x0F, n))
        buf = buf[off + n:]
    return frames


def handshake_environ(server_sock) -> dict:
    return {"gunicorn.socket": server_sock, "HTTP_HOST": "x", "HTTP_UPGRADE": "websocket",
            "HTTP_CONNECTION": "Upgrade", "HTTP_SEC_WEBSOCKET_KEY": base64.b64encode(os.urandom(16)).decode(),
            "HTTP_SEC_WEBSOCKET_VERSION": "13", "HTTP_SEC_WEBSOCKET_EXTENSIONS": "permessage-deflate"}


def accepted_session(small_buffers: bool = False):
    """A WebSocketSession on a real loopback connection, handshake done: (session, writer,
    client socket, listener, the handshake answer)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.socket()
    if small_buffers:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(listener.getsockname())
    server_sock, _ = listener.accept()
    if small_buffers:
        server_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    writer = SocketWriter(GeventRuntime(), 1024, WIRE)
    session = WebSocketSession(writer, handshake_environ(server_sock), max_message_size=65536)
    response = b""
    while b"\r\n\r\n" not in response:
        response += client.recv(1)
    return session, writer, client, listener, response


def test_a_pong_is_sent_after_a_half_written_frame_not_inside_it():
    session, writer, client, listener, response = accepted_session(small_buffers=True)
    assert b"permessage-deflate" not in response.lower()  # never agreed to: costs memory and CPU
    hub = Hub(writer.runtime, flush_interval=0.025)
    hub.subscribe(writer, "ws")
    running = gevent.spawn(session.run, 30, lambda m: {"ok": True})
    try:
        gevent.sleep(0.05)
        assert writer.idle
        big = Notification(format_id(1_700_000_000_000, 1), BROADCAST, "t", encode_fields({"message": "x" * 200_000}))
        small = Notification(format_id(1_700_000_000_000, 2), BROADCAST, "t", encode_fields({"message": "y"}))
        hub._next_flush = time.monotonic() + 0.01  # right after a flush: this one waits for its timer
        hub.dispatch(big)
        hub.dispatch(small)
        client.sendall(masked_frame(9, b"ping"))
        time.sleep(0.05)  # the worker is busy: the flush and the ping are due in the same loop iteration
        with gevent.Timeout(5):
            frames = read_frames(client, 3)
        assert sorted(frames) == sorted([(1, len(big.ws_frame) - 10), (1, len(small.ws_frame) - 2), (10, 4)])
        assert frames[0] == (1, len(big.ws_frame) - 10)  # the big one first, whole
    finally:
        running.kill()
        client.close()
        listener.close()


def test_the_subscriber_is_released_when_writing_stops_not_after_the_close_lingers():
    session, writer, client, listener, _ = accepted_session()
    released = []
    running = gevent.spawn(session.run, 30, lambda m: {}, (), None, lambda: released.append(time.monotonic()))
    try:
        gevent.sleep(0.05)
        closed_at = time.monotonic()
        writer.close(1001, "server shutting down")  # the client stays silent: no close reply
        with gevent.Timeout(5):
            while not released:
                gevent.sleep(0.01)
        assert released[0] - closed_at < 0.5  # before the 2 s linger for the client's reply
        running.join(5)
        assert running.dead
    finally:
        running.kill()
        client.close()
        listener.close()


def test_a_message_in_the_same_read_as_the_close_is_answered_before_the_close():
    session, writer, client, listener, _ = accepted_session()
    running = gevent.spawn(session.run, 30, lambda m: {"ack": m})
    try:
        gevent.sleep(0.02)
        client.sendall(masked_frame(1, b"hello") + masked_frame(8, struct.pack("!H", 1000)))
        with gevent.Timeout(5):
            frames, buf = [], b""
            while len(frames) < 2:
                data = client.recv(65536)
                assert data, "closed before both frames"
                buf += data
                while len(buf) >= 2 and len(buf) >= 2 + (buf[1] & 0x7F):
                    n = buf[1] & 0x7F
                    frames.append((buf[0] & 0x0F, buf[2:2 + n]))
                    buf = buf[2 + n:]
        assert frames[0] == (1, b'{"ack":"hello"}') and frames[1][0] == 8  # the answer, then the close
    finally:
        running.kill()
        client.close()
        listener.close()
