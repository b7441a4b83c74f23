"""The per-connection send queue on both runtimes: bounded, one waiting reader, woken by
puts or its timeout, never twice."""
import threading
import time

import gevent
import pytest

from notifier.core.send_queue import Empty, Full
from notifier.runtime.gevent import GeventSendQueue
from notifier.runtime.threads import ThreadSendQueue


@pytest.mark.parametrize("queue_class", [GeventSendQueue, ThreadSendQueue])
def test_items_come_out_in_order_and_the_bound_holds(queue_class):
    box = queue_class(2)
    box.put_nowait(1)
    box.put_nowait(2)
    with pytest.raises(Full):
        box.put_nowait(3)
    assert (box.qsize(), box.get_nowait(), box.get(timeout=1), box.empty()) == (2, 1, 2, True)
    with pytest.raises(Empty):
        box.get_nowait()


@pytest.mark.parametrize("queue_class", [GeventSendQueue, ThreadSendQueue])
def test_a_wait_times_out_with_empty(queue_class):
    box = queue_class(4)
    gevent.get_hub().loop.update_now()  # the loop's clock stood still while other tests ran
    started = time.monotonic()
    with pytest.raises(Empty):
        box.get(timeout=0.05)
    assert 0.04 < time.monotonic() - started < 1


def test_a_waiting_greenlet_is_woken_by_a_put():
    box = GeventSendQueue(4)
    reader = gevent.spawn(box.get, 5)
    gevent.sleep(0.01)
    started = time.monotonic()
    box.put_nowait("x")
    assert reader.get(timeout=2) == "x"
    assert time.monotonic() - started < 1


def test_a_waiting_thread_is_woken_by_a_put_from_another_thread():
    box = ThreadSendQueue(4)
    got = []
    reader = threading.Thread(target=lambda: got.append(box.get(5)))
    reader.start()
    time.sleep(0.05)
    started = time.monotonic()
    threading.Thread(target=box.put_nowait, args=("x",)).start()
    reader.join(5)
    assert got == ["x"] and time.monotonic() - started < 1


def test_a_late_wake_up_does_not_wake_the_next_wait():
    box = GeventSendQueue(4)
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
