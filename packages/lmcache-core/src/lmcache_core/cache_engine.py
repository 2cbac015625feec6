"""CacheEngine: store, look up and retrieve a prompt's KV by chunk, over the L1 host pool.

Data path, per chunk of ``chunk_size`` tokens::

    store:    engine pages --gather--> host chunk (L1) --write-behind--> L2 tiers
    lookup:   prefix hashes --> longest run of chunks in L1, then in L2 (tokens); L2 hits
              start prefetching into L1
    retrieve: host chunk (L1, or waited for / loaded from L2) --scatter--> engine pages

Host chunks are one section ``[num_layers, chunk, hidden_k]`` per plane kind (K and V alike:
``[2, num_layers, chunk, hidden]``; :class:`~lmcache_core.layout.ChunkFormat`) per layer group;
a stored chunk holds every group's rows: group 0's chunk, then group 1's, ... in one host buffer. L2 tiers
(``config.l2_urls``, :mod:`lmcache_core.storage`) are optional: store returns once a chunk is in
L1, and an L2 that fails or goes away costs hits, never correctness.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lmcache_core.arrays import ArrayInfo, array_info, torch_twins
from lmcache_core.config import CacheEngineConfig
from lmcache_core.keys import CacheKey, KeyScope, salt_tag
from lmcache_core.layout import ChunkFormat, KVCacheSpec, KVLayout
from lmcache_core.layout_registry import LayoutHints, detect_layout, flatten_kv_caches
from lmcache_core.memory.l1_pool import L1Entry, L1Pool, L1Stats
from lmcache_core.memory.pending import PendingChunk, PendingStores
from lmcache_core.tokens import TokenChunker, as_token_array

if TYPE_CHECKING:
    import torch

    from lmcache_core.backend import Backend
    from lmcache_core.storage.metrics import TierSnapshot
    from lmcache_core.storage.tiers import ChunkRef, L2Tiers

logger = logging.getLogger(__name__)

KVGroups = Sequence["torch.Tensor"] | Sequence[Sequence["torch.Tensor"]]

#: Test-only switch: ``1`` makes copies skip the device-side wait for the engine's compute stream,
#: which reintroduces the race the ordering tests must catch (``make device-check`` proves they do).
SKIP_STREAM_WAIT_ENV = "LMCACHE_TEST_SKIP_STREAM_WAIT"


@dataclass(frozen=True)
class CacheResult:
    """What one :meth:`CacheEngine.store`, :meth:`~CacheEngine.lookup` or
    :meth:`~CacheEngine.retrieve` did: prompt tokens, chunk bytes (every layer group's rows),
    chunks, the part of each that was L2's, and the call's wall time in seconds.

    * store: tokens, bytes and chunks newly queued for copying into L1 (committed when the copy
      completes); L2 receives them later, by write-behind, so the ``l2_*`` fields are 0.
    * lookup: the cached prefix (chunk-granular) and its bytes; ``l2_*``: the chunks of it found
      only in an L2 tier (being prefetched into L1 when ``l2_prefetch``).
    * retrieve: tokens written into the engine's pages (from ``skip_leading_tokens`` to the end of
      the loaded prefix) and the bytes of the chunks scattered; ``l2_*``: the chunks that were not
      in L1 when the call began (loaded from an L2 tier, by a prefetch or by the call itself).
      ``kv_caches``: the engine's KV arrays holding the loaded prefix, nested as passed in (one
      group or a list of groups): the very arrays passed for an in-place backend, new arrays for
      a functional one (``Capabilities.functional``, e.g. immutable JAX arrays), which the engine
      must use from then on. None for store and lookup.

    The ``l1_*`` properties are the rest.
    """

    tokens: int = 0
    nbytes: int = 0
    chunks: int = 0
    l2_tokens: int = 0
    l2_bytes: int = 0
    l2_chunks: int = 0
    seconds: float = 0.0
    kv_caches: Any = field(default=None, compare=False, repr=False)

    @property
    def l1_tokens(self) -> int:
        return self.tokens - self.l2_tokens

    @property
    def l1_bytes(self) -> int:
        return self.nbytes - self.l2_bytes

    @property
    def l1_chunks(self) -> int:
        return self.chunks - self.l2_chunks


@dataclass
class EngineStats:
    """Counters since the engine was made. Tokens are prompt tokens; bytes are chunk bytes."""

    stored_chunks: int = 0
    stored_tokens: int = 0
    stored_bytes: int = 0
    store_skipped_present: int = 0
    store_rejected_full: int = 0
    lookups: int = 0
    lookup_tokens: int = 0
    lookup_hit_tokens: int = 0
    retrieved_chunks: int = 0
    retrieved_tokens: int = 0
    retrieved_bytes: int = 0
    retrieve_misses: int = 0
    lookup_l2_hit_tokens: int = 0
    retrieved_l2_chunks: int = 0
    l2_write_dropped: int = 0


def _as_groups(kv_caches: Any) -> list[list[torch.Tensor]]:
    """One group ``[t0, t1, ...]`` or several ``[[...], [...]]`` -> list of groups."""
    if not isinstance(kv_caches, (list, tuple)) or len(kv_caches) == 0:
        raise TypeError(
            f"kv_caches: expected a non-empty list of tensors (or of per-group lists), "
            f"given {type(kv_caches).__name__}"
        )
    if _is_grouped(kv_caches):
        return [list(g) for g in kv_caches]
    return [list(kv_caches)]


def _is_grouped(kv_caches: Any) -> bool:
    """True for a list of per-group *lists*; False for one group (a list of arrays, or of tuples
    of arrays: one tuple per layer, as Ascend hands over ``(K, V)``)."""
    return isinstance(kv_caches[0], list)


def _first_array(kv_caches: Any) -> Any:
    """The first array of nested lists/tuples of arrays (groups, layers, per-layer tuples)."""
    while isinstance(kv_caches, (list, tuple)):
        kv_caches = kv_caches[0]
    return kv_caches


def hints_per_group(hints: LayoutHints | Sequence[LayoutHints] | None, num_groups: int) -> list[LayoutHints]:
    """``hints`` as one :class:`LayoutHints` per layer group (one for all, or one per group)."""
    if hints is None or isinstance(hints, LayoutHints):
        return [hints or LayoutHints()] * num_groups
    group_hints = list(hints)
    if len(group_hints) != num_groups:
        raise ValueError(
            f"hints: expected one LayoutHints per layer group ({num_groups}), given {len(group_hints)}"
        )
    return group_hints


def detect_spec(groups: list[list[Any]], group_hints: list[LayoutHints]) -> KVCacheSpec:
    """The layout of each layer group; numpy/JAX arrays are detected through metadata-only torch
    twins (same shape and strides)."""
    return KVCacheSpec(
        tuple(detect_layout(torch_twins(g), h) for g, h in zip(groups, group_hints, strict=True))
    )


def check_slot_groups(slot_mapping: Any, num_groups: int, num_tokens: int) -> list[Any]:
    """``slot_mapping`` as a list of one ``[num_tokens]`` slot array per layer group (one array
    stands for one group); ValueError naming ``slot_mapping`` when the count or a shape is off."""
    slots = list(slot_mapping) if isinstance(slot_mapping, (list, tuple)) else [slot_mapping]
    if len(slots) != num_groups:
        raise ValueError(
            f"slot_mapping: expected one int64 tensor per layer group ({num_groups}), given {len(slots)}"
        )
    for i, sm in enumerate(slots):
        if not hasattr(sm, "shape") or len(sm.shape) != 1 or sm.shape[0] != num_tokens:
            shape = tuple(sm.shape) if hasattr(sm, "shape") else type(sm).__name__
            raise ValueError(
                f"slot_mapping[{i}]: expected a 1-D tensor of {num_tokens} slots (one per token), given {shape}"
            )
    return slots


def chunk_views(spec: KVCacheSpec, buffer: torch.Tensor, num_tokens: int) -> list[torch.Tensor]:
    """Each layer group's chunk inside the uint8 ``buffer`` (every group's rows, back to back): the
    typed 4-D ``[num_kv, num_layers, num_tokens, hidden]`` when its sections are alike, else its
    uint8 bytes (the sections back to back, :class:`~lmcache_core.layout.ChunkFormat`)."""
    import torch

    views, offset = [], 0
    for g in spec.groups:
        fmt = g.chunk_format
        n = fmt.nbytes(num_tokens)
        part = buffer[offset : offset + n]
        if fmt.is_uniform:
            part = part.view(getattr(torch, fmt.dtype)).view(fmt.shape(num_tokens))
        views.append(part)
        offset += n
    return views


class RegisteredKV:
    """What an engine front keeps of the KV it registered: the backend chosen for the KV's device,
    the detected :class:`~lmcache_core.layout.KVCacheSpec`, and the device and copy stream.

    The one home of this set-up for :class:`CacheEngine`,
    :class:`~lmcache_core.server.remote.RemoteCacheEngine` and the vLLM worker's
    :class:`~lmcache_core.integrations.vllm.server_engine.ServerEngine`. A subclass sets
    ``_backend`` (None: chosen at the first registration) and ``_spec`` (None) in ``__init__``,
    and ``_device`` (None) and ``_stream`` (0) when it copies on a stream of its own.
    """

    _backend: Backend | None
    _spec: KVCacheSpec | None
    _device: Any
    _stream: int

    @property
    def backend(self) -> Backend:
        """The backend moving KV; chosen for the KV's device at ``register_kv_caches``."""
        if self._backend is None:
            raise RuntimeError("backend: not chosen yet; call register_kv_caches first")
        return self._backend

    @property
    def spec(self) -> KVCacheSpec:
        """The layout of each registered layer group."""
        if self._spec is None:
            raise RuntimeError("spec: no KV caches registered; call register_kv_caches first")
        return self._spec

    def _choose_backend(self, groups: list[list[Any]], wanted: str | None) -> ArrayInfo:
        """Choose the backend for the device and array family of the KV ``groups`` unless one was
        given or chosen before (``wanted``: ``config.backend``); returns the first array's
        :class:`~lmcache_core.arrays.ArrayInfo`."""
        first = array_info(_first_array(groups), "kv_caches[0]")
        if self._backend is None:
            from lmcache_core.selection import select_backend

            selection = select_backend(first.device_type, wanted, first.family)
            self._backend = selection.backend
            logger.info(
                "backend %s (%s) for %s KV on %s",
                self._backend.name,
                selection.why,
                first.family,
                first.device,
            )
        return first

    def _open_stream(self, groups: list[list[Any]], first: ArrayInfo) -> None:
        """At the first registration: the KV's device and a new stream of the backend on it."""
        if self._device is None:
            # torch: the torch.device the stream hooks take; other families: the device in words
            self._device = _first_array(groups).device if first.family == "torch" else first.device
            self._stream = self.backend.new_stream(self._device)


