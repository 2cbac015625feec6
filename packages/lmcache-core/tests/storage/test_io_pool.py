"""IOPool: calls blocked in a real system call (open of a FIFO nobody writes) are abandoned at
their deadline, the pool keeps serving, and close() returns within its timeout."""

import os
import threading
import time

import pytest

from lmcache_core.storage.io_pool import IOPool, PoolSaturated


def release(fifo):
    """Open the FIFO for writing: every reader blocked in open() returns."""
    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    os.close(fd)


def test_a_hung_call_is_abandoned_and_the_pool_keeps_serving(tmp_path):
    fifo = tmp_path / "hung"
    os.mkfifo(fifo)
    pool = IOPool("t", threads=2, max_stuck=2)
    try:
        t0 = time.monotonic()
        finished, _ = pool.run(lambda: open(fifo, "rb").close(), 0.3)  # blocks in open(2)
        assert not finished and 0.3 <= time.monotonic() - t0 < 2.0
        assert pool.stuck == 1
        assert pool.run(lambda: 6 * 7, 1.0) == (True, 42)  # a fresh thread took the hung one's place
        finished, _ = pool.run(lambda: open(fifo, "rb").close(), 0.2)
        assert not finished and pool.stuck == 2
        with pytest.raises(PoolSaturated, match="2 calls stuck"):
            pool.start(lambda: None)
        release(fifo)  # the mount "comes back": the stuck calls return and their threads rejoin
        deadline = time.monotonic() + 5
        while pool.stuck and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pool.stuck == 0 and pool.run(lambda: "ok", 1.0) == (True, "ok")
    finally:
        pool.close(1.0)


def test_close_returns_within_its_timeout_whatever_threads_do(tmp_path):
    fifo = tmp_path / "hung"
    os.mkfifo(fifo)
    pool = IOPool("t", threads=1, max_stuck=4)
    started = threading.Event()

    def hang():
        started.set()
        open(fifo, "rb").close()

    call = pool.start(hang)
    assert started.wait(5)
    queued = pool.start(lambda: "never")
    t0 = time.monotonic()
    assert pool.close(0.3) is False  # the hung thread is still there
    assert time.monotonic() - t0 < 1.5
    assert queued.wait(0) and not call.wait(0)
    with pytest.raises(RuntimeError, match="closed before the call started"):
        queued.result()
    with pytest.raises(RuntimeError, match="closed"):
        pool.start(lambda: None)
    release(fifo)
    assert call.wait(5) and call.result() is None


def test_exceptions_reach_the_caller():
    pool = IOPool("t", threads=1, max_stuck=1)
    with pytest.raises(ZeroDivisionError):
        pool.run(lambda: 1 // 0, 1.0)
    pool.close(1.0)


def test_inline_calls_run_on_the_callers_thread_and_nest(tmp_path):
    pool = IOPool("t", threads=1, max_stuck=1)
    me = threading.current_thread().name
    try:
        assert pool.run(lambda: threading.current_thread().name, 1.0) == (True, "t-1")
        with pool.inline():
            call = pool.start(lambda: threading.current_thread().name)
            assert call.started and call.wait(0) and not call.abandon() and call.result() == me
            with pool.inline():
                assert pool.run(lambda: threading.current_thread().name, 1.0) == (True, me)
            assert pool.run(lambda: threading.current_thread().name, 1.0) == (True, me)
            with pytest.raises(ZeroDivisionError):
                pool.run(lambda: 1 // 0, 1.0)
            names = []  # another thread's calls still go to the workers
            other = threading.Thread(
                target=lambda: names.append(pool.run(threading.current_thread, 1.0)[1].name)
            )
            other.start()
            other.join(5)
            assert names == ["t-1"]
        assert pool.run(lambda: threading.current_thread().name, 1.0) == (True, "t-1")
    finally:
        pool.close(1.0)


def test_inline_calls_are_refused_by_a_saturated_or_closed_pool(tmp_path):
    fifo = tmp_path / "hung"
    os.mkfifo(fifo)
    pool = IOPool("t", threads=1, max_stuck=1)
    ran = []
    try:
        assert pool.run(lambda: open(fifo, "rb").close(), 0.2) == (False, None)
        with pool.inline(), pytest.raises(PoolSaturated, match="1 calls stuck"):
            pool.start(lambda: ran.append(1))
        release(fifo)
        deadline = time.monotonic() + 5
        while pool.stuck and time.monotonic() < deadline:
            time.sleep(0.01)
        with pool.inline():
            assert pool.run(lambda: ran.append(2), 1.0) == (True, None)
    finally:
        pool.close(1.0)
    with pool.inline(), pytest.raises(RuntimeError, match="closed"):
        pool.start(lambda: ran.append(3))
    assert ran == [2]
