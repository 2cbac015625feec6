"""Device hooks of the ``ascend`` backend: page-locked host memory, streams and events.

:class:`NpuDevice` works through the ``torch.npu`` namespace that ``import torch_npu`` registers
(passed in, so this module never imports torch_npu): ``torch.empty(..., pin_memory=True)`` (ACL
``aclrtMallocHost``), ``torch.npu.Stream`` (handle: its ``npu_stream``, the ``aclrtStream``
address), ``torch.npu.Event``, ``Stream.wait_event``, ``Event.query``. Host waits are on an event
or a stream, never the whole device: ``synchronize(None)`` waits for the streams this backend made
and the current stream, one by one.

:class:`HostDevice` is the same interface for KV in host memory (the torch-ops path's CPU test
switch): plain memory, stream 0, events that are done when recorded.

May assume: torch imports. Must not at import time: import torch_npu or touch a device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


class NpuDevice:
    """Host memory, streams and events of the ``npu`` namespace ``npu`` (``torch.npu``)."""

    def __init__(self, npu: Any) -> None:
        self._npu = npu
        self._streams: dict[int, Any] = {}

    def alloc_host(self, nbytes: int, pinned: bool) -> torch.Tensor:
        """uint8 ``[nbytes]`` host memory, page-locked (``aclrtMallocHost``) when ``pinned``."""
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=pinned)

    def _keep(self, stream: Any) -> int:
        handle = int(stream.npu_stream)
        self._streams.setdefault(handle, stream)
        return handle

    def stream(self, handle: int) -> Any:
        """The ``torch.npu.Stream`` of ``handle`` (0: the current stream)."""
        if handle == 0:
            return self._npu.current_stream()
        try:
            return self._streams[handle]
        except KeyError:
            raise ValueError(
                f"stream: expected 0 or a handle from new_stream/current_stream {sorted(self._streams)}, "
                f"given {handle!r}"
            ) from None

    def new_stream(self, device: Any) -> int:
        return self._keep(self._npu.Stream(device=device))

    def current_stream(self, device: Any) -> int:
        return self._keep(self._npu.current_stream(device))

    @contextlib.contextmanager
    def stream_context(self, handle: int) -> Iterator[None]:
        """Every op inside is enqueued on stream ``handle``."""
        with self._npu.stream(self.stream(handle)):
            yield

    def record_event(self, handle: int) -> Any:
        event = self._npu.Event()
        event.record(self.stream(handle))
        return event

    def stream_wait_event(self, handle: int, event: Any) -> None:
        self.stream(handle).wait_event(event)

    def query_event(self, event: Any) -> bool:
        return bool(event.query())

    def destroy_stream(self, handle: int) -> None:
        stream = self._streams.pop(handle, None)
        if stream is not None:
            stream.synchronize()

    def synchronize(self, handle: Any) -> None:
        """Wait for an event, a stream handle, or (None) every stream this backend knows and the
        current one; never ``torch.npu.synchronize()``."""
        if handle is None:
            for stream in [*self._streams.values(), self._npu.current_stream()]:
                stream.synchronize()
        elif isinstance(handle, int):
            self.stream(handle).synchronize()
        else:
            handle.synchronize()


class HostDevice:
    """The :class:`NpuDevice` interface for KV in host memory: copies finish when the call returns."""

    def alloc_host(self, nbytes: int, pinned: bool) -> torch.Tensor:
        return torch.empty(nbytes, dtype=torch.uint8)

    def new_stream(self, device: Any) -> int:
        return 0

    def current_stream(self, device: Any) -> int:
        return 0

    @contextlib.contextmanager
    def stream_context(self, handle: int) -> Iterator[None]:
        yield

    def record_event(self, handle: int) -> Any:
        return 0  # done: host copies complete before the hook returns

    def stream_wait_event(self, handle: int, event: Any) -> None:
        return None

    def query_event(self, event: Any) -> bool:
        return True

    def destroy_stream(self, handle: int) -> None:
        return None

    def synchronize(self, handle: Any) -> None:
        return None
