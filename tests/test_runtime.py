"""The runtimes: one per process, a thread scheduler that outlives a failing call, the Redis
follower ending cleanly when stopped and started again on OS threads, and connections on
greenlets of their own waited for."""
import threading
import time

from notifier.brokers.redis import RedisBroker
from notifier.config import Settings
from notifier.core.notification import encode_fields
from notifier.runtime import detect
from notifier.runtime.threads import ThreadRuntime


def test_every_app_of_a_process_shares_one_runtime():
    assert detect() is detect()


def test_the_thread_scheduler_outlives_a_call_that_raises():
    runtime = ThreadRuntime()
    ran = threading.Event()

    def boom():
        raise RuntimeError("a bug in a scheduled call")

    runtime.call_at(time.monotonic(), boom)
    runtime.call_at(time.monotonic() + 0.01, ran.set)
    assert ran.wait(5)


def test_a_follower_stopped_and_started_again_on_threads_delivers_once(redis_server):
    broker = RedisBroker(Settings.load({"REDIS_URL": redis_server.url}), ThreadRuntime())
    got = []
    broker.start(got.append)
    broker.stop()  # its thread is still blocked in XREAD: it must deliver nothing more
    broker.start(got.append)
    time.sleep(0.2)
    broker.publish([("@all", "notification", encode_fields({"title": "once"}))])
    deadline = time.monotonic() + 3  # past the old thread's XREAD block, so it had its chance
    while time.monotonic() < deadline:
        time.sleep(0.1)
        if len(got) > 1:
            break
    time.sleep(0.5)
    broker.stop()
    assert [n.type for n in got] == ["notification"]
    followers = [t for t in threading.enumerate() if t.name.startswith("notifier-_follow")]
    assert len(followers) <= 2  # stopped ones end after their current XREAD (at most BLOCK_MS)


def test_drain_waits_for_the_connections_started_on_greenlets_of_their_own():
    import gevent

    from notifier.runtime.gevent import GeventRuntime

    runtime = GeventRuntime()
    assert runtime.drain(0.01)  # none started: nothing to wait for
    ended = []

    def serve(seconds: float, name: str) -> None:
        gevent.sleep(seconds)
        ended.append(name)

    runtime.start_connection(serve, 0.05, "short")
    runtime.start_connection(serve, 0.2, "long")
    assert not runtime.drain(0.1) and ended == ["short"]  # one still runs
    assert runtime.drain(5) and ended == ["short", "long"]
