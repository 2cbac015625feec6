"""lmcache-core behind tpu-inference's host chunk store.

tpu-inference 0.32.0's offload worker (``TPUOffloadConnectorWorker``) keeps every saved KV page in
``LocalCPUBackend`` (``tpu_inference/offload/cpu_backend.py``): a dict from *slot ids*
(``CpuChunkId``, ``0 .. TPU_OFFLOAD_NUM_CPU_CHUNKS - 1``) to host arrays, while the scheduler's
``LRUCacheManager`` maps vLLM block hashes to those slots. :class:`LMCacheCPUBackend` has the same
methods and signatures, and keeps the pages in lmcache-core's L1 and L2 tiers instead, under
lmcache-core keys, so another host sharing an L2 tier (fs, redis, S3) hits them.

Keys. A slot id says nothing about content, and the block hashes stay in the scheduler. The
worker does know the content, though: every work order (``TPUReqMeta``) carries the request's
``token_ids`` from position 0 and its ``local_block_ids``, so block ``b`` of a request holds the
KV of ``token_ids[: (b + 1) * page_size]``. :func:`bind_requests` binds each slot of the step's
saves and loads to that token prefix before the worker touches the backend; ``add`` and ``get``
then use lmcache-core's content key of the prefix (model, chunk format, tensor-parallel rank,
chained prefix hash; one chunk = one page). Keys do not depend on vLLM's ``BlockHash`` (whose seed
differs between hosts unless ``PYTHONHASHSEED`` is fixed) nor on the paging layout.

Cross-host hits. A fresh host's ``LRUCacheManager`` knows none of another host's pages. Before
the scheduler's prefix match, :func:`adopt_l2_hits` gives the blocks that lmcache-core finds in
L2 (past the local hits) slots of their own, marked saved, so the unchanged matching and load
planning take them; the worker then ``get``\\s them from L2.

Values. A chunk is one page of every layer: ``[1, num_layers, page_size, G, p, Dp]`` (the
``tpu_inference`` layout's page, padding included), a host JAX array or numpy array. ``add``
stores its real channels (K and V de-interleaved: lmcache-core's chunk format); ``get`` returns a
numpy page of the same shape and dtype with the stored channels and zero padding (tpu-inference's
KV padding is zero), which the worker ``jax.device_put``\\s to the device as before. A page that is
not in L1 or L2 (evicted, corrupt) is a miss: ``None``, or with ``fill_misses`` a zero page
whose destination blocks :func:`load_error_blocks` reports, so vLLM recomputes them.

Limits: one chunk per page (tpu-inference's ``cpu_chunk_size == block_size``); one KV shape
group (hybrid models' list values are refused); every shard addressable from this process
(single-host); keys from token ids only, so requests whose KV depends on more than the tokens
(LoRA, multimodal inputs) must not share a model id.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from lmcache_core.cache_engine import CacheEngine
from lmcache_core.config import CacheEngineConfig
from lmcache_core.layout_registry import LayoutHints

#: The methods and properties of tpu-inference 0.32.0's ``LocalCPUBackend`` this class provides.
INTERFACE = ("add", "get", "reclaim_unoccupied_chunks", "num_saved_cpu_chunks")


def _page_hints(hints: LayoutHints) -> tuple[int, int, int, int]:
    """``(num_layers, block_size, num_kv_heads, head_size)`` of ``tpu_inference`` hints."""
    values = (hints.num_layers, hints.block_size, hints.num_kv_heads, hints.head_size)
    if hints.kind != "tpu_inference" or any(v is None for v in values):
        raise ValueError(
            "hints: expected kind 'tpu_inference' with num_layers, block_size, num_kv_heads and "
            f"head_size, given {hints}"
        )
    layers, block, heads, size = (int(v) for v in values if v is not None)
    return layers, block, heads, size


class LMCacheCPUBackend:
    """Drop-in for ``LocalCPUBackend(num_cpu_chunks)``: slots ``0 .. num_cpu_chunks - 1`` whose
    pages live in lmcache-core's L1 and L2 (``config``: L1 budget, ``l2_urls``, ``model_id``).

    Call :meth:`set_layout` when the KV is known (the connector does at ``register_runner``),
    and :meth:`bind` (or :func:`bind_requests`) before each slot's ``add``/``get``.
    """

    def __init__(self, num_cpu_chunks: int, *, config: CacheEngineConfig | None = None) -> None:
        if isinstance(num_cpu_chunks, bool) or not isinstance(num_cpu_chunks, int) or num_cpu_chunks < 1:
            raise ValueError(f"num_cpu_chunks: expected a positive int, given {num_cpu_chunks!r}")
        self.max_num_cpu_chunks = num_cpu_chunks
        #: slot id -> the token prefix (int64) the page stored there belongs to
        self.cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self.current_size_bytes = 0
        self.fill_misses = False
        self.load_errors: set[int] = set()
        self._config = config or CacheEngineConfig()
        self._bound: dict[int, np.ndarray] = {}
        self._engine: CacheEngine | None = None
        self._page: np.ndarray | None = None
        self._lock = threading.Lock()

    # ---- set-up -----------------------------------------------------------------------------

    def set_layout(self, hints: LayoutHints, page_shape: Sequence[int], dtype: Any) -> None:
        """The KV's layout: ``hints`` (kind ``tpu_inference``), one layer's page shape
        ``[page_size, G, p, Dp]`` and its numpy dtype (``ml_dtypes.bfloat16``, ...)."""
        layers, block, _, _ = _page_hints(hints)
        shape = tuple(int(n) for n in page_shape)
        if len(shape) != 4 or shape[0] != block:
            raise ValueError(f"page_shape: expected [page_size={block}, G, p, Dp], given {list(shape)}")
        dt = np.dtype(dtype)
        config = dataclasses.replace(self._config, chunk_size=block, save_partial_chunks=False)
        with self._lock:
            if self._engine is not None:
                self._engine.close()
            self._page = np.zeros((1, layers, *shape), dtype=dt)
            self._engine = CacheEngine(config, layout_hints=hints)

    def close(self) -> None:
        """Flush L2 writes and close lmcache-core's engine."""
        with self._lock:
            if self._engine is not None:
                self._engine.close()
                self._engine = None

    def bind(self, chunk_id: int, token_ids: Sequence[int] | np.ndarray, end: int) -> None:
        """Slot ``chunk_id`` holds (or is about to hold) the page of ``token_ids[end - page_size:
        end]``, whose key is lmcache-core's key of ``token_ids[:end]``."""
        self._check_id(chunk_id)
        page = self._page_size()
        tokens = np.asarray(token_ids, dtype=np.int64)
        if end < page or end % page or end > len(tokens):
            raise ValueError(
                f"end: expected a multiple of page_size {page} in [{page}, {len(tokens)}], given {end}"
            )
        self._bound[chunk_id] = tokens[:end].copy()

    # ---- LocalCPUBackend's interface ----------------------------------------------------------

    @property
    def num_saved_cpu_chunks(self) -> int:
        return len(self.cache)

    def add(self, chunk_id: int, value: Any) -> bool:
        """Store the page ``value`` (``[1, num_layers, page_size, G, p, Dp]``) of slot
        ``chunk_id`` into L1 (queued for L2 behind it). Returns True, as ``LocalCPUBackend``
        does: a page L1 could not take is a miss at :meth:`get`."""
        self._check_id(chunk_id)
        tokens = self._tokens(chunk_id)
        if isinstance(value, list):
            raise TypeError("value: expected one page array; hybrid models' lists are not supported")
        host = np.asarray(value)
        with self._lock:
            engine, page = self._ready()
            if host.shape != page.shape or host.dtype != page.dtype:
                raise ValueError(
                    f"value: expected a {page.dtype} page of shape {list(page.shape)}, "
                    f"given {host.dtype} {list(host.shape)}"
                )
            page[...] = host
            slots, skip = self._slots(len(tokens))
            engine.store(tokens, self._views(page), slots, skip_leading_tokens=skip)
            engine.wait_stores()  # the copy out of the staging page is done before it is reused
            if self.cache.pop(chunk_id, None) is not None:
                self.current_size_bytes -= host.nbytes
            self.cache[chunk_id] = tokens
            self.current_size_bytes += host.nbytes
        return True

    def get(self, chunk_id: int) -> Any | None:
        """The page of slot ``chunk_id`` from L1 or L2 (numpy ``[1, num_layers, page_size, G, p,
        Dp]``), or None when it is not there (with ``fill_misses``: zeros, and the slot is
        recorded in :attr:`load_errors`)."""
        tokens = self._bound.get(chunk_id)
        with self._lock:
            engine, page = self._ready()
            page.fill(0)
            if tokens is not None:
                slots, skip = self._slots(len(tokens))
                if engine.retrieve(tokens, self._views(page), slots, skip).tokens == len(tokens) - skip:
                    self.cache.setdefault(chunk_id, tokens)
                    return page.copy()
        if not self.fill_misses:
            return None
        self.load_errors.add(chunk_id)
        return page.copy()

    def reclaim_unoccupied_chunks(self, occupied_chunk_ids: list[int]) -> None:
        """Forget every slot not in ``occupied_chunk_ids`` (the pages stay in L1/L2 until their
        own eviction: another slot or host may still hit them)."""
        keep = set(occupied_chunk_ids)
        for chunk_id in [c for c in self.cache if c not in keep]:
            del self.cache[chunk_id]
            self._bound.pop(chunk_id, None)
        page = self._page
        self.current_size_bytes = len(self.cache) * (page.nbytes if page is not None else 0)

    # ---- helpers ------------------------------------------------------------------------------

    def _check_id(self, chunk_id: int) -> None:
        if isinstance(chunk_id, bool) or not isinstance(chunk_id, (int, np.integer)):
            raise TypeError(f"chunk_id: expected an int, given {type(chunk_id).__name__}")
        if not 0 <= chunk_id < self.max_num_cpu_chunks:
            raise ValueError(
                f"chunk_id: expected 0 <= chunk_id < {self.max_num_cpu_chunks}, given {chunk_id}"
            )

    def _ready(self) -> tuple[CacheEngine, np.ndarray]:
        if self._engine is None or self._page is None:
            raise RuntimeError(
                "LMCacheCPUBackend: call set_layout first (the connector does at register_runner)"
            )
        return self._engine, self._page

    def _page_size(self) -> int:
        return self._ready()[1].shape[2]

    def _tokens(self, chunk_id: int) -> np.ndarray:
        tokens = self._bound.get(chunk_id)
        if tokens is None:
            raise KeyError(f"chunk_id {chunk_id}: not bound to a token prefix; call bind first")
        return tokens

    def _slots(self, num_tokens: int) -> tuple[Any, int]:
        """Slot mapping (int64 torch ``[num_tokens]``) of a prefix whose last page is the
        staging page: ``-1`` before it; and the tokens before it."""
        import torch

        page = self._page_size()
        slots = torch.full((num_tokens,), -1, dtype=torch.int64)
        slots[-page:] = torch.arange(page)
        return slots, num_tokens - page

    @staticmethod
    def _views(page: np.ndarray) -> list[Any]:
        """One torch view ``[1, page_size, G, p, Dp]`` per layer of the staging page."""
        import torch

        bits = page.view(f"u{page.dtype.itemsize}")
        dtype = getattr(torch, page.dtype.name)
        return [torch.from_numpy(bits[:, layer]).view(dtype) for layer in range(page.shape[1])]