def _flat_arrays(kv_caches: Any) -> list[Any]:
    """Every array of nested lists/tuples, in order."""
    if isinstance(kv_caches, (list, tuple)):
        return [t for item in kv_caches for t in _flat_arrays(item)]
    return [kv_caches]


def kv_fingerprint(groups: list[list[Any]]) -> tuple[tuple[int, tuple[int, ...]], ...]:
    """Address (object id for arrays without one, JAX) and shape of every KV array: what tells a
    front that the engine passes the KV it registered."""
    out = []
    for t in _flat_arrays(groups):
        info = array_info(t, "kv_caches")
        out.append((info.address if info.address is not None else id(t), info.shape))
    return tuple(out)


def _nest_like(kv_caches: Any, groups: list[list[Any]]) -> Any:
    """``groups`` nested as the caller passed ``kv_caches``: a list of groups, or one group."""
    return [list(g) for g in groups] if _is_grouped(kv_caches) else list(groups[0])


def _check_skip(skip_leading_tokens: Any) -> None:
    if (
        isinstance(skip_leading_tokens, bool)
        or not isinstance(skip_leading_tokens, int)
        or skip_leading_tokens < 0
    ):
        raise ValueError(f"skip_leading_tokens: expected a non-negative int, given {skip_leading_tokens!r}")


