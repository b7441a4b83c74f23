"""The hub: registry by key, targeting by dict lookup, and the slow-client policy."""
from notifier.hub import GOING_AWAY, TOO_SLOW, WAKE, Hub
from notifier.notification import BROADCAST, Notification, encode_fields, format_id, user_key


def note(seq: int, target: str = BROADCAST) -> Notification:
    return Notification(format_id(1_700_000_000_000, seq), target, "notification", encode_fields({"title": str(seq)}))


def fan_out(hub: Hub, *notes: Notification) -> int:
    """Dispatch and flush at once (the server flushes from its event loop)."""
    for n in notes:
        hub.dispatch(n)
    return hub.flush()


def queued(sub) -> list:
    items = []
    while not sub.queue.empty():
        item = sub.queue.get_nowait()
        if item is not WAKE:
            items.append(item)
    return items


def test_broadcast_reaches_every_subscriber_once():
    hub = Hub()
    subs = [hub.subscribe("ws"), hub.subscribe("sse", user_id="7"), hub.subscribe("ws", topics=["orders"])]
    assert fan_out(hub, note(1)) == 3
    assert [[n.id for n in queued(s)] for s in subs] == [[note(1).id]] * 3


def test_topic_notification_reaches_only_its_subscribers():
    hub = Hub()
    orders, other, anon = hub.subscribe("ws", topics=["orders"]), hub.subscribe("ws", topics=["x"]), hub.subscribe("sse")
    assert fan_out(hub, note(1, "orders")) == 1
    assert len(queued(orders)) == 1 and queued(other) == [] and queued(anon) == []


def test_user_notification_reaches_every_connection_of_that_user_only():
    hub = Hub()
    a1, a2, b = hub.subscribe("ws", "alice"), hub.subscribe("sse", "alice"), hub.subscribe("ws", "bob")
    assert fan_out(hub, note(1, user_key("alice"))) == 2
    assert len(queued(a1)) == 1 and len(queued(a2)) == 1 and queued(b) == []


def test_a_public_topic_named_like_a_user_cannot_read_that_user():
    hub = Hub()
    snoop = hub.subscribe("ws", topics=["user:alice"])
    fan_out(hub, note(1, user_key("alice")))
    assert queued(snoop) == []


def test_topics_can_be_added_and_removed_live():
    hub = Hub()
    sub = hub.subscribe("ws")
    hub.add_topic(sub, "news")
    fan_out(hub, note(1, "news"))
    hub.remove_topic(sub, "news")
    fan_out(hub, note(2, "news"))
    assert [n.id for n in queued(sub)] == [note(1).id]


def test_unsubscribe_forgets_the_subscriber_and_empties_the_index():
    hub = Hub()
    sub = hub.subscribe("ws", "alice", ["orders"])
    hub.unsubscribe(sub)
    hub.unsubscribe(sub)  # twice is harmless (transports call it in finally)
    assert len(hub) == 0 and hub._index == {}
    assert fan_out(hub, note(1)) == 0


def test_full_queue_cuts_that_subscriber_without_blocking_or_touching_others():
    hub = Hub(queue_size=3)
    slow, fast = hub.subscribe("ws"), hub.subscribe("sse")
    cut = []
    slow.on_cut = lambda: cut.append(True)
    for seq in range(3):
        fan_out(hub, note(seq))
    queued(fast)  # the fast one keeps reading
    assert fan_out(hub, note(3)) == 1  # the slow one overflowed: cut, not blocked
    assert slow.close_code == TOO_SLOW and cut == [True]
    assert hub.dropped_slow == 1 and len(hub) == 1
    assert [n.id for n in queued(fast)] == [note(3).id]
    fan_out(hub, note(4))
    assert len(queued(slow)) == 3  # nothing more was queued for it


def test_close_all_closes_everyone_and_refuses_newcomers():
    hub = Hub()
    subs = [hub.subscribe("ws"), hub.subscribe("sse")]
    assert hub.close_all() == 2
    assert all(s.close_code == GOING_AWAY for s in subs)
    assert all(s.queue.get_nowait() is WAKE for s in subs)
    late = hub.subscribe("ws")
    assert late.closed and len(hub) == 2


