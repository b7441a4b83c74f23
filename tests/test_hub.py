"""The hub on a fake connection: registry by key, targeting by dict lookup, the slow-client
policy, and when flushes run (on gevent's loop, or on the thread runtime's scheduler)."""
import threading
import time

import gevent

from notifier.core.closing import GOING_AWAY, TOO_SLOW
from notifier.core.hub import Hub
from notifier.core.notification import BROADCAST, Notification, encode_fields, format_id, user_key
from notifier.runtime.gevent import GeventRuntime
from notifier.runtime.threads import ThreadRuntime


class FakeConnection:
    """What the hub talks to (``transports.connection.Connection``), keeping what it was offered."""

    def __init__(self, room: int = 1000) -> None:
        self.room = room
        self.got: list[Notification] = []
        self.frames: list[bytes] = []
        self.closed: tuple[int, str] | None = None

    def offer(self, notes, data) -> bool:
        if len(self.got) + len(notes) > self.room:
            return False
        self.got.extend(notes)
        self.frames.append(data["ws_frame"])
        return True

    def close(self, code: int, reason: str) -> None:
        if self.closed is None:
            self.closed = (code, reason)

    def take(self) -> list[str]:
        ids = [n.id for n in self.got]
        self.got = []
        return ids


def note(seq: int, target: str = BROADCAST) -> Notification:
    return Notification(format_id(1_700_000_000_000, seq), target, "notification", encode_fields({"title": str(seq)}))


def make_hub(runtime=None) -> Hub:
    return Hub(runtime or GeventRuntime(), flush_interval=0.025)


def attach(hub: Hub, user_id=None, topics=(), transport="ws", room=1000):
    conn = FakeConnection(room)
    return hub.subscribe(conn, transport, user_id, topics), conn


def fan_out(hub: Hub, *notes: Notification) -> int:
    """Dispatch and flush at once (the server flushes when its runtime says)."""
    for n in notes:
        hub.dispatch(n)
    return hub.flush()


def test_broadcast_reaches_every_subscriber_once():
    hub = make_hub()
    conns = [attach(hub)[1], attach(hub, "7", transport="sse")[1], attach(hub, topics=["orders"])[1]]
    assert fan_out(hub, note(1)) == 3
    assert [c.take() for c in conns] == [[note(1).id]] * 3


def test_topic_notification_reaches_only_its_subscribers():
    hub = make_hub()
    (_, orders), (_, other), (_, anon) = attach(hub, topics=["orders"]), attach(hub, topics=["x"]), attach(hub)
    assert fan_out(hub, note(1, "orders")) == 1
    assert (len(orders.take()), other.take(), anon.take()) == (1, [], [])


def test_user_notification_reaches_every_connection_of_that_user_only():
    hub = make_hub()
    (_, a1), (_, a2), (_, b) = attach(hub, "alice"), attach(hub, "alice", transport="sse"), attach(hub, "bob")
    assert fan_out(hub, note(1, user_key("alice"))) == 2
    assert (len(a1.take()), len(a2.take()), b.take()) == (1, 1, [])


def test_a_public_topic_named_like_a_user_cannot_read_that_user():
    hub = make_hub()
    _, snoop = attach(hub, topics=["user:alice"])
    fan_out(hub, note(1, user_key("alice")))
    assert snoop.take() == []


def test_topics_can_be_added_and_removed_live():
    hub = make_hub()
    sub, conn = attach(hub)
    hub.add_topic(sub, "news")
    fan_out(hub, note(1, "news"))
    hub.remove_topic(sub, "news")
    fan_out(hub, note(2, "news"))
    assert conn.take() == [note(1).id]


def test_unsubscribe_forgets_the_subscriber_and_empties_the_index():
    hub = make_hub()
    sub, _ = attach(hub, "alice", ["orders"])
    hub.unsubscribe(sub)
    hub.unsubscribe(sub)  # twice is harmless (transports call it in finally)
    assert len(hub) == 0 and hub._index == {}
    assert fan_out(hub, note(1)) == 0


def test_a_connection_that_cannot_keep_up_is_cut_without_touching_others():
    hub = make_hub()
    (_, slow), (_, fast) = attach(hub, room=3), attach(hub, transport="sse")
    for seq in range(3):
        fan_out(hub, note(seq))
    fast.take()  # the fast one keeps reading
    assert fan_out(hub, note(3)) == 1  # the slow one refused: cut, not waited for
    assert slow.closed[0] == TOO_SLOW
    assert hub.dropped_slow == 1 and len(hub) == 1
    assert fast.take() == [note(3).id]
    fan_out(hub, note(4))
    assert len(slow.got) == 3  # nothing more was offered to it


