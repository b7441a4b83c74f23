"""The socket writer: the direct-write fast path (only while its loop idles on an empty
queue), the rest of a partial write going on through the queue, and the one drain loop."""
import socket

import gevent

from notifier.core.hub import Hub
from notifier.core.notification import BROADCAST, Notification, encode_fields, format_id
from notifier.runtime.gevent import GeventRuntime
from notifier.runtime.threads import ThreadRuntime
from notifier.transports.socket_writer import SocketWriter


def note(seq: int, size: int = 1) -> Notification:
    return Notification(format_id(1_700_000_000_000, seq), BROADCAST, "t", encode_fields({"message": "x" * size}))


def writer_on_socketpair(runtime=None, wire="ws_frame", sndbuf=None):
    out, peer = socket.socketpair()
    if sndbuf:
        out.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    out.setblocking(False)
    runtime = runtime or GeventRuntime()
    writer = SocketWriter(runtime, 1024, wire)
    writer.attach(out)
    hub = Hub(runtime, flush_interval=0.025)
    hub.subscribe(writer, "ws")
    return hub, writer, peer


def fan_out(hub, *notes):
    for n in notes:
        hub.dispatch(n)
    return hub.flush()


def test_an_idle_writer_gets_notifications_written_straight_to_its_socket():
    hub, writer, peer = writer_on_socketpair()
    writer.idle = True  # as its loop sets it while waiting on an empty queue
    assert fan_out(hub, note(1)) == 1
    assert peer.recv(65536) == note(1).ws_frame
    assert writer.queue.empty() and writer.idle  # no wake-up for the loop


def test_a_direct_write_that_does_not_fit_goes_on_through_the_queue_in_order():
    hub, writer, peer = writer_on_socketpair(sndbuf=4096)
    writer.idle = True
    big = note(1, 500_000)
    fan_out(hub, big)
    assert not writer.idle  # the loop takes over
    fan_out(hub, note(2))
    received = peer.recv(1_000_000)
    drained = next(writer.batches(30, b"", None))
    assert received + drained == big.ws_frame + note(2).ws_frame


def test_a_queued_notification_is_never_overtaken_by_a_direct_write():
    hub, writer, peer = writer_on_socketpair()
    fan_out(hub, note(1))  # the loop is busy: this one goes through the queue
    fan_out(hub, note(2))  # not idle yet (idle is set only once the loop drained its queue)
    peer.setblocking(False)
    try:
        overtaken = peer.recv(65536)
    except BlockingIOError:
        overtaken = b""
    assert overtaken == b""
    assert next(writer.batches(30, b"", None)) == note(1).ws_frame + note(2).ws_frame


def test_the_loop_skips_what_resume_already_sent_and_idles_only_past_the_floor():
    hub, writer, peer = writer_on_socketpair()
    fan_out(hub, note(1), note(2), note(3))
    loop = writer.batches(30, b"keepalive", floor=note(2).id)
    assert next(loop) == note(3).ws_frame
    waiting = gevent.spawn(next, loop)
    gevent.sleep(0.01)
    assert writer.idle  # the floor is passed: direct writes from now on
    writer.close(1000, "bye")
    waiting.join(2)
    assert waiting.dead and writer.closed


def test_a_keepalive_goes_out_when_nothing_comes():
    _, writer, _ = writer_on_socketpair()
    assert next(writer.batches(0.01, b"keepalive")) == b"keepalive"


def test_on_os_threads_the_hub_never_writes_to_the_socket():
    hub, writer, peer = writer_on_socketpair(ThreadRuntime())
    loop = writer.batches(30, b"")
    fan_out(hub, note(1))  # straight into the queue: only the connection's own thread writes
    assert not writer.idle and writer.queue.qsize() == 1
    assert next(loop) == note(1).ws_frame


def test_a_writer_cut_while_waiting_that_then_blocks_on_a_stalled_client_is_shut_out():
    out, peer = socket.socketpair()
    out.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    from gevent import socket as gsocket

    sock = gsocket.socket(fileno=out.detach())
    runtime = GeventRuntime()
    writer = SocketWriter(runtime, 4096, "ws_frame")
    writer.attach(sock)
    hub = Hub(runtime, flush_interval=0.025)
    hub.subscribe(writer, "ws")

    def serve():
        for data in writer.batches(30, b"", floor=note(0).id):  # a resume floor: not idle, all queued
            sock.sendall(data)

    running = gevent.spawn(serve)
    gevent.sleep(0.01)
    assert writer.waiting
    fan_out(hub, *[note(seq, 2000) for seq in range(1, 400)])  # far more than the peer will ever read
    writer.close(1013, "client too slow")
    running.join(CUT_GRACE_BOUND)
    assert running.dead  # shut after the grace period, not stuck in sendall forever
    peer.close()


CUT_GRACE_BOUND = 5.0