def test_counts_by_transport():
    hub = Hub()
    hub.subscribe("ws"), hub.subscribe("ws"), hub.subscribe("sse")
    assert (hub.count(), hub.count("ws"), hub.count("sse")) == (3, 2, 1)


def test_an_idle_subscriber_gets_notifications_written_straight_to_its_socket():
    import socket

    out, peer = socket.socketpair()
    out.setblocking(False)
    hub = Hub()
    sub = hub.subscribe("ws")
    sub.out, sub.idle = out, True
    assert fan_out(hub, note(1)) == 1
    assert peer.recv(65536) == note(1).ws_frame
    assert sub.queue.empty() and sub.idle  # no wake-up for the writer


def test_a_direct_write_that_does_not_fit_goes_on_through_the_queue_in_order():
    import socket

    from notifier.transport import drain

    out, peer = socket.socketpair()
    out.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    out.setblocking(False)
    hub = Hub()
    sub = hub.subscribe("ws")
    sub.out, sub.idle = out, True
    big = Notification(format_id(1_700_000_000_000, 1), BROADCAST, "t", encode_fields({"message": "x" * 500_000}))
    fan_out(hub, big)
    assert not sub.idle  # the writer takes over
    fan_out(hub, note(2))
    received = peer.recv(1_000_000)
    chunks, _ = drain(sub.queue, sub.queue.get_nowait(), "ws_frame", None)
    assert received + b"".join(chunks) == big.ws_frame + note(2).ws_frame


def test_a_queued_notification_is_never_overtaken_by_a_direct_write():
    import socket

    out, peer = socket.socketpair()
    out.setblocking(False)
    hub = Hub()
    sub = hub.subscribe("ws")
    sub.out = out
    fan_out(hub, note(1))  # the writer is busy: this one goes through the queue
    fan_out(hub, note(2))  # not idle yet (idle is set only once the writer drained its queue)
    peer.setblocking(False)
    try:
        overtaken = peer.recv(65536)
    except BlockingIOError:
        overtaken = b""
    assert overtaken == b""
    assert [n.id for n in queued(sub)] == [note(1).id, note(2).id]


def test_a_burst_goes_out_in_one_write_per_subscriber():
    import socket

    pairs = [socket.socketpair() for _ in range(3)]
    hub = Hub()
    subs = [hub.subscribe("ws"), hub.subscribe("sse"), hub.subscribe("ws", topics=["orders"])]
    for sub, (out, _) in zip(subs, pairs):
        out.setblocking(False)
        sub.out, sub.idle = out, True
    subs[1].wire = "sse_chunk"
    notes = [note(1), note(2, "orders"), note(3)]
    assert fan_out(hub, *notes) == 7
    assert pairs[0][1].recv(65536) == notes[0].ws_frame + notes[2].ws_frame
    assert pairs[1][1].recv(65536) == notes[0].sse_chunk + notes[2].sse_chunk
    assert pairs[2][1].recv(65536) == b"".join(n.ws_frame for n in notes)
    assert all(s.idle and s.queue.empty() for s in subs)


def test_dispatch_flushes_from_the_event_loop():
    import gevent

    hub = Hub()
    sub = hub.subscribe("ws")
    hub.dispatch(note(1))
    hub.dispatch(note(2))
    assert queued(sub) == []  # nothing written yet: the flush runs from the loop
    gevent.sleep(0.05)
    assert [n.id for n in queued(sub)] == [note(1).id, note(2).id]
    hub.dispatch(note(3))  # right after a flush: gathered until the gap has passed
    gevent.sleep(0)
    gevent.sleep(0.05)
    assert [n.id for n in queued(sub)] == [note(3).id]


def test_a_dispatch_from_another_os_thread_is_flushed_by_the_hubs_own_loop():
    import threading

    import gevent

    hub = Hub()
    sub = hub.subscribe("ws")
    thread = threading.Thread(target=hub.dispatch, args=(note(1),))
    thread.start()
    thread.join(5)
    gevent.sleep(0.05)
    assert [n.id for n in queued(sub)] == [note(1).id]
    hub.dispatch(note(2))  # and the loop keeps flushing afterwards
    gevent.sleep(0.1)
    assert [n.id for n in queued(sub)] == [note(2).id]
