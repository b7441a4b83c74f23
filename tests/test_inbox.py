"""The subscriber's queue: bounded, one waiting reader, woken by puts or its timeout, never twice."""
import time

import gevent
import pytest

from notifier.inbox import Empty, Full, Inbox


def test_items_come_out_in_order_and_the_bound_holds():
    box = Inbox(2)
    box.put_nowait(1)
    box.put_nowait(2)
    with pytest.raises(Full):
        box.put_nowait(3)
    assert (box.qsize(), box.get_nowait(), box.get(timeout=1), box.empty()) == (2, 1, 2, True)
    with pytest.raises(Empty):
        box.get_nowait()


def test_a_waiting_reader_is_woken_by_a_put():
    box = Inbox(4)
    reader = gevent.spawn(box.get, 5)
    gevent.sleep(0.01)
    started = time.monotonic()
    box.put_nowait("x")
    assert reader.get(timeout=2) == "x"
    assert time.monotonic() - started < 1


def test_a_wait_times_out_with_empty():
    box = Inbox(4)
    started = time.monotonic()
    with pytest.raises(Empty):
        box.get(timeout=0.05)
    assert 0.04 < time.monotonic() - started < 1


def test_a_late_wake_up_does_not_wake_the_next_wait():
    box = Inbox(4)
    reader = gevent.spawn(box.get, 5)
    gevent.sleep(0.01)
    box.put_nowait("a")
    box.put_nowait("b")  # a second wake-up for the same wait is scheduled too
    assert reader.get(timeout=2) == "a"
    assert box.get(timeout=1) == "b"
    started = time.monotonic()
    with pytest.raises(Empty):  # neither stale wake-up ends this wait early
        box.get(timeout=0.1)
    assert time.monotonic() - started >= 0.09
