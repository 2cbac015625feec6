"""RemoteCacheEngine: :class:`~lmcache_core.cache_engine.CacheEngine`'s calls, served by a cache server.

Same signatures and :class:`~lmcache_core.cache_engine.CacheResult`s as CacheEngine (store,
lookup, retrieve, poll_stores, wait_stores, stores_in_flight, flush, close), so an engine's
connector swaps one for the other. The KV stays where it is: this process detects the layout,
chooses the backend for the KV's device, and the backend gathers straight into the server's
shared-memory slots (store) or scatters from them (retrieve); messages carry tokens and slot
handles only.

When the server is unreachable (:class:`~lmcache_core.server.client.ServerUnavailable`) or
refuses a lease, a call does nothing and returns an empty result: a lookup misses, a retrieve
loads nothing, a store stores nothing; the engine recomputes and the client reconnects with
back-off. Bad arguments still raise (ValueError/TypeError), as in CacheEngine.

Stores are synchronous here: the gather is waited for on the host before the commit (the server
must never publish a slot still being written).

GPU hosts: when the KV is on a GPU, its backend offers ``ipc()`` (:mod:`lmcache_gpu.ipc`) and
the server announces a GPU backend (hello ``gpu``, protocol minor 1), the KV tensors are
registered by IPC handle (``register_ipc``) and the server moves the bytes itself: a store
records this worker's interprocess event on the current (forward) stream and sends
``store_ipc``; a retrieve sends ``retrieve_ipc`` and makes the current stream wait for the
server's event. Otherwise (or when the registration is refused) the shared-memory path runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lmcache_core.cache_engine import (
    CacheResult,
    KVGroups,
    RegisteredKV,
    _as_groups,
    _nest_like,
    check_slot_groups,
    chunk_views,
    detect_spec,
    hints_per_group,
    kv_fingerprint,
)
from lmcache_core.config import CacheEngineConfig
from lmcache_core.layout import ChunkFormat, KVCacheSpec
from lmcache_core.layout_registry import LayoutHints, flatten_kv_caches
from lmcache_core.server import protocol as p
from lmcache_core.server.client import CacheClient, ServerError, ServerUnavailable
from lmcache_core.tokens import as_token_array

if TYPE_CHECKING:
    import torch

    from lmcache_core.backend import Backend

logger = logging.getLogger(__name__)

#: What a call against an unreachable or refusing server turns into a miss.
_SERVER_FAILURES = (ServerUnavailable, ServerError)


class RemoteCacheEngine(RegisteredKV):
    """One engine rank's cache, kept by the server at ``endpoint``.

    ``config``: the engine's settings (model_id, world_size, rank, cache_salt, backend;
    ``chunk_size``/``l1_bytes``/``l2_*`` are the server's and ignored here). ``chunk_formats``:
    for a process that never sees KV (a scheduler): register with these and look up.
    ``engine``: a name shown in the server's status. ``client``: an existing CacheClient
    (tests, a shared connection); otherwise one is made with ``client_options``.
    """

    def __init__(
        self,
        endpoint: str,
        config: CacheEngineConfig | None = None,
        *,
        backend: Backend | None = None,
        layout_hints: LayoutHints | Sequence[LayoutHints] | None = None,
        chunk_formats: Sequence[ChunkFormat] | None = None,
        engine: str = "",
        client: CacheClient | None = None,
        **client_options: Any,
    ) -> None:
        self.config = config or CacheEngineConfig()
        self.engine_name = engine
        self.client = client or CacheClient(endpoint, name=engine, **client_options)
        self._backend = backend
        self._hints = layout_hints
        self._spec: KVCacheSpec | None = None
        self._formats: tuple[ChunkFormat, ...] | None = tuple(chunk_formats) if chunk_formats else None
        self._registered_formats: tuple[ChunkFormat, ...] | None = None
        self._fingerprint: tuple[Any, ...] | None = None
        self._stream = 0
        self._device: Any = None
        self.failures = 0  # calls turned into misses because of the server
        #: GPU IPC path (None: shared memory): the backend's GpuIpc, this worker's event, the
        #: registration sent, and the server's event opened here (with its handle)
        self._ipc: Any = None
        self._ipc_event: Any = None
        self._ipc_groups: list[p.IpcGroup] | None = None
        self._server_event: Any = None
        self._server_event_handle = b""
        if self._formats:
            self._register(self._formats)

    # ---- set-up ----------------------------------------------------------------------------------

    def _register(self, formats: tuple[ChunkFormat, ...]) -> bool:
        c = self.config
        try:
            self.client.register(
                self.engine_name or c.model_id,
                rank=c.rank,
                world_size=c.world_size,
                model_id=c.model_id,
                formats=formats,
            )
        except _SERVER_FAILURES as e:
            logger.warning("cache server: register failed (%s); serving without the cache for now", e)
            self.failures += 1
            return False
        self._registered_formats = formats
        if self._ipc_groups is not None:  # the new registration closed the server's mapping
            self._send_ipc()
        return True

    @property
    def ipc_active(self) -> bool:
        """Whether stores and retrieves take the GPU IPC path (else shared memory)."""
        return self._ipc is not None and bool(self.client.ipc_event)

    def _backend_ipc(self) -> Any:
        """The chosen backend's GpuIpc, or None when it offers no ``ipc()``."""
        pm = getattr(self.backend, "_pm", None)  # Backend keeps its one plugin there
        plugin = pm.get_plugin(self.backend.name) if pm is not None else None
        ipc = getattr(getattr(plugin, "kernels", None), "ipc", None)
        return ipc() if callable(ipc) else None

    def _setup_ipc(self, groups: list[Any], hints: Sequence[LayoutHints], spec: KVCacheSpec) -> None:
        """Register the KV by IPC handle when the KV is on a GPU whose backend offers ipc() and the
        server has a GPU backend; any refusal leaves the shared-memory path."""
        self._drop_ipc()
        try:
            ipc = self._backend_ipc()
            if ipc is None or not self.client.supports("register_ipc"):
                return
            assert self.client.hello is not None
            if not self.client.hello.gpu:
                logger.info("cache server has no GPU backend: KV moves through shared memory")
                return
            device = int(self._device.index or 0)
            event = ipc.create_event(device)
            descs = []
            for g, h, layout in zip(groups, hints, spec.groups, strict=True):
                per_layer = len(g[0]) if isinstance(g[0], (list, tuple)) else 1
                tensors = []
                for t in flatten_kv_caches(g):
                    e = ipc.export_tensor(t)
                    tensors.append(
                        p.IpcTensor(e.handle, e.offset, e.device, e.dtype, list(e.shape), list(e.strides))
                    )
                ipc_hints = p.IpcHints(
                    kind=layout.kind, num_kv_heads=h.num_kv_heads, head_size=h.head_size, block_size=h.block_size,
                    num_layers=h.num_layers, isa=h.isa, head_size_v=h.head_size_v, variant=h.variant,
                )  # fmt: skip
                descs.append(p.IpcGroup(tensors, ipc_hints, per_layer))
            self._ipc, self._ipc_event = ipc, event
            self._ipc_groups = descs
            self._send_ipc()
        except _SERVER_FAILURES + (RuntimeError,) as e:
            logger.warning(
                "cache server: GPU IPC registration failed (%s); KV moves through shared memory", e
            )
            self._drop_ipc()

    def _send_ipc(self) -> None:
        assert self._ipc_groups is not None
        try:
            self.client.register_ipc(self._ipc_groups, self._ipc.export_event(self._ipc_event))
        except _SERVER_FAILURES as e:
            logger.warning("cache server: register_ipc failed (%s); KV moves through shared memory", e)
            self._drop_ipc()

    def _drop_ipc(self) -> None:
        self._ipc = self._ipc_event = self._server_event = None
        self._ipc_groups = None
        self._server_event_handle = b""

    def _ipc_failed(self, what: str, error: Exception) -> None:
        self._miss(what, error)
        if isinstance(error, ServerError) and error.code in ("no_gpu", "not_registered", "unknown_op"):
            self._drop_ipc()  # the server lost or never had the mapping: shared memory from now

    @staticmethod
    def _slot_bytes(slots: list[Any]) -> list[bytes]:
        """Each group's slot mapping as the int64 LE bytes the IPC ops carry."""
        import numpy as np

        return [np.asarray(sm.cpu().numpy(), dtype="<i8").tobytes() for sm in slots]

    def _ready(self) -> bool:
        """Registered with the server (again, after it came back)."""
        if self._formats is None:
            return False
        if self._registered_formats != self._formats or not self.client.session:
            return self._register(self._formats)
        return True

    def register_kv_caches(
        self, kv_caches: KVGroups, hints: LayoutHints | Sequence[LayoutHints] | None = None
    ) -> KVCacheSpec:
        """Detect each group's layout, choose the backend, register the chunk formats."""
        groups = _as_groups(kv_caches)
        hints = hints if hints is not None else self._hints
        group_hints = hints_per_group(hints, len(groups))
        spec = detect_spec(groups, group_hints)
        first = self._choose_backend(groups, self.config.backend)
        self._open_stream(groups, first)
        formats = tuple(g.chunk_format for g in spec.groups)
        if self._formats is not None and "+".join(f.tag for f in formats) != "+".join(
            f.tag for f in self._formats
        ):
            raise ValueError(
                f"kv_caches: expected chunk format {'+'.join(f.tag for f in self._formats)}, given {spec.tag}"
            )
        self._spec = spec
        self._formats = formats
        self._fingerprint = kv_fingerprint(groups)
        if self._ready() and first.device_type == "cuda" and first.family == "torch":
            self._setup_ipc(groups, group_hints, spec)
        return spec

    def _prepare(
        self, kv_caches: KVGroups, slot_mapping: Any, num_tokens: int
    ) -> tuple[list[list[torch.Tensor]], list[Any]]:
        groups = _as_groups(kv_caches)
        if self._spec is None or kv_fingerprint(groups) != self._fingerprint:
            self.register_kv_caches(groups)
        slots = check_slot_groups(slot_mapping, len(groups), num_tokens)
        return [flatten_kv_caches(g) for g in groups], slots

    def _miss(self, what: str, error: Exception) -> None:
        self.failures += 1
        logger.warning("cache server: %s failed (%s); treated as a miss", what, error)

    # ---- the three operations --------------------------------------------------------------------

    def lookup(self, tokens: Any, *, cache_salt: str | None = None) -> CacheResult:
        """The longest cached prefix of ``tokens`` on the server (L1, then L2 with prefetch)."""
        t0 = time.perf_counter()
        as_token_array(tokens)  # bad input raises here, not on the server
        if not self._ready():
            return CacheResult(seconds=time.perf_counter() - t0)
        salt = cache_salt if cache_salt is not None else self.config.cache_salt
        try:
            r = self.client.lookup(tokens, salt, prefetch=self.config.l2_prefetch)
        except _SERVER_FAILURES as e:
            self._miss("lookup", e)
            return CacheResult(seconds=time.perf_counter() - t0)
        return CacheResult(
            r.tokens, r.nbytes, r.chunks, r.l2_tokens, r.l2_bytes, r.l2_chunks, time.perf_counter() - t0
        )

    def store(
        self,
        tokens: Any,
        kv_caches: KVGroups,
        slot_mapping: Any,
        *,
        cache_salt: str | None = None,
        owner: Any = None,
    ) -> CacheResult:
        """Gather the KV of ``tokens``' chunks not cached yet straight into server slots, then
        publish them. Stops at the first chunk with a ``-1`` slot, or when the server's L1 (or
        the salt's quota) is full."""
        t0 = time.perf_counter()
        arr = as_token_array(tokens)
        groups, slots = self._prepare(kv_caches, slot_mapping, len(arr))
        if not self._ready():
            return CacheResult(seconds=time.perf_counter() - t0)
        stop = len(arr)
        for sm in slots:
            bad = (sm < 0).nonzero()
            if len(bad):
                stop = min(stop, int(bad[0]))
        salt = cache_salt if cache_salt is not None else self.config.cache_salt
        if self.ipc_active:
            try:
                self._ipc.record(self._ipc_event)  # after the forward, on its (current) stream
                done = self.client.store_ipc(arr, self._slot_bytes(slots), salt, stop=stop)
            except _SERVER_FAILURES as e:
                self._ipc_failed("store (IPC)", e)
                return CacheResult(seconds=time.perf_counter() - t0)
            return CacheResult(done.tokens, done.nbytes, done.chunks, seconds=time.perf_counter() - t0)
        try:
            lease = self.client.prepare_store(arr, salt, stop=stop)
        except _SERVER_FAILURES as e:
            self._miss("store", e)
            return CacheResult(seconds=time.perf_counter() - t0)
        if not lease.slots:
            self._end(lease.lease)
            return CacheResult(seconds=time.perf_counter() - t0)
        filled = 0
        try:
            self.backend.order_after_compute(self._stream, self._device)
            for slot in lease.slots:
                views = chunk_views(self.spec, self.client.view(slot), slot.end - slot.start)
                for layout, kv, sm, view in zip(self.spec.groups, groups, slots, views, strict=True):
                    self.backend.gather(layout, kv, sm[slot.start : slot.end], view, 0, self._stream)
                filled += 1
            self.backend.synchronize(self.backend.record_event(self._stream))
        except _SERVER_FAILURES as e:
            self._end(lease.lease)
            self._miss("store", e)
            return CacheResult(seconds=time.perf_counter() - t0)
        except BaseException:
            self._end(lease.lease)
            raise
        try:
            done = self.client.commit_store(lease.lease, filled)
        except _SERVER_FAILURES as e:
            self._miss("store commit", e)
            return CacheResult(seconds=time.perf_counter() - t0)
        return CacheResult(done.tokens, done.nbytes, done.chunks, seconds=time.perf_counter() - t0)

    def _end(self, lease: int) -> None:
        try:
            self.client.release(lease)
        except _SERVER_FAILURES as e:
            logger.debug("release of lease %d: %s", lease, e)

    def retrieve(
        self,
        tokens: Any,
        kv_caches: KVGroups,
        slot_mapping: Any,
        skip_leading_tokens: int = 0,
        *,
        cache_salt: str | None = None,
    ) -> CacheResult:
        """Scatter the server's cached prefix of ``tokens`` into the engine's pages, straight
        from its shared memory. A server that is gone or lets the lease expire while this reads
        makes the result empty (tokens 0): the engine must recompute those tokens."""
        t0 = time.perf_counter()
        if (
            isinstance(skip_leading_tokens, bool)
            or not isinstance(skip_leading_tokens, int)
            or skip_leading_tokens < 0
        ):
            raise ValueError(
                f"skip_leading_tokens: expected a non-negative int, given {skip_leading_tokens!r}"
            )
        arr = as_token_array(tokens)
        groups, slots = self._prepare(kv_caches, slot_mapping, len(arr))
        empty = CacheResult(seconds=0.0, kv_caches=_nest_like(kv_caches, groups))
        if not self._ready():
            return empty
        salt = cache_salt if cache_salt is not None else self.config.cache_salt
        if self.ipc_active:
            return self._retrieve_ipc(arr, kv_caches, groups, slots, skip_leading_tokens, salt, t0)
        try:
            lease: p.PrepareReply = self.client.prepare_retrieve(arr, salt, skip=skip_leading_tokens)
        except _SERVER_FAILURES as e:
            self._miss("retrieve", e)
            return empty
        if not lease.slots:
            self._end(lease.lease)
            return empty
        try:
            self.backend.order_after_compute(self._stream, self._device)
            for slot in lease.slots:
                skip = max(0, skip_leading_tokens - slot.start)
                views = chunk_views(self.spec, self.client.view(slot), slot.end - slot.start)
                for g, (layout, sm, view) in enumerate(zip(self.spec.groups, slots, views, strict=True)):
                    groups[g] = self.backend.scatter(
                        layout, groups[g], sm[slot.start : slot.end], view, skip, self._stream
                    )
            self.backend.synchronize(self.backend.record_event(self._stream))
        except _SERVER_FAILURES as e:  # nothing usable was loaded
            self._end(lease.lease)
            self._miss("retrieve", e)
            return empty
        except BaseException:
            self._end(lease.lease)
            raise
        try:
            done = self.client.commit_retrieve(lease.lease)
        except _SERVER_FAILURES as e:  # the slots may have changed while read: nothing loaded
            self._miss("retrieve commit", e)
            return empty
        l2 = [s for s in lease.slots if s.l2]
        l2_tokens = sum(s.end - max(s.start, skip_leading_tokens) for s in l2)
        return CacheResult(
            done.tokens,
            done.nbytes,
            done.chunks,
            l2_tokens,
            sum(s.nbytes for s in l2),
            len(l2),
            time.perf_counter() - t0,
            kv_caches=_nest_like(kv_caches, groups),
        )

    def _retrieve_ipc(
        self, arr: Any, kv_caches: KVGroups, groups: list[Any], slots: list[Any], skip: int, salt: str | None,
        t0: float,
    ) -> CacheResult:  # fmt: skip
        """The server scatters into the mapped KV; the current stream waits for its event."""
        empty = CacheResult(seconds=0.0, kv_caches=_nest_like(kv_caches, groups))
        try:
            done = self.client.retrieve_ipc(arr, self._slot_bytes(slots), salt, skip=skip)
        except _SERVER_FAILURES as e:
            self._ipc_failed("retrieve (IPC)", e)
            return empty
        handle = self.client.ipc_event
        if handle != self._server_event_handle:
            self._server_event = self._ipc.open_event(handle, int(self._device.index or 0))
            self._server_event_handle = handle
        self._ipc.wait(self._server_event)  # the next forward reads the pages after the scatter
        return CacheResult(
            done.tokens, done.nbytes, done.chunks, seconds=time.perf_counter() - t0,
            kv_caches=_nest_like(kv_caches, groups),
        )  # fmt: skip

    # ---- CacheEngine's other calls ---------------------------------------------------------------

    def poll_stores(self) -> int:
        """Stores complete before :meth:`store` returns: nothing is ever in flight."""
        return 0

    def wait_stores(self) -> int:
        return 0

    def stores_in_flight(self, owner: Any = None) -> int:
        return 0

    def flush(self, timeout: float | None = None) -> bool:
        """Write-behind is the server's; nothing to wait for here."""
        return True

    def server_status(self) -> dict[str, Any]:
        """The server's status document (raises ServerUnavailable when it is unreachable)."""
        return self.client.stats()

    def close(self) -> None:
        if self._ipc_groups is not None:
            try:
                self.client.release_ipc()
            except _SERVER_FAILURES as e:
                logger.debug("release_ipc: %s", e)
            self._drop_ipc()
        if self._backend is not None and self._stream:
            stream, self._stream = self._stream, 0
            self._backend.destroy_stream(stream)
        self.client.close()

    def __enter__(self) -> RemoteCacheEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
