"""Transfer plans: the compiled gathers and scatters of one layout on one set of KV arrays.

Data path (shapes with named axes; ``cap = bucket * block_size`` rows)::

    gather:  KV arrays (device, any sharding) --jitted gather(kv, blk[cap], pos[cap])-->
             chunk [num_kv, num_layers, cap, hidden] (device, real channels, K and V apart)
             --jax.device_put(same sharding, memory_kind=pinned_host)--> host
             --live rows--> the core's host chunk [num_kv, num_layers, num_tokens, hidden]
    scatter: host chunk rows --jax.device_put(the scatter's input sharding)--> device
             --jitted scatter(kv (donated), blk, pos, rows)--> new KV arrays, same sharding

One executable per (layout, block-count bucket, direction) (:mod:`lmcache_tpu.buckets`), all
compiled when the plan is made (``LMCACHE_TPU_PRECOMPILE=0``: on first use); plans are cached
per (layout, KV shardings, settings). The scatter donates the KV arrays: the caller's old arrays
are deleted, and it continues with the returned ones (as ``CacheResult.kv_caches`` says).

With ``LMCACHE_TPU_KERNEL=pallas`` the row reads and writes of ``tpu_inference`` KV run the
Pallas DMA kernel (:mod:`lmcache_tpu.pallas_kernels`) inside the same jitted functions.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lmcache_core.arrays import torch_twins
from lmcache_core.layout import KVLayout
from lmcache_core.layout_registry import LayoutHints, detect_layout
from lmcache_tpu import buckets, pallas_kernels, rows, settings

#: Executables compiled by this process (all plans), for ``lmcache-core info`` and tests.
COMPILED = {"gather": 0, "scatter": 0}
_PLANS: OrderedDict[Any, Plan] = OrderedDict()
_PLANS_MAX = 16
_lock = threading.Lock()


def host_memory_kind(device: Any, wanted: str) -> str | None:
    """``wanted`` when ``device`` has that memory kind, else ``unpinned_host`` when it has it,
    else None (a plain device-to-host copy)."""
    kinds = {m.kind for m in device.addressable_memories()}
    for kind in (wanted, "unpinned_host"):
        if kind in kinds:
            return kind
    return None


def _hints(layout: KVLayout) -> LayoutHints:
    variant = dict(layout.extra).get("variant")
    return LayoutHints(
        kind=layout.kind,
        num_kv_heads=layout.kinds[0].heads,
        head_size=layout.kinds[0].width,
        block_size=layout.block_size,
        num_layers=layout.num_layers,
        variant=variant,
    )


def check_layout(layout: KVLayout, kv_caches: Sequence[Any]) -> None:
    """The plan reads the engine's shapes, not strides: ``layout`` must be the one the registry
    detects from ``kv_caches`` (ValueError otherwise, e.g. a hand-edited layout)."""
    if layout.kind not in rows.LAYOUTS:
        raise ValueError(f"layout: expected one of {list(rows.LAYOUTS)} (lmcache-tpu), given {layout.kind}")
    if layout.num_tensors != layout.num_layers or layout.plane_tensor[: layout.num_layers] != tuple(
        range(layout.num_layers)
    ):
        raise ValueError(
            f"layout: expected one KV array per layer for {layout.kind}, given {layout.describe()}"
        )
    detected = detect_layout(torch_twins(list(kv_caches)), _hints(layout))
    if detected != layout:
        raise ValueError(
            f"layout: expected the layout detected from kv_caches ({detected.describe()}), given {layout.describe()}"
        )


class Plan:
    """Compiled gathers/scatters of ``layout`` for KV arrays of the given shardings."""

    def __init__(self, layout: KVLayout, kv_caches: Sequence[Any], config: settings.Settings) -> None:
        check_layout(layout, kv_caches)
        if not layout.chunk_format.is_uniform:
            raise ValueError(f"layout {layout.kind}: the TPU plan moves uniform chunk formats only")
        self.layout = layout
        self.config = config
        self.specs = tuple(jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding) for a in kv_caches)
        self.shardings = tuple(a.sharding for a in kv_caches)
        self.device = next(iter(kv_caches[0].devices()))
        self.host_kind = host_memory_kind(self.device, config.host_memory)
        self.pallas = config.kernel == "pallas" and layout.kind in pallas_kernels.LAYOUTS
        self.interpret = pallas_kernels.interpret_default()
        self._gathers: dict[int, Any] = {}
        self._scatters: dict[int, Any] = {}
        self._lock = threading.Lock()
        fmt = layout.chunk_format
        self.num_kv, self.hidden = fmt.num_kv, fmt.hidden
        self.dtype = kv_caches[0].dtype
        self.bits = np.dtype(f"u{self.dtype.itemsize}")
        if config.precompile:
            self.precompile()

    @property
    def kernel(self) -> str:
        return ("pallas (interpret)" if self.interpret else "pallas") if self.pallas else "xla"

    # ---- the traced functions --------------------------------------------------------------

    def _read(self, arr: Any, blk: Any, pos: Any) -> Any:
        if self.pallas:
            raw = pallas_kernels.gather_rows(arr, blk, pos, self.interpret)
            return raw.reshape(raw.shape[0], raw.shape[1] * raw.shape[2], raw.shape[3])
        return rows.read_raw(self.layout, arr, blk, pos)

    def _write(self, arr: Any, blk: Any, pos: Any, raw: Any) -> Any:
        if self.pallas:
            return pallas_kernels.scatter_rows(
                arr, blk, pos, raw.reshape(raw.shape[0], *arr.shape[2:]), self.interpret
            )
        return rows.write_raw(self.layout, arr, blk, pos, raw)

    # Everything moves as unsigned ints of the element's width (a free bitcast): float
    # gathers/scatters may canonicalise NaN payloads (fp8 e5m2 on XLA:CPU does), bits do not.

    def _gather_fn(self, kv: tuple[Any, ...], blk: Any, pos: Any) -> Any:
        kv = tuple(jax.lax.bitcast_convert_type(a, self.bits) for a in kv)
        parts = [rows.split(self.layout, self._read(a, blk, pos)) for a in kv]
        return rows.stack_chunk(parts)

    def _scatter_fn(self, kv: tuple[Any, ...], blk: Any, pos: Any, chunk: Any) -> tuple[Any, ...]:
        out = []
        for layer, a in enumerate(kv):
            a = jax.lax.bitcast_convert_type(a, self.bits)
            raw = rows.merge(
                self.layout, self._read(a, blk, pos), [chunk[k, layer] for k in range(self.num_kv)]
            )
            out.append(jax.lax.bitcast_convert_type(self._write(a, blk, pos, raw), self.dtype))
        return tuple(out)

    # ---- compilation -----------------------------------------------------------------------

    def _index_spec(self, cap: int) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct((cap,), jnp.int32)

    def _compile(self, direction: str, bucket: int) -> Any:
        cap = bucket * self.layout.block_size
        idx = self._index_spec(cap)
        if direction == "gather":
            fn = jax.jit(self._gather_fn)
            compiled = fn.lower(self.specs, idx, idx).compile()
        else:
            chunk = jax.ShapeDtypeStruct((self.num_kv, self.layout.num_layers, cap, self.hidden), self.bits)
            fn = jax.jit(self._scatter_fn, donate_argnums=0, out_shardings=self.shardings)
            compiled = fn.lower(self.specs, idx, idx, chunk).compile()
        with _lock:
            COMPILED[direction] += 1
        return compiled

    def executable(self, direction: str, bucket: int) -> Any:
        table = self._gathers if direction == "gather" else self._scatters
        with self._lock:
            found = table.get(bucket)
            if found is None:
                found = table[bucket] = self._compile(direction, bucket)
            return found

    def precompile(self) -> int:
        """Compile every bucket of both directions not compiled yet; returns how many were."""
        before = len(self._gathers) + len(self._scatters)
        for bucket in buckets.BUCKETS:
            self.executable("gather", bucket)
            self.executable("scatter", bucket)
        return len(self._gathers) + len(self._scatters) - before

    # ---- transfers -------------------------------------------------------------------------

    def _indices(self, slots: np.ndarray, piece: buckets.Piece, cap: int) -> tuple[np.ndarray, np.ndarray]:
        """int32 ``[cap]`` block ids and positions of a piece; padding rows get block
        ``num_blocks`` (dropped on write, clamped on read)."""
        blk = np.full(cap, self.layout.num_blocks, dtype=np.int32)
        pos = np.zeros(cap, dtype=np.int32)
        part = slots[piece.start : piece.start + piece.rows]
        blk[: piece.rows] = part // self.layout.block_size
        pos[: piece.rows] = part % self.layout.block_size
        return blk, pos

    def gather(self, kv: Sequence[Any], slots: np.ndarray, tokens: np.ndarray, out: np.ndarray) -> None:
        """Write the chunk rows ``out[:, :, tokens[i]]`` from slots ``slots[i]`` (live only)."""
        bits = np.dtype(f"u{out.dtype.itemsize}")
        dst = out.view(bits)
        kv = tuple(kv)
        for piece in buckets.pieces(len(slots), self.layout.block_size):
            cap = piece.bucket * self.layout.block_size
            blk, pos = self._indices(slots, piece, cap)
            chunk = self.executable("gather", piece.bucket)(kv, blk, pos)
            if self.host_kind is not None:
                chunk = jax.device_put(chunk, chunk.sharding.with_memory_kind(self.host_kind))
            host = np.asarray(chunk).view(bits)
            dst[:, :, tokens[piece.start : piece.start + piece.rows]] = host[:, :, : piece.rows]

    def scatter(self, kv: Sequence[Any], slots: np.ndarray, tokens: np.ndarray, src: np.ndarray) -> list[Any]:
        """New KV arrays holding chunk rows ``src[:, :, tokens[i]]`` at slots ``slots[i]``."""
        new = tuple(kv)
        for piece in buckets.pieces(len(slots), self.layout.block_size):
            cap = piece.bucket * self.layout.block_size
            blk, pos = self._indices(slots, piece, cap)
            staged = np.zeros((self.num_kv, self.layout.num_layers, cap, self.hidden), dtype=self.bits)
            staged[:, :, : piece.rows] = src.view(self.bits)[
                :, :, tokens[piece.start : piece.start + piece.rows]
            ]
            compiled = self.executable("scatter", piece.bucket)
            args, _ = compiled.input_shardings
            device_rows = jax.device_put(staged, args[3])
            new = compiled(new, blk, pos, device_rows)
        return list(new)


def plan_for(layout: KVLayout, kv_caches: Sequence[Any]) -> Plan:
    """The cached plan of ``layout`` on arrays of ``kv_caches``' shardings (made when new)."""
    config = settings.read()
    key = (layout, tuple(a.sharding for a in kv_caches), str(kv_caches[0].dtype), config)
    with _lock:
        plan = _PLANS.get(key)
        if plan is not None:
            _PLANS.move_to_end(key)
            return plan
    plan = Plan(layout, kv_caches, config)
    with _lock:
        _PLANS[key] = plan
        while len(_PLANS) > _PLANS_MAX:
            _PLANS.popitem(last=False)
    return plan


def live(slot_mapping: np.ndarray, skip_prefix: int) -> tuple[np.ndarray, np.ndarray]:
    """``(slots, tokens)`` of the chunk tokens that move: ``t >= skip_prefix``, slot ``!= -1``."""
    tail = np.asarray(slot_mapping[skip_prefix:])
    keep = np.flatnonzero(tail >= 0)
    return tail[keep], keep + skip_prefix
