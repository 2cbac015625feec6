"""Hook specifications every backend plugin implements, grouped by phase.

Each backend's plugin module is registered alone in its own ``pluggy.PluginManager``: each hook
has at most one implementation, registration validates its argument names against these specs
(``pluggy.PluginValidationError`` names the plugin and the hook), and
:class:`lmcache_core.backend.Backend` then calls that one implementation directly, with keyword
arguments, never through pluggy's multi-call. No spec is ``firstresult``: there is no second
implementation to stop at. Each docstring ends with what the core does with the result.

Identity hooks (``lmcache_api_version``) are required. Kernel and device hooks are optional:
whatever a backend leaves out, or does not cover in its :class:`Capabilities`, the core routes to
the reference backend (the ordering hooks of API 1.1 excepted: see each).

Arrays (API 1.2): ``kv_caches`` are torch tensors unless the backend's ``Capabilities.arrays``
declares numpy or JAX arrays (the reference moves torch tensors only). For numpy/JAX KV the core
passes ``slot_mapping`` as a host numpy int64 array and chunks as host numpy arrays of the KV's
dtype. A ``Capabilities.functional`` backend never writes ``kv_caches``: its ``lmcache_scatter``
returns the updated arrays.

Tensor shapes use named axes; sizes are in bytes and counts in elements unless stated. ``layout``
is a :class:`lmcache_core.layout.KVLayout`: it tells the plane pointers
(``kv_caches[plane_tensor[p]]`` at element ``plane_offset[p]``) and the ``(block, token, head,
channel)`` strides. The kernel hooks are reached only through ``Backend``, which has validated
every argument (:mod:`lmcache_core.validation`) before the call; native code checks extents and
slots again for memory safety (``lmcache_core/kv_checks.h``) before it writes a byte.
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


@hookspec
def lmcache_api_version() -> tuple[int, int]:
    """Return the ``(major, minor)`` backend API version the plugin was built against.

    :returns: e.g. :data:`lmcache_core.plugin_api.API_1_0`; the plugin loads when the major
        equals the core's and the minor is at most the core's.

    Required. Called once, when the backend loads; the result decides whether it loads.
    """
    raise NotImplementedError


@hookspec
def lmcache_capabilities() -> Capabilities:
    """Return the layouts and dtypes the backend's kernels cover, and its status text.

    Optional (absent: the backend covers nothing and every kernel call goes to the reference).
    Called once, when the backend loads; the result routes every later kernel call.
    """
    raise NotImplementedError


# ---- kernels -------------------------------------------------------------------------------


@hookspec
def lmcache_gather(
    layout: KVLayout,
    kv_caches: Sequence[torch.Tensor],
    slot_mapping: torch.Tensor,
    out: torch.Tensor,
    skip_prefix: int,
    stream: int,
) -> None:
    """Copy token rows from paged KV into a contiguous chunk (paged KV -> chunk).

    :param layout: the layer group's layout, detected from ``kv_caches``.
    :param kv_caches: the layer group's ``layout.num_tensors`` engine tensors on the KV's device,
        e.g. ``[2, num_blocks, block_size, num_kv_heads, head_size]`` per layer.
    :param slot_mapping: int64 ``[num_tokens]`` on the host or the KV's device, chunk token ->
        slot (``block * block_size + token``); ``-1`` skips the token.
    :param out: contiguous ``[num_kv, num_layers, num_tokens, hidden]`` of the KV dtype
        (``hidden = num_kv_heads * head_size`` elements), on the host or the KV's device. Rows of
        tokens ``< skip_prefix`` and of ``-1`` slots are left untouched.
    :param skip_prefix: tokens ``[0, skip_prefix)`` are not moved (``0 <= skip_prefix <=
        num_tokens``).
    :param stream: opaque stream handle from ``lmcache_new_stream`` (0: the device's current
        stream). The copy may be asynchronous on it; the core records an event after it.

    Optional. Called only for layouts and dtypes the capabilities cover; the result is ignored
    and an exception propagates to the caller (nothing may have been written when it is raised
    before the copy starts).
    """
    raise NotImplementedError


@hookspec
def lmcache_scatter(
    layout: KVLayout,
    kv_caches: Sequence[torch.Tensor],
    slot_mapping: torch.Tensor,
    src: torch.Tensor,
    skip_prefix: int,
    stream: int,
) -> Sequence[Any] | None:
    """Copy token rows from a contiguous chunk into paged KV; the inverse of ``lmcache_gather``.

    :param layout: as for ``lmcache_gather``.
    :param kv_caches: as for ``lmcache_gather``; the tensors written (in place), or, for a
        functional backend (API 1.2), the arrays the result is computed from (never written).
    :param slot_mapping: int64 ``[num_tokens]``, as for ``lmcache_gather``; slots of tokens
        ``< skip_prefix`` and ``-1`` slots are not written.
    :param src: contiguous ``[num_kv, num_layers, num_tokens, hidden]`` of the KV dtype, on the
        host or the KV's device; read only.
    :param skip_prefix: tokens ``[0, skip_prefix)`` are not moved.
    :param stream: opaque stream handle (0: the device's current stream); may be asynchronous.
    :returns: ``None`` (in place), or for a ``Capabilities.functional`` backend the updated KV
        arrays: one per ``kv_caches`` entry, same family, shape, strides, dtype and device, the
        chunk's rows written and every other element equal to the input's.

    Optional. An in-place backend's result is ignored; a functional backend's result is checked
    and returned by ``Backend.scatter`` (and by ``CacheEngine.retrieve`` in
    ``CacheResult.kv_caches``). An exception propagates to the caller.
    """
    raise NotImplementedError


# ---- device memory, streams, events ---------------------------------------------------------


@hookspec
def lmcache_alloc_host(nbytes: int, pinned: bool) -> torch.Tensor:
    """Allocate host memory for chunks.

    :param nbytes: size in bytes (>= 0, checked by the core).
    :param pinned: page-lock the memory where the device supports it (as reported by
        ``Capabilities.pinned_host``).
    :returns: uint8 ``[nbytes]`` tensor in host memory.

    Optional (the reference's: ``torch.empty``). The result becomes an L1 buffer.
    """
    raise NotImplementedError


@hookspec
def lmcache_new_stream(device: Any) -> int:
    """Make a stream for the engine's copies.

    :param device: the ``torch.device`` the KV lives on.
    :returns: an opaque integer handle of a new stream on ``device`` (0: the default stream).

    Optional (the reference's: 0). Called once per engine, at registration; the handle is
    passed to the kernel, event and stream hooks and finally to ``lmcache_destroy_stream``.
    """
    raise NotImplementedError


@hookspec
def lmcache_record_event(stream: int) -> Any:
    """Record an event on ``stream``.

    :param stream: a handle from ``lmcache_new_stream`` or ``lmcache_current_stream`` (0: the
        current stream).
    :returns: an opaque event handle, belonging to ``stream``'s device (never the thread's
        current device).

    Optional (the reference's). The result is passed to ``lmcache_synchronize``,
    ``lmcache_query_event`` and ``lmcache_stream_wait_event``.
    """
    raise NotImplementedError


@hookspec
def lmcache_current_stream(device: Any) -> int:
    """Return the stream the engine computes on for ``device``.

    :param device: the ``torch.device`` of the KV.
    :returns: the handle of torch's current stream of that device (never 0 when the device has
        streams).

    Optional (API 1.1; without it the core uses 0). The core records an event on it after the
    engine enqueued the forward, so that copies wait for the KV they read.
    """
    raise NotImplementedError


@hookspec
def lmcache_stream_wait_event(stream: int, event: Any) -> None:
    """Make ``stream`` wait, on the device and without blocking the host, for ``event``.

    :param stream: the stream that waits; work enqueued on it after this call starts only after
        the event.
    :param event: a handle from ``lmcache_record_event``, possibly of another stream.

    Optional (API 1.1; without it the core waits for the event on the host). The result is
    ignored.
    """
    raise NotImplementedError


@hookspec
def lmcache_query_event(event: Any) -> bool:
    """Whether ``event`` has completed; never blocks.

    :param event: a handle from ``lmcache_record_event``.
    :returns: True when the work before the event completed, False while it is still queued.

    Optional (API 1.1; without it the core waits for the event). The core commits a stored
    chunk to L1 when its copy's event has completed.
    """
    raise NotImplementedError


@hookspec
def lmcache_destroy_stream(stream: int) -> None:
    """Wait for ``stream``'s work, then free it and every buffer the backend keeps for it.

    :param stream: a non-zero handle from ``lmcache_new_stream``.

    Optional (API 1.1). Called once, when the engine that made the stream closes; the result is
    ignored.
    """
    raise NotImplementedError


@hookspec
def lmcache_synchronize(handle: Any) -> None:
    """Block the host until ``handle`` completes.

    :param handle: an event from ``lmcache_record_event``, or a stream handle; ``None``: the
        whole device.

    Optional (the reference's). The result is ignored.
    """
    raise NotImplementedError