# ---- what the connector calls (duck-typed over tpu-inference's work orders) ---------------------


def _block_end(meta: Any, block_id: int, page_size: int) -> int:
    """End token of block ``block_id`` in the request of ``meta`` (``TPUReqMeta``)."""
    return (list(meta.local_block_ids).index(block_id) + 1) * page_size


def bind_requests(backend: LMCacheCPUBackend, requests_meta: Iterable[Any], page_size: int) -> int:
    """Bind every slot of a step's saves (``save_spec.dst_chunks[j]`` holds block
    ``save_spec.src_blocks[j]``) and loads (``load_spec.src_chunks[i]`` -> block
    ``load_spec.dst_blocks[i]``) to its token prefix; returns how many were bound. Slots whose
    prefix is longer than the request's ``token_ids`` stay unbound (a miss, never a wrong page)."""
    bound = 0
    for meta in requests_meta:
        pairs: list[tuple[int, int]] = []
        save = meta.save_spec
        if save is not None and not save.skip_save:
            pairs += list(zip(save.dst_chunks, save.src_blocks, strict=True))
        load = meta.load_spec
        if load is not None and load.can_load:
            pairs += list(zip(load.src_chunks, load.dst_blocks, strict=True))
        for chunk_id, block_id in pairs:
            end = _block_end(meta, block_id, page_size)
            if end <= len(meta.token_ids):
                backend.bind(chunk_id, meta.token_ids, end)
                bound += 1
    return bound


