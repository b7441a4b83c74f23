"""The hub: registry by key, targeting by dict lookup, and the slow-client policy."""
from notifier.hub import GOING_AWAY, TOO_SLOW, WAKE, Hub
from notifier.notification import BROADCAST, Notification, encode_fields, format_id, user_key


def note(seq: int, target: str = BROADCAST) -> Notification:
    return Notification(format_id(1_700_000_000_000, seq), target, "notification", encode_fields({"title": str(seq)}))


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
    assert hub.dispatch(note(1)) == 3
    assert [[n.id for n in queued(s)] for s in subs] == [[note(1).id]] * 3


def test_topic_notification_reaches_only_its_subscribers():
    hub = Hub()
    orders, other, anon = hub.subscribe("ws", topics=["orders"]), hub.subscribe("ws", topics=["x"]), hub.subscribe("sse")
    assert hub.dispatch(note(1, "orders")) == 1
    assert len(queued(orders)) == 1 and queued(other) == [] and queued(anon) == []


def test_user_notification_reaches_every_connection_of_that_user_only():
    hub = Hub()
    a1, a2, b = hub.subscribe("ws", "alice"), hub.subscribe("sse", "alice"), hub.subscribe("ws", "bob")
    assert hub.dispatch(note(1, user_key("alice"))) == 2
    assert len(queued(a1)) == 1 and len(queued(a2)) == 1 and queued(b) == []


def test_a_public_topic_named_like_a_user_cannot_read_that_user():
    hub = Hub()
    snoop = hub.subscribe("ws", topics=["user:alice"])
    hub.dispatch(note(1, user_key("alice")))
    assert queued(snoop) == []


def test_topics_can_be_added_and_removed_live():
    hub = Hub()
    sub = hub.subscribe("ws")
    hub.add_topic(sub, "news")
    hub.dispatch(note(1, "news"))
    hub.remove_topic(sub, "news")
    hub.dispatch(note(2, "news"))
    assert [n.id for n in queued(sub)] == [note(1).id]


def test_unsubscribe_forgets_the_subscriber_and_empties_the_index():
    hub = Hub()
    sub = hub.subscribe("ws", "alice", ["orders"])
    hub.unsubscribe(sub)
    hub.unsubscribe(sub)  # twice is harmless (transports call it in finally)
    assert len(hub) == 0 and hub._index == {}
    assert hub.dispatch(note(1)) == 0


def test_full_queue_cuts_that_subscriber_without_blocking_or_touching_others():
    hub = Hub(queue_size=3)
    slow, fast = hub.subscribe("ws"), hub.subscribe("sse")
    cut = []
    slow.on_cut = lambda: cut.append(True)
    for seq in range(3):
        hub.dispatch(note(seq))
    queued(fast)  # the fast one keeps reading
    assert hub.dispatch(note(3)) == 1  # the slow one overflowed: cut, not blocked
    assert slow.close_code == TOO_SLOW and cut == [True]
    assert hub.dropped_slow == 1 and len(hub) == 1
    assert [n.id for n in queued(fast)] == [note(3).id]
    hub.dispatch(note(4))
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
    assert hub.dispatch(note(1)) == 1
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
    hub.dispatch(big)
    assert not sub.idle  # the writer takes over
    hub.dispatch(note(2))
    received = peer.recv(1_000_000)
    chunks, _ = drain(sub.queue, sub.queue.get_nowait(), "ws_frame", None)
    assert received + b"".join(chunks) == big.ws_frame + note(2).ws_frame


def test_a_queued_notification_is_never_overtaken_by_a_direct_write():
    import socket

    import notifier.hub as hub_module

    out, peer = socket.socketpair()
    out.setblocking(False)
    hub = Hub()
    sub = hub.subscribe("ws")
    sub.out, sub.idle = out, True
    hub._last_dispatch = 1e18  # a burst: this one goes through the queue
    hub.dispatch(note(1))
    hub._last_dispatch = -hub_module.DIRECT_GAP  # a quiet gap: direct writes allowed again
    hub.dispatch(note(2))  # but the writer has not drained note 1 yet
    peer.setblocking(False)
    try:
        overtaken = peer.recv(65536)
    except BlockingIOError:
        overtaken = b""
    assert overtaken == b""
    assert [n.id for n in queued(sub)] == [note(1).id, note(2).id]
