"""The contract notifier's WebSocket adapter holds simple-websocket to.

``notifier/transports/wsadapter.py`` is the one place that uses simple-websocket's
internals; this test fails if the installed library no longer behaves as the adapter
expects, or falls outside the range pyproject.toml pins.
"""
import base64
import os
import re
import socket
import struct
import threading
import time
from importlib.metadata import version
from pathlib import Path

from packaging.specifiers import SpecifierSet

from notifier.transports import wsadapter

ROOT = Path(__file__).resolve().parent.parent


def masked_frame(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    return struct.pack("!BB", 0x80 | opcode, 0x80 | len(payload)) + mask + bytes(
        b ^ mask[i % 4] for i, b in enumerate(payload))


def connected_pair():
    server, client = socket.socketpair()
    client.settimeout(5)
    environ = {"gunicorn.socket": server, "HTTP_HOST": "x", "HTTP_UPGRADE": "websocket",
               "HTTP_CONNECTION": "Upgrade", "HTTP_SEC_WEBSOCKET_KEY": base64.b64encode(os.urandom(16)).decode(),
               "HTTP_SEC_WEBSOCKET_VERSION": "13", "HTTP_SEC_WEBSOCKET_EXTENSIONS": "permessage-deflate"}
    return environ, server, client


def read_handshake(client) -> bytes:
    response = b""
    while b"\r\n\r\n" not in response:
        response += client.recv(1)
    return response


def test_the_installed_simple_websocket_is_in_the_range_pyproject_pins():
    pin = re.search(r'"simple-websocket([^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert version("simple-websocket") in SpecifierSet(pin)
    assert SpecifierSet(pin) == SpecifierSet(">=1.1,<1.2")  # the range this file was written against


def test_with_an_own_reader_no_thread_starts_and_fed_bytes_become_messages_and_replies():
    environ, server, client = connected_pair()
    threads_before = threading.active_count()
    ws, lingering = wsadapter.accept(environ, max_message_size=100, own_reader=True)
    assert b"101" in read_handshake(client)
    assert threading.active_count() == threads_before and ws.mode == "gunicorn"
    assert environ["gunicorn.socket"] is lingering and lingering.sock is server
    assert ws.environ is None and ws.ws.handshake is wsadapter.DONE  # only the handshake needed them
    client.sendall(masked_frame(1, b'{"a":1}') + masked_frame(9, b"hi"))
    time.sleep(0.05)
    server.setblocking(False)
    replies, gone = wsadapter.read_available(ws, lingering, server)
    assert not gone
    assert replies == [b"\x8a\x02hi"]  # the pong, kept for the writer to send
    assert wsadapter.pending(ws) == 1 and wsadapter.take_messages(ws, 16) == ['{"a":1}']
    client.sendall(masked_frame(1, b"x" * 120))  # over max_message_size: the library answers 1009
    time.sleep(0.05)
    replies, gone = wsadapter.read_available(ws, lingering, server)
    assert gone and replies and replies[0][:1] == b"\x88" and replies[0][2:4] == b"\x03\xf1"  # close, 1009
    client.close()


def test_a_close_from_the_client_is_answered_and_seen():
    environ, server, client = connected_pair()
    ws, lingering = wsadapter.accept(environ, max_message_size=100, own_reader=True)
    read_handshake(client)
    client.sendall(masked_frame(8, struct.pack("!H", 1000)))
    time.sleep(0.05)
    server.setblocking(False)
    replies, gone = wsadapter.read_available(ws, lingering, server)
    assert gone and not ws.connected and ws.close_reason == 1000
    assert replies and replies[0][:1] == b"\x88"
    client.close()


def test_with_the_librarys_reader_thread_a_message_wakes_the_writer():
    environ, server, client = connected_pair()
    ws, lingering = wsadapter.accept(environ, max_message_size=100, own_reader=False)
    read_handshake(client)
    woken = threading.Event()
    flooded = threading.Event()
    wsadapter.on_message(ws, woken.set, 3, flooded.set)
    client.sendall(masked_frame(1, b"hello"))
    assert woken.wait(5)
    assert wsadapter.take_messages(ws, 16) == ["hello"]
    client.sendall(b"".join(masked_frame(1, b"m%d" % i) for i in range(10)))  # unanswered: a flood
    assert flooded.wait(5)
    ws.thread.join(5)
    assert not ws.thread.is_alive() and wsadapter.pending(ws) <= 3  # the reader stopped reading
    rest = b""
    while True:  # and the connection ends (a development server's cut: no close frame)
        data = client.recv(65536)
        if not data:
            break
        rest += data
    assert len(rest) < 1000
    client.close()


def test_the_response_after_a_connection_tells_gunicorn_it_is_handled():
    environ, server, client = connected_pair()
    ws, _ = wsadapter.accept(environ, max_message_size=100, own_reader=True)
    try:
        wsadapter.Finished(ws)(environ, lambda *a: None)
    except StopIteration:
        pass
    else:
        raise AssertionError("gunicorn must be told by StopIteration")
    client.close()