class CacheEngine(RegisteredKV):
    """Chunked KV cache for one engine process (one tensor-parallel rank).

    ``tokens``: the prompt's token ids (list, numpy or CPU tensor, ``[num_tokens]``).
    ``kv_caches``: the engine's paged KV arrays of one layer group, or a list of groups: torch
    tensors, or numpy/JAX arrays when a backend declares them (:mod:`lmcache_core.arrays`).
    ``slot_mapping``: int64 ``[num_tokens]`` token -> slot (one per group for several groups): a
    torch tensor for torch KV, a host numpy array for numpy/JAX KV.
    With a functional backend, :meth:`retrieve` returns the updated KV arrays in
    :attr:`CacheResult.kv_caches`; later calls take those.

    ``chunk_formats`` lets a process that never sees the KV tensors (an engine's scheduler)
    compute keys and look up; the worker's registered layouts must then have the same formats.
    """

    def __init__(
        self,
        config: CacheEngineConfig | None = None,
        backend: Backend | None = None,
        layout_hints: LayoutHints | Sequence[LayoutHints] | None = None,
        chunk_formats: Sequence[ChunkFormat] | None = None,
    ) -> None:
        self.config = config or CacheEngineConfig()
        self._backend = backend
        self._hints = layout_hints
        self._chunker = TokenChunker(self.config.chunk_size, self.config.save_partial_chunks)
        self._l1: L1Pool | None = None
        self._spec: KVCacheSpec | None = None
        self._spec_tag = "+".join(f.tag for f in chunk_formats) if chunk_formats else None
        self._registered: tuple[tuple[int, tuple[int, ...]], ...] | None = None
        self._scopes: dict[str | None, KeyScope] = {}
        self._stream = 0
        self._device: Any = None
        self._pending = PendingStores()
        self._skip_stream_wait = os.environ.get(SKIP_STREAM_WAIT_ENV, "") == "1"
        if self._skip_stream_wait:
            logger.warning(
                "%s=1: copies do not wait for the forward (test-only; stores may be corrupt)",
                SKIP_STREAM_WAIT_ENV,
            )
        self._lock = threading.Lock()
        self.stats = EngineStats()
        self._formats: tuple[ChunkFormat, ...] | None = tuple(chunk_formats) if chunk_formats else None
        self._tiers: L2Tiers | None = None
        if self.config.l2_urls:  # opened now: lookups need no KV; L1 is attached at registration
            from lmcache_core.storage.tiers import L2Tiers

            c = self.config
            self._tiers = L2Tiers(
                c.l2_urls,
                queue_bytes=c.l2_queue_bytes or max(1, c.l1_bytes // 4),
                queue_items=c.l2_queue_items,
                batch=c.l2_batch,
                workers=c.l2_workers,
            )

    # ---- set-up --------------------------------------------------------------------------------

    def register_kv_caches(
        self, kv_caches: KVGroups, hints: LayoutHints | Sequence[LayoutHints] | None = None
    ) -> KVCacheSpec:
        """Detect the layout of each layer group and choose the backend for the KV's device."""
        groups = _as_groups(kv_caches)
        hints = hints if hints is not None else self._hints
        spec = detect_spec(groups, hints_per_group(hints, len(groups)))
        self._open_stream(groups, self._choose_backend(groups, self.config.backend))
        if self._spec_tag is not None and self._spec_tag != spec.tag:
            raise ValueError(f"kv_caches: expected chunk format {self._spec_tag}, given {spec.tag}")
        self._spec = spec
        self._spec_tag = spec.tag
        self._formats = tuple(g.chunk_format for g in spec.groups)
        self._registered = kv_fingerprint(groups)
        if self._l1 is None:
            backend = self.backend
            pinned = self.config.pinned
            self._l1 = L1Pool(self.config.l1_bytes, lambda n: backend.alloc_host(n, pinned))
            if self._tiers is not None:
                self._tiers.attach_l1(self._l1)
        for g in spec.groups:
            logger.info("layout %s", g.describe())
        return spec

    def _prepare(
        self, kv_caches: KVGroups, slot_mapping: Any, num_tokens: int
    ) -> tuple[list[list[torch.Tensor]], list[torch.Tensor]]:
        groups = _as_groups(kv_caches)
        if self._spec is None or kv_fingerprint(groups) != self._registered:
            self.register_kv_caches(groups)
        slots = check_slot_groups(slot_mapping, len(groups), num_tokens)
        return [flatten_kv_caches(g) for g in groups], slots

    def _scope(self, cache_salt: str | None) -> KeyScope:
        salt = cache_salt if cache_salt is not None else self.config.cache_salt
        scope = self._scopes.get(salt)
        if scope is None:
            if self._spec_tag is None:
                raise RuntimeError("keys: chunk format unknown; register_kv_caches or pass chunk_formats")
            c = self.config
            scope = KeyScope(c.model_id, self._spec_tag, c.world_size, c.rank, salt_tag(salt))
            self._scopes[salt] = scope
        return scope

    def _keys(self, tokens: Any, cache_salt: str | None) -> tuple[int, list[tuple[int, int, CacheKey]]]:
        """``(num_tokens, [(start, end, key), ...])`` for the chunks of ``tokens``."""
        arr = as_token_array(tokens)
        salt = cache_salt if cache_salt is not None else self.config.cache_salt
        scope = self._scope(cache_salt)
        return len(arr), [(s, e, scope.key(h)) for s, e, h in self._chunker.prefix_hashes(arr, salt)]

    def _ref(self, key: CacheKey, num_tokens: int) -> ChunkRef:
        """What the L2 tiers need to know of the chunk ``key`` of ``num_tokens`` tokens."""
        from lmcache_core.storage.tiers import chunk_ref

        return chunk_ref(key, self._spec_tag or "", self._formats or (), num_tokens)

    def _chunk_nbytes(self, num_tokens: int) -> int:
        """Bytes of a chunk of ``num_tokens`` tokens, every layer group (0: formats unknown)."""
        return sum(f.nbytes(num_tokens) for f in self._formats or ())

    # ---- the three operations ----------------------------------------------------------------

    def store(
        self,
        tokens: Any,
        kv_caches: KVGroups,
        slot_mapping: Any,
        *,
        cache_salt: str | None = None,
        owner: Any = None,
        skip_leading_tokens: int = 0,
    ) -> CacheResult:
        """Queue copies of the KV of ``tokens`` out of the engine's pages into L1, chunk by chunk.

        The copies run on the engine's copy stream after everything already enqueued on the
        compute stream of the KV's device (the forward that writes these pages), without blocking
        the host. Each chunk's buffer stays reserved until its copy completes, and is committed to
        L1 (and queued for L2) by :meth:`poll_stores`, which every store, lookup and
        :meth:`wait_stores` call runs; ``owner`` (a request id) names the chunks for
        :meth:`stores_in_flight`. Chunks already cached or in flight are only refreshed. Storing
        stops at the first chunk with a ``-1`` slot (its KV is not in the engine) or when L1 cannot
        make room. Chunks that end at or before ``skip_leading_tokens`` are not stored (their
        slots may be ``-1``): a caller holding only the pages of a prompt's later chunks stores
        those under the keys of the whole prefix. Returns the tokens, bytes and chunks newly
        queued (:class:`CacheResult`).
        """
        t0 = time.perf_counter()
        _check_skip(skip_leading_tokens)
        groups, slots = self._prepare(kv_caches, slot_mapping, len(as_token_array(tokens)))
        _, chunks = self._keys(tokens, cache_salt)
        chunks = [c for c in chunks if c[1] > skip_leading_tokens]
        assert self._l1 is not None
        self.poll_stores()
        stored = stored_bytes = stored_chunks = 0
        ordered = False
        for start, end, key in chunks:
            if self._l1.touch(key) or key in self._pending:
                self.stats.store_skipped_present += 1
                continue
            chunk_slots = [sm[start:end] for sm in slots]
            if any(bool((sm < 0).any()) for sm in chunk_slots):
                break
            nbytes = self.spec.chunk_nbytes(end - start)
            buffer = self._l1.reserve(nbytes)
            if buffer is None:
                self.stats.store_rejected_full += 1
                logger.debug("L1 full (everything pinned or chunk too large); store stops at %d", start)
                break
            if not ordered:  # once per call: the copy stream waits for the forward on the device
                if not self._skip_stream_wait:
                    self.backend.order_after_compute(self._stream, self._device)
                ordered = True
            queued = False
            try:
                for layout, kv, sm, view in zip(
                    self.spec.groups,
                    groups,
                    chunk_slots,
                    chunk_views(self.spec, buffer, end - start),
                    strict=True,
                ):
                    queued = True
                    self.backend.gather(layout, kv, sm, view, 0, self._stream)
                event = self.backend.record_event(self._stream)
            except BaseException:
                if queued:  # a queued copy may still write the buffer: wait before it is reused
                    self._drain_stream()
                self._l1.release(buffer)
                raise
            self._pending.add(PendingChunk(key, buffer, end - start, event, owner))
            self.poll_stores()  # what completed is evictable again (a chunk in flight never is)
            stored += end - start
            stored_bytes += nbytes
            stored_chunks += 1
            with self._lock:
                self.stats.stored_chunks += 1
                self.stats.stored_bytes += nbytes
        with self._lock:
            self.stats.stored_tokens += stored
        return CacheResult(stored, stored_bytes, stored_chunks, seconds=time.perf_counter() - t0)

    def poll_stores(self) -> int:
        """Commit to L1 (and queue for L2) every stored chunk whose copy has completed; never
        blocks. Returns the number of chunks committed."""
        if not len(self._pending):
            return 0
        return self._commit(self._pending.take_done(self.backend.query_event))

    def wait_stores(self) -> int:
        """Wait on the host for every stored chunk's copy, then commit them (close, tests)."""
        chunks = self._pending.take_all()
        for c in chunks:
            self.backend.synchronize(c.event)
        return self._commit(chunks)

    def stores_in_flight(self, owner: Any = None) -> int:
        """Stored chunks whose copy has not been seen complete yet (all, or ``owner``'s)."""
        return self._pending.in_flight(owner)

    def _commit(self, chunks: list[PendingChunk]) -> int:
        assert self._l1 is not None
        tiers = self._tiers
        dropped = 0
        for c in chunks:
            entry = self._l1.commit(c.key, c.buffer, c.num_tokens, pins=tiers.pins_per_store if tiers else 0)
            if tiers is not None:
                dropped += tiers.write_behind(self._ref(c.key, c.num_tokens), entry)
        if dropped:
            with self._lock:
                self.stats.l2_write_dropped += dropped
        return len(chunks)

    def _drain_stream(self) -> None:
        """Wait on the host for everything queued on the copy stream (error paths only)."""
        try:
            self.backend.synchronize(self.backend.record_event(self._stream))
        except Exception:  # the device failed too; the caller's exception is the one to report
            logger.exception("waiting for queued copies after an error failed")

    def lookup(self, tokens: Any, *, cache_salt: str | None = None) -> CacheResult:
        """The longest cached prefix of ``tokens`` (chunk-granular): its tokens, bytes and chunks,
        and the part found only in L2 (prefetched into L1 when ``config.l2_prefetch``)."""
        t0 = time.perf_counter()
        if self._backend is not None:
            self.poll_stores()
        chunks: list[tuple[int, int, CacheKey]] = []
        if self._spec_tag is None:  # nothing registered or declared: nothing can be cached yet
            num_tokens = len(as_token_array(tokens))
        else:
            num_tokens, chunks = self._keys(tokens, cache_salt)
        first_miss = len(chunks)
        for i, (_start, _end, key) in enumerate(chunks):
            if self._l1 is None or key not in self._l1:
                first_miss = i
                break
        run = first_miss
        if first_miss < len(chunks) and self._tiers is not None:
            refs = [self._ref(key, end - start) for start, end, key in chunks[first_miss:]]
            run += self._tiers.found_run(refs, prefetch=self.config.l2_prefetch)
        hit = chunks[run - 1][1] if run else 0
        l1_hit = chunks[first_miss - 1][1] if first_miss else 0
        nbytes = sum(self._chunk_nbytes(e - s) for s, e, _ in chunks[:run])
        l2_bytes = sum(self._chunk_nbytes(e - s) for s, e, _ in chunks[first_miss:run])
        with self._lock:
            self.stats.lookups += 1
            self.stats.lookup_tokens += num_tokens
            self.stats.lookup_hit_tokens += hit
            self.stats.lookup_l2_hit_tokens += hit - l1_hit
        return CacheResult(
            hit, nbytes, run, hit - l1_hit, l2_bytes, run - first_miss, seconds=time.perf_counter() - t0
        )

    def retrieve(
        self,
        tokens: Any,
        kv_caches: KVGroups,
        slot_mapping: Any,
        skip_leading_tokens: int = 0,
        *,
        cache_salt: str | None = None,
    ) -> CacheResult:
        """Scatter the cached prefix of ``tokens`` into the engine's pages.

        Tokens before ``skip_leading_tokens`` are already in the engine and are not written.
        Loading stops at the first chunk not in the cache (nor loadable from L2). Returns the
        tokens written (from ``skip_leading_tokens`` to the end of the loaded prefix), the bytes
        of the chunks scattered, the part that came from L2, and the KV arrays now holding them
        (:attr:`CacheResult.kv_caches`: new arrays with a functional backend) (:class:`CacheResult`).
        """
        t0 = time.perf_counter()
        _check_skip(skip_leading_tokens)
        groups, slots = self._prepare(kv_caches, slot_mapping, len(as_token_array(tokens)))
        _, chunks = self._keys(tokens, cache_salt)
        assert self._l1 is not None
        chunks = [c for c in chunks if c[1] > skip_leading_tokens]
        not_in_l1: set[CacheKey] = set()  # at the start: these come from L2 if they come at all
        if self._tiers is not None:
            tiers = self._tiers
            not_in_l1 = {key for _, _, key in chunks if key not in self._l1}
            missing = next(
                (i for i, c in enumerate(chunks) if c[2] not in self._l1 and not tiers.pending(c[2])), None
            )
            if missing is not None:  # load what L1 lacks while the chunks before it are scattered
                tiers.found_run([self._ref(k, e - s) for s, e, k in chunks[missing:]], prefetch=True)
        loaded = loaded_bytes = loaded_chunks = l2_tokens = l2_bytes = l2_chunks = 0
        ordered = self._skip_stream_wait
        for start, end, key in chunks:
            entry = self._l1.pin(key)
            if entry is None and self._tiers is not None:
                entry = self._fetch(key, end - start)
            if entry is None:
                with self._lock:
                    self.stats.retrieve_misses += 1
                break
            if not ordered:  # the scatter waits for kernels still using these pages
                self.backend.order_after_compute(self._stream, self._device)
                ordered = True
            try:
                skip = max(0, skip_leading_tokens - start)
                views = chunk_views(self.spec, entry.buffer, end - start)
                for g, (layout, sm, view) in enumerate(zip(self.spec.groups, slots, views, strict=True)):
                    # a functional backend returns new arrays: the next chunk goes into those
                    groups[g] = self.backend.scatter(
                        layout, groups[g], sm[start:end], view, skip, self._stream
                    )
                self.backend.synchronize(self.backend.record_event(self._stream))
            except BaseException:
                self._drain_stream()  # a queued scatter still reads the buffer: wait before unpinning
                raise
            finally:
                self._l1.unpin(entry)
            loaded += end - start - skip
            loaded_bytes += entry.nbytes
            loaded_chunks += 1
            if key in not_in_l1:
                l2_tokens += end - start - skip
                l2_bytes += entry.nbytes
                l2_chunks += 1
            with self._lock:
                self.stats.retrieved_chunks += 1
                self.stats.retrieved_bytes += entry.nbytes
        with self._lock:
            self.stats.retrieved_tokens += loaded
        if self.backend.functional and loaded_chunks:  # the engine continues with the new arrays
            self._registered = kv_fingerprint(groups)
        return CacheResult(
            loaded,
            loaded_bytes,
            loaded_chunks,
            l2_tokens,
            l2_bytes,
            l2_chunks,
            time.perf_counter() - t0,
            kv_caches=_nest_like(kv_caches, groups),
        )

    def _fetch(self, key: CacheKey, num_tokens: int) -> L1Entry | None:
        assert self._tiers is not None
        entry = self._tiers.fetch(self._ref(key, num_tokens))
        if entry is not None:
            with self._lock:
                self.stats.retrieved_l2_chunks += 1
        return entry

    # ---- L2 tiers ------------------------------------------------------------------------------

    def l2_stats(self) -> list[TierSnapshot]:
        """Counters, gauges and latency histograms of each L2 tier (empty without L2)."""
        return self._tiers.snapshots() if self._tiers is not None else []

    def register_prometheus(self, registry: Any = None) -> Any:
        """Export :meth:`l2_stats` through prometheus-client (needs ``lmcache-core[metrics]``)."""
        from lmcache_core.storage.metrics import register_prometheus

        return register_prometheus(self.l2_stats, registry)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every chunk queued for L2 is written (or failed); False on time-out."""
        return self._tiers.flush(timeout) if self._tiers is not None else True

    def close(self) -> None:
        """Commit stores in flight, free the copy stream, write what is queued for L2 (up to
        ``config.l2_flush_seconds``) and close the tiers."""
        if self._backend is not None:
            self.wait_stores()
            stream, self._stream = self._stream, 0
            self._backend.destroy_stream(stream)
        if self._tiers is not None:
            self._tiers.close(self.config.l2_flush_seconds)
            self._tiers = None

    def __enter__(self) -> CacheEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def l1_stats(self) -> L1Stats:
        """Counters of the L1 pool (zeroes before the first registration)."""
        if self._l1 is None:
            return L1Stats(capacity_bytes=self.config.l1_bytes)
        return self._l1.stats()

    def layouts(self) -> tuple[KVLayout, ...]:
        return self.spec.groups