def test_a_batch_is_offered_once_per_connection_with_its_frames_joined_once():
    hub = make_hub()
    (_, a), (_, b), (_, orders) = attach(hub), attach(hub), attach(hub, topics=["orders"])
    notes = [note(1), note(2, "orders"), note(3)]
    assert fan_out(hub, *notes) == 7
    assert a.frames == [notes[0].ws_frame + notes[2].ws_frame] and b.frames == a.frames
    assert orders.frames == [b"".join(n.ws_frame for n in notes)]


def test_close_all_closes_everyone_and_refuses_newcomers():
    hub = make_hub()
    conns = [attach(hub)[1], attach(hub, transport="sse")[1]]
    assert hub.close_all() == 2
    assert all(c.closed[0] == GOING_AWAY for c in conns)
    _, late = attach(hub)
    assert late.closed[0] == GOING_AWAY and len(hub) == 2


def test_counts_by_transport():
    hub = make_hub()
    attach(hub), attach(hub), attach(hub, transport="sse")
    assert (hub.count(), hub.count("ws"), hub.count("sse")) == (3, 2, 1)


def test_dispatch_flushes_from_the_event_loop():
    hub = make_hub()
    _, conn = attach(hub)
    hub.dispatch(note(1))
    hub.dispatch(note(2))
    assert conn.got == []  # nothing offered yet: the flush runs from the loop
    gevent.sleep(0.05)
    assert conn.take() == [note(1).id, note(2).id]
    hub.dispatch(note(3))  # right after a flush: gathered until the gap has passed
    gevent.sleep(0)
    gevent.sleep(0.05)
    assert conn.take() == [note(3).id]


def test_a_dispatch_from_another_os_thread_is_flushed_by_the_hubs_own_loop():
    hub = make_hub()
    _, conn = attach(hub)
    thread = threading.Thread(target=hub.dispatch, args=(note(1),))
    thread.start()
    thread.join(5)
    gevent.sleep(0.05)
    assert conn.take() == [note(1).id]
    hub.dispatch(note(2))  # and the loop keeps flushing afterwards
    gevent.sleep(0.1)
    assert conn.take() == [note(2).id]


def test_on_os_threads_the_scheduler_thread_flushes_without_any_event_loop():
    hub = make_hub(ThreadRuntime())
    _, conn = attach(hub)
    for seq in range(3):
        threading.Thread(target=hub.dispatch, args=(note(seq),)).start()
    deadline = time.monotonic() + 5
    while len(conn.got) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(conn.take()) == [note(seq).id for seq in range(3)]
    hub.dispatch(note(9))  # and it goes on flushing
    deadline = time.monotonic() + 5
    while not conn.got and time.monotonic() < deadline:
        time.sleep(0.01)
    assert conn.take() == [note(9).id]


def test_close_all_attached_before_a_moment_leaves_later_ones_and_admits_newcomers():
    hub = make_hub()
    older = attach(hub)[1]
    moment = time.monotonic()
    time.sleep(0.002)
    later = attach(hub)[1]
    assert hub.close_all(1012, "resume", final=False, attached_before=moment) == 1
    assert older.closed[0] == 1012 and not later.closed
    assert len(hub) == 1 and len(attach(hub)[1].frames) == 0 and len(hub) == 2


def test_a_disconnect_closes_every_connection_of_its_user_after_what_came_before_and_is_not_offered():
    from notifier.core.closing import DISCONNECTED
    from notifier.core.notification import DISCONNECT

    hub = make_hub()
    (_, a1), (_, a2), (_, bob) = attach(hub, "alice"), attach(hub, "alice", transport="sse"), attach(hub, "bob")
    end = Notification(format_id(1_700_000_000_000, 9), user_key("alice"), DISCONNECT, encode_fields({"title": ""}))
    assert fan_out(hub, note(1, user_key("alice")), end, note(2)) == 2 + 1  # alice's note to both; the broadcast: bob
    assert a1.take() == a2.take() == [note(1).id] and bob.take() == [note(2).id]
    assert a1.closed[0] == a2.closed[0] == DISCONNECTED and bob.closed is None
    assert len(hub) == 1 and hub.user_connections("alice") == 0