def adopt_l2_hits(offload_manager: Any, block_hashes: Sequence[Any], num_cached_blocks: int) -> int:
    """Give the blocks ``block_hashes[local hits : num_cached_blocks]`` (found in L2 by
    lmcache-core, not known to this scheduler's ``LRUCacheManager``) slots marked saved, so its
    prefix match and load planning take them. Returns the blocks adopted (0 when the manager
    cannot make room)."""
    local = offload_manager.lookup(list(block_hashes))
    wanted = list(block_hashes[local:num_cached_blocks])
    if not wanted:
        return 0
    allocated = offload_manager.allocate_for_save(wanted)
    if allocated is None:
        return 0
    _, idxs = allocated
    offload_manager.complete_save([wanted[i] for i in idxs])
    return len(idxs)


def load_error_blocks(requests_meta: Iterable[Any], failed_chunk_ids: set[int]) -> set[int]:
    """Destination blocks of this step's loads whose source slots missed."""
    out: set[int] = set()
    for meta in requests_meta:
        load = meta.load_spec
        if load is not None and load.can_load:
            out.update(
                b for c, b in zip(load.src_chunks, load.dst_blocks, strict=True) if c in failed_chunk_ids
            )
    return out


def scheduler_engine(config: CacheEngineConfig, hints: LayoutHints, dtype: str) -> CacheEngine:
    """An lmcache-core engine for a process that never sees the KV (tpu-inference's scheduler):
    it computes the same keys as :class:`LMCacheCPUBackend` for KV of ``hints`` in ``dtype``
    (torch name, e.g. ``"bfloat16"``) and looks them up in L2."""
    import torch

    from lmcache_core.layout_registry import allocate_example, detect_layout

    layers, block, heads, size = _page_hints(hints)
    tensors, example = allocate_example(
        "tpu_inference", num_layers=layers, num_blocks=1, block_size=block, num_kv_heads=heads,
        head_size=size, dtype=getattr(torch, dtype),
    )  # fmt: skip
    fmt = detect_layout(tensors, example).chunk_format
    config = dataclasses.replace(config, chunk_size=block, save_partial_chunks=False)
    return CacheEngine(config, chunk_formats=[fmt])
