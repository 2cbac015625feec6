"""Daemon worker threads that run a tier's I/O, so that no caller ever waits past a deadline.

A stalled NFS or FUSE mount (or a FIFO, or a frozen server) can block a system call for ever, and
nothing can interrupt it. :class:`IOPool` runs each call on one of its daemon threads; the
caller waits at most its deadline. A call still running then is *abandoned*: its thread is no
longer counted as a worker (a fresh one takes its place), and when the call finally returns the
thread retires or rejoins. At most ``max_stuck`` threads may be abandoned at once; beyond that
:meth:`IOPool.start` refuses with :class:`PoolSaturated` (the tier should then count as down).
Threads are daemons: a thread blocked for ever never keeps the interpreter from exiting, and
:meth:`IOPool.close` returns within its timeout whatever the threads do.

Work that cannot stall (a metadata call on a local file system) need not pay for the hand-off
to a thread (tens of microseconds): inside ``with pool.inline():`` the calls this thread starts
run at once on this thread, with no deadline, and come back as finished calls.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any


class PoolSaturated(RuntimeError):
    """Too many calls of this pool are stuck past their deadline; no new call is started."""


class Call:
    """One call on the pool. ``wait(timeout)`` returns whether it finished; ``abandon()`` gives
    up on a call that has not (True: it was still running and now runs on its own)."""

    __slots__ = ("_done", "_exc", "_pool", "_result", "_state", "fn")

    def __init__(self, pool: IOPool, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self._pool = pool
        self._done = threading.Event()
        self._state = "queued"  # queued -> running -> done; or queued -> cancelled
        self._result: Any = None
        self._exc: BaseException | None = None

    def wait(self, timeout: float | None) -> bool:
        return self._done.wait(timeout)

    def result(self) -> Any:
        """The call's return value (re-raises its exception); only after ``wait`` returned True."""
        if self._exc is not None:
            raise self._exc
        return self._result

    def abandon(self) -> bool:
        return self._pool._abandon(self)

    @property
    def started(self) -> bool:
        """Whether a worker ever took the call (False: it was cancelled while queued)."""
        return self._state in ("running", "done")


class _Ran(Call):
    """A call run on the caller's thread inside :meth:`IOPool.inline`: finished when made."""

    __slots__ = ()

    def __init__(self, pool: IOPool, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self._pool = pool
        self._state = "done"
        self._result = None
        self._exc = None
        try:
            self._result = fn()
        except BaseException as e:  # handed to the caller by Call.result, as from a worker
            self._exc = e

    def wait(self, timeout: float | None) -> bool:
        return True

    def abandon(self) -> bool:
        return False


class _InlineScope:
    """``with``: raise this thread's inline depth on entry, lower it on exit (see IOPool.inline)."""

    __slots__ = ("_here",)

    def __init__(self, here: threading.local) -> None:
        self._here = here

    def __enter__(self) -> None:
        self._here.depth = getattr(self._here, "depth", 0) + 1

    def __exit__(self, *exc: object) -> None:
        self._here.depth -= 1


class IOPool:
    """Up to ``threads`` daemon workers named ``name-<n>``; see the module docstring."""

    def __init__(self, name: str, threads: int, max_stuck: int) -> None:
        self.name = name
        self.threads = threads
        self.max_stuck = max_stuck
        self._cv = threading.Condition()
        self._queue: deque[Call] = deque()
        self._workers = 0  # threads counted as workers (not abandoned)
        self._idle = 0
        self._stuck: set[Call] = set()
        self._all: list[threading.Thread] = []
        self._closed = False
        self._serial = 0
        self._here = threading.local()  # .depth > 0: calls started by this thread run on it
        self._inline_scope = _InlineScope(self._here)

    @property
    def stuck(self) -> int:
        """Calls abandoned past their deadline that have not returned yet."""
        with self._cv:
            return len(self._stuck)

    def inline(self) -> _InlineScope:
        """A context manager: inside it, :meth:`start` and :meth:`run` called by this thread run
        ``fn`` at once on this thread, with no deadline (closed and saturated pools still
        refuse). Only for work that cannot block for long. Nests."""
        return self._inline_scope

    def start(self, fn: Callable[[], Any]) -> Call:
        """Queue ``fn`` on a worker (run it here inside :meth:`inline`); RuntimeError when closed,
        PoolSaturated when too many stuck."""
        if getattr(self._here, "depth", 0):
            if self._closed:
                raise RuntimeError(f"{self.name}: closed")
            if len(self._stuck) >= self.max_stuck:
                raise PoolSaturated(f"{self.name}: {len(self._stuck)} calls stuck past their deadline")
            return _Ran(self, fn)
        call = Call(self, fn)
        with self._cv:
            if self._closed:
                raise RuntimeError(f"{self.name}: closed")
            if len(self._stuck) >= self.max_stuck:
                raise PoolSaturated(f"{self.name}: {len(self._stuck)} calls stuck past their deadline")
            self._queue.append(call)
            if self._idle == 0 and self._workers < self.threads:
                self._workers += 1
                self._serial += 1
                t = threading.Thread(target=self._work, name=f"{self.name}-{self._serial}", daemon=True)
                self._all = [x for x in self._all if x.is_alive()]
                self._all.append(t)
                t.start()
            else:
                self._cv.notify()
        return call

    def run(self, fn: Callable[[], Any], timeout: float) -> tuple[bool, Any]:
        """``(True, result)`` when ``fn`` finished within ``timeout`` seconds, else ``(False, None)``
        with the call abandoned. ``fn``'s exception is re-raised."""
        call = self.start(fn)
        if call.wait(timeout):
            return True, call.result()
        if not call.abandon():
            return True, call.result()  # finished in between
        return False, None

    def _abandon(self, call: Call) -> bool:
        with self._cv:
            if call._state == "done":
                return False
            if call._state == "queued":
                call._state = "cancelled"
                try:
                    self._queue.remove(call)
                except ValueError:
                    pass
                return True
            self._stuck.add(call)
            self._workers -= 1  # its thread no longer counts: a new one may start
            if self._queue and self._idle == 0 and not self._closed:
                self._workers += 1
                self._serial += 1
                t = threading.Thread(target=self._work, name=f"{self.name}-{self._serial}", daemon=True)
                self._all.append(t)
                t.start()
            return True

    def _work(self) -> None:
        while True:
            with self._cv:
                self._idle += 1
                while not self._queue and not self._closed:
                    self._cv.wait()
                self._idle -= 1
                if not self._queue:
                    self._workers -= 1
                    return
                call = self._queue.popleft()
                call._state = "running"
            try:
                call._result = call.fn()
            except BaseException as e:  # handed to the caller by Call.result
                call._exc = e
            with self._cv:
                call._state = "done"
                retire = False
                if call in self._stuck:  # came back after its caller gave up
                    self._stuck.discard(call)
                    if self._workers >= self.threads or self._closed:
                        retire = True
                    else:
                        self._workers += 1
            call._done.set()
            if retire:
                return

    def close(self, timeout: float | None = None) -> bool:
        """Refuse new calls, cancel queued ones, and wait up to ``timeout`` seconds for running
        ones; returns whether every thread has ended. Stuck threads are left to themselves."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            self._closed = True
            for call in self._queue:
                call._state = "cancelled"
                call._exc = RuntimeError(f"{self.name}: closed before the call started")
                call._done.set()
            self._queue.clear()
            self._cv.notify_all()
            threads = list(self._all)
        for t in threads:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            t.join(left)
        return not any(t.is_alive() for t in threads)
