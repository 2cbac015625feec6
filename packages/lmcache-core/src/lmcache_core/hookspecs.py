"""Hook specifications every backend plugin implements, grouped by phase.

Each backend's plugin module is registered alone in its own ``pluggy.PluginManager``, so each
hook has exactly one implementation per manager; registration validates argument names against
these specs (``pluggy.PluginValidationError`` names the plugin and the hook).

Identity hooks (``lmcache_api_version``) are required. Kernel and device hooks are optional:
whatever a backend leaves out, or does not cover in its :class:`Capabilities`, the core routes to
the reference backend.

Tensor shapes use named axes. ``layout`` is a :class:`lmcache_core.layout.KVLayout`: it tells the
plane pointers (``kv_caches[plane_tensor[p]]`` at element ``plane_offset[p]``) and the
``(block, token, head, channel)`` strides. Every argument has already been validated by the core
(:mod:`lmcache_core.validation`) when a kernel hook is called; native code validates slot indices
and sizes again before it writes a byte.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import torch

    from lmcache_core.layout import KVLayout
    from lmcache_core.plugin_api import Capabilities

PROJECT = "lmcache_core"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# ---- identity ------------------------------------------------------------------------------


@hookspec(firstresult=True)
def lmcache_api_version() -> tuple[int, int]:
    """Return the ``(major, minor)`` backend API version the plugin was built against.

    Required for every backend. Stops at the first non-None result.
    """
    raise NotImplementedError


@hookspec(firstresult=True)
def lmcache_capabilities() -> Capabilities:
    """Return the layouts and dtypes the backend's kernels cover, and its status text.

    Optional (absent: the backend covers nothing and every call goes to the reference).
    Stops at the first non-None result.
    """
    raise NotImplementedError


# ---- kernels -------------------------------------------------------------------------------


@hookspec(firstresult=True)
def lmcache_gather(
    layout: KVLayout,
    kv_caches: Sequence[torch.Tensor],
    slot_mapping: torch.Tensor,
    out: torch.Tensor,
    skip_prefix: int,
    stream: int,
) -> bool | None:
    """Copy token rows from paged KV into a contiguous chunk.

    ``kv_caches``: the layer group's engine tensors, as described by ``layout``.
    ``slot_mapping``: int64 ``[num_tokens]``, token -> slot (``block * block_size + token``);
    ``-1`` means skip that token. ``out``: contiguous ``[num_kv, num_layers, num_tokens, hidden]``
    of the KV dtype. Rows of tokens ``< skip_prefix`` and of ``-1`` slots are left untouched.
    ``stream``: opaque integer stream handle (0 = the device's current stream).
    The copy may be asynchronous on ``stream``.

    Return True when handled. Optional. Stops at the first non-None result.
    """
    raise NotImplementedError


@hookspec(firstresult=True)
def lmcache_scatter(
    layout: KVLayout,
    kv_caches: Sequence[torch.Tensor],
    slot_mapping: torch.Tensor,
    src: torch.Tensor,
    skip_prefix: int,
    stream: int,
) -> bool | None:
    """Copy token rows from a contiguous chunk into paged KV; the inverse of ``lmcache_gather``.

    ``src``: contiguous ``[num_kv, num_layers, num_tokens, hidden]``. Slots of tokens
    ``< skip_prefix`` and ``-1`` slots are not written.

    Return True when handled. Optional. Stops at the first non-None result.
    """
    raise NotImplementedError


# ---- device memory, streams, events ---------------------------------------------------------


@hookspec(firstresult=True)
def lmcache_alloc_host(nbytes: int, pinned: bool) -> torch.Tensor:
    """Allocate ``nbytes`` of host memory as a uint8 tensor ``[nbytes]``.

    With ``pinned`` the memory is page-locked where the device supports it (and reported by
    ``Capabilities.pinned_host``). Optional. Stops at the first non-None result.
    """
    raise NotImplementedError


@hookspec(firstresult=True)
def lmcache_new_stream(device: Any) -> int:
    """Return an opaque integer handle of a new stream on ``device`` (0 = default stream).

    Optional. Stops at the first non-None result.
    """
    raise NotImplementedError


@hookspec(firstresult=True)
def lmcache_record_event(stream: int) -> Any:
    """Record an event on ``stream`` and return it as an opaque handle.

    The event belongs to ``stream``'s device (never the thread's current device).

    Optional. Stops at the first non-None result.
    """
    raise NotImplementedError


@hookspec(firstresult=True)
def lmcache_current_stream(device: Any) -> int:
    """Return the handle of the stream the engine computes on for ``device``: torch's current
    stream of that device (never 0 when the device has streams).

    The core records an event on it after the engine enqueued the forward, so that copies wait
    for the KV they read. Optional (API 1.1). Stops at the first non-None result.
    """
    raise NotImplementedError


@hookspec(firstresult=True)
def lmcache_stream_wait_event(stream: int, event: Any) -> bool | None:
    """Make ``stream`` wait, on the device and without blocking the host, until ``event`` (from
    ``lmcache_record_event``, possibly on another stream) has completed.

    Work enqueued on ``stream`` after this call starts only after the event. Optional (API 1.1;
    without it the core waits for the event on the host). Stops at the first non-None result.
    """
    raise NotImplementedError


@hookspec(firstresult=True)
def lmcache_query_event(event: Any) -> bool | None:
    """Return True when ``event`` has completed, False while work before it is still queued.

    Never blocks. Optional (API 1.1; without it the core waits for the event). Stops at the first
    non-None result.
    """
    raise NotImplementedError


@hookspec(firstresult=True)
def lmcache_destroy_stream(stream: int) -> bool | None:
    """Wait for ``stream``'s work, then free it and every buffer the backend keeps for it.

    Called once, when the engine that made the stream closes. Optional (API 1.1). Stops at the
    first non-None result.
    """
    raise NotImplementedError


@hookspec(firstresult=True)
def lmcache_synchronize(handle: Any) -> bool | None:
    """Block until ``handle`` (an event from ``lmcache_record_event``, or a stream) completes.

    ``None`` handle: the whole device. Optional. Stops at the first non-None result.
    """
    raise NotImplementedError
