"""A real asynchronous backend on the host, for tests: streams are threads, events are flags.

Each stream is a thread running its queue in order; an event is set when its stream reaches it;
``lmcache_stream_wait_event`` queues a wait on the stream. These are the semantics of device
streams (hook API 1.1), with the reference kernels doing the copies, so the CacheEngine's
ordering and deferred commits can be proved on a CPU. Work queued on :data:`COMPUTE` plays the
engine's forward. Imported only by tests.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch

from lmcache_core.backends import reference
from lmcache_core.hookspecs import hookimpl
from lmcache_core.layout import KVLayout
from lmcache_core.plugin_api import Capabilities

COMPUTE = 1  # handle of the compute stream (torch's current stream on a GPU)


class _Stream:
    """A queue of callables run in order by one thread: a device stream on the host."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Callable[[], object] | None] = queue.Queue()
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (fn := self._queue.get()) is not None:
            try:
                fn()
            except BaseException as e:  # kept and raised by the test, like a sticky device error
                self.errors.append(e)
            finally:
                self._queue.task_done()

    def enqueue(self, fn: Callable[[], object]) -> None:
        self._queue.put(fn)

    def idle(self) -> bool:
        return self._queue.unfinished_tasks == 0

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)


class ThreadStreams:
    """Backend hooks (API 1.1) over :class:`_Stream`; kernels are the reference's, run on the stream."""

    def __init__(self, version: tuple[int, int] = (1, 1)) -> None:
        self.version = version
        self.streams: dict[int, _Stream] = {COMPUTE: _Stream()}
        self.fail_gather_call: int | None = None  # raise on this gather call (1-based)
        self.gather_calls = 0

    def close(self) -> None:
        for s in self.streams.values():
            s.close()

    @hookimpl
    def lmcache_api_version(self) -> tuple[int, int]:
        return self.version

    @hookimpl
    def lmcache_capabilities(self) -> Capabilities:
        return Capabilities(status="host threads as streams")

    @hookimpl
    def lmcache_gather(
        self,
        layout: KVLayout,
        kv_caches: Sequence[torch.Tensor],
        slot_mapping: torch.Tensor,
        out: torch.Tensor,
        skip_prefix: int,
        stream: int,
    ) -> bool:
        self.gather_calls += 1
        if self.gather_calls == self.fail_gather_call:
            raise RuntimeError("gather failed (injected)")
        self.streams[stream].enqueue(
            lambda: reference.lmcache_gather(layout, kv_caches, slot_mapping, out, skip_prefix, 0)
        )
        return True

    @hookimpl
    def lmcache_scatter(
        self,
        layout: KVLayout,
        kv_caches: Sequence[torch.Tensor],
        slot_mapping: torch.Tensor,
        src: torch.Tensor,
        skip_prefix: int,
        stream: int,
    ) -> bool:
        self.streams[stream].enqueue(
            lambda: reference.lmcache_scatter(layout, kv_caches, slot_mapping, src, skip_prefix, 0)
        )
        return True

    @hookimpl
    def lmcache_new_stream(self, device: Any) -> int:
        handle = max(self.streams) + 1
        self.streams[handle] = _Stream()
        return handle

    @hookimpl
    def lmcache_current_stream(self, device: Any) -> int:
        return COMPUTE

    @hookimpl
    def lmcache_record_event(self, stream: int) -> Any:
        event = threading.Event()
        self.streams[stream or COMPUTE].enqueue(event.set)
        return event

    @hookimpl
    def lmcache_stream_wait_event(self, stream: int, event: Any) -> bool:
        self.streams[stream].enqueue(event.wait)
        return True

    @hookimpl
    def lmcache_query_event(self, event: Any) -> bool:
        return bool(event.is_set())

    @hookimpl
    def lmcache_destroy_stream(self, stream: int) -> bool:
        self.streams.pop(stream).close()
        return True

    @hookimpl
    def lmcache_synchronize(self, handle: Any) -> bool:
        if not isinstance(handle, threading.Event):
            raise TypeError(f"handle: expected an event from lmcache_record_event, given {handle!r}")
        if not handle.wait(timeout=10):
            raise TimeoutError("event not reached in 10 s")
        return True


class ThreadStreams10(ThreadStreams):
    """The same backend built against hook API 1.0: no wait, query, current- or destroy-stream hook."""

    lmcache_current_stream = None  # type: ignore[assignment]
    lmcache_stream_wait_event = None  # type: ignore[assignment]
    lmcache_query_event = None  # type: ignore[assignment]
    lmcache_destroy_stream = None  # type: ignore[assignment]
