"""Gather and scatter GB/s of a backend next to the memcpy roof and the reference.

For each shape (:data:`lmcache_core.bench.pool.SHAPES`) it allocates a paged KV pool in the
engine's layout, by default at least 8x the last-level cache and 256 MiB, and times, with fresh
random blocks for every call:

* the chosen backend's gather (pool -> host chunk) and scatter (host chunk -> pool);
* the reference backend's gather and scatter (skipped when the kernel *is* the reference);
* the memcpy roof: the same bytes between the same memories, read from random places of the same
  pool (:mod:`lmcache_core.bench.memcpy_roof`).

Throughput is chunk bytes / seconds (each byte counted once); each figure is the median of
``repeats`` runs, with min and max. The last timed gather and scatter of the chosen backend are
checked bit for bit against the reference before anything else touches them.

Use::

    plan = make_plan(device="cpu", shapes=["nhd"], threads=2)
    report = run(plan, select_backend("cpu", "arm").backend)
    report.all_verified, report.to_json()
"""

from __future__ import annotations

import datetime
import gc
import math
import os
import platform
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lmcache_core.bench.host import HostInfo, host_info
from lmcache_core.bench.pool import SHAPES, KVPool, ShapeSpec, build_pool, get_shapes
from lmcache_core.bench.pool import quick as quick_spec
from lmcache_core.bench.progress import NoProgress, ProgressSink
from lmcache_core.bench.timing import Stats, measure_gbps

if TYPE_CHECKING:
    import torch

    from lmcache_core.backend import Backend
    from lmcache_core.bench.memcpy_roof import Memcpy

MIB = 1 << 20
#: Default pool: at least this many times the last-level cache, and at least MIN_POOL bytes.
POOL_LLC_FACTOR = 8
MIN_POOL = 256 * MIB
#: The pool never takes more than this share of the memory available when the bench starts.
MAX_MEMORY_SHARE = 0.5
QUICK_POOL = 16 * MIB
QUICK_REPEATS = 3
DEFAULT_REPEATS = 10
#: Progress steps per shape: fill, then per op kernel, check, reference, memcpy.
STEPS_PER_SHAPE = 9


# ---- plan -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Everything decided before the first byte moves. Sizes in bytes."""

    host: HostInfo
    device: str
    threads: int
    repeats: int
    warmup: int
    shapes: tuple[ShapeSpec, ...]
    pool_bytes: int
    llc_bytes: int | None
    quick: bool
    seed: int
    notes: tuple[str, ...] = field(default_factory=tuple)


def _check_int(name: str, value: int | None, minimum: int = 1) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        raise ValueError(f"{name}: expected an integer >= {minimum}, given {value}")


def make_plan(
    *,
    host: HostInfo | None = None,
    device: str | None = None,
    shapes: Sequence[str] | None = None,
    repeats: int | None = None,
    warmup: int = 1,
    threads: int | None = None,
    pool_mib: int | None = None,
    seed: int = 0,
    quick: bool = False,
) -> Plan:
    """Decide the run; ValueError names the bad keyword.

    ``host``: the machine (default :func:`~lmcache_core.bench.host.host_info`); ``device``: torch
    device type of the KV (default: the current accelerator, else ``"cpu"``); ``shapes``: names
    from :data:`~lmcache_core.bench.pool.SHAPES` (default all); ``repeats``: timed runs per
    figure (default 10, quick 3); ``threads``: torch and memcpy threads (default: usable cpus);
    ``pool_mib``: pool per shape (default max(8 x LLC, 256 MiB), quick 16 MiB, at most half of
    the available memory); ``quick``: 4 layers, 64-token chunks, a 16 MiB pool.
    """
    _check_int("repeats", repeats)
    _check_int("warmup", warmup, minimum=0)
    _check_int("threads", threads)
    _check_int("pool_mib", pool_mib)
    if host is None:
        host = host_info()
    if device is None:
        import lmcache_core

        device = lmcache_core._default_device_type()
    specs = get_shapes(list(SHAPES) if shapes is None else list(shapes))
    if quick:
        specs = [quick_spec(s) for s in specs]
    notes: list[str] = []
    llc = host.llc.size_bytes if host.llc else None
    if pool_mib is not None:
        pool = pool_mib * MIB
    elif quick:
        pool = QUICK_POOL
    else:
        pool = max(POOL_LLC_FACTOR * (llc or 0), MIN_POOL)
        if llc is None:
            notes.append(f"last-level cache size unknown: pool {pool // MIB} MiB")
    if host.mem_available_bytes is not None and pool > MAX_MEMORY_SHARE * host.mem_available_bytes:
        capped = int(MAX_MEMORY_SHARE * host.mem_available_bytes) // MIB * MIB
        notes.append(
            f"pool capped at {capped // MIB} MiB ({MAX_MEMORY_SHARE:.0%} of available memory), "
            f"asked {pool // MIB} MiB"
        )
        pool = capped
    if llc is not None and pool < POOL_LLC_FACTOR * llc:
        notes.append(
            f"pool {pool / MIB:.0f} MiB is under {POOL_LLC_FACTOR}x the last-level cache "
            f"({llc / MIB:.0f} MiB): part of what is timed may come from cache, not memory"
        )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if load is not None and host.usable_cpus and load > 0.5 * host.usable_cpus:
        notes.append(
            f"the machine is busy (1-minute load {load:.1f} on {host.usable_cpus} cpus): "
            "figures may be low and noisy"
        )
    return Plan(
        host=host,
        device=device,
        threads=threads or host.usable_cpus or 1,
        repeats=repeats or (QUICK_REPEATS if quick else DEFAULT_REPEATS),
        warmup=warmup,
        shapes=tuple(specs),
        pool_bytes=pool,
        llc_bytes=llc,
        quick=quick,
        seed=seed,
        notes=tuple(notes),
    )


# ---- results --------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpResult:
    """One operation of one shape: the three figures, their ratios and the correctness check."""

    spec: ShapeSpec
    op: str
    kernel_backend: str
    kernel: Stats
    reference: Stats
    memcpy: Stats
    verified: bool
    check: str

    def to_json(self) -> dict[str, Any]:
        return {
            **self.spec.to_json(),
            "op": self.op,
            "kernel_backend": self.kernel_backend,
            "kernel_gbps": self.kernel.to_json(),
            "reference_gbps": self.reference.to_json(),
            "memcpy_gbps": self.memcpy.to_json(),
            "ratio_kernel_memcpy": self.kernel.median / self.memcpy.median,
            "ratio_kernel_reference": self.kernel.median / self.reference.median,
            "ratio_reference_memcpy": self.reference.median / self.memcpy.median,
            "verified": self.verified,
            "check": self.check,
        }


@dataclass(frozen=True)
class PoolRun:
    """The pool one shape ran on: bytes, blocks, host chunk buffers, whether blocks were reused."""

    shape: str
    pool_bytes: int
    num_blocks: int
    chunk_ring: int
    blocks_reused: bool
    blocks_needed_for_no_reuse: int

    def to_json(self) -> dict[str, Any]:
        return {
            "shape": self.shape,
            "pool_bytes": self.pool_bytes,
            "num_blocks": self.num_blocks,
            "chunk_ring": self.chunk_ring,
            "blocks_reused": self.blocks_reused,
            "blocks_needed_for_no_reuse": self.blocks_needed_for_no_reuse,
        }


@dataclass(frozen=True)
class KernelsReport:
    """What :func:`run` measured: two :class:`OpResult` (gather, scatter) per shape, in plan order."""

    plan: Plan
    backend: str
    selection: str
    memcpy: str
    torch_version: str
    torch_threads: int
    date: str
    results: tuple[OpResult, ...]
    pools: tuple[PoolRun, ...]
    notes: tuple[str, ...]

    @property
    def all_verified(self) -> bool:
        return all(r.verified for r in self.results)

    def to_json(self) -> dict[str, Any]:
        import lmcache_core

        plan = self.plan
        return {
            "command": "bench kernels",
            "date": self.date,
            "lmcache_core": lmcache_core.__version__,
            "torch": self.torch_version,
            "python": platform.python_version(),
            "host": plan.host.to_json(),
            "host_line": plan.host.describe(),
            "device": plan.device,
            "backend": self.backend,
            "selection": self.selection,
            "threads": plan.threads,
            "torch_threads": self.torch_threads,
            "repeats": plan.repeats,
            "warmup": plan.warmup,
            "quick": plan.quick,
            "llc_bytes": plan.llc_bytes,
            "pool_target_bytes": plan.pool_bytes,
            "memcpy": self.memcpy,
            "unit": "GB/s = chunk bytes / seconds / 1e9",
            "pools": [p.to_json() for p in self.pools],
            "results": [r.to_json() for r in self.results],
            "all_verified": self.all_verified,
            "notes": list(self.notes),
        }


# ---- one shape ------------------------------------------------------------------------------


@dataclass
class _ShapeRun:
    """Per-shape context: the pool, the host chunk ring and the timing tools."""

    plan: Plan
    pool: KVPool
    ring: list[torch.Tensor]
    backend: Backend
    reference: Backend
    memcpy: Memcpy
    progress: ProgressSink
    scratch: torch.Tensor | None
    rng: random.Random

    @property
    def total(self) -> int:
        return self.plan.warmup + self.plan.repeats

    def chunk(self, i: int) -> torch.Tensor:
        return self.ring[i % len(self.ring)]

    def evict(self) -> None:
        """Overwrite a buffer larger than the last-level cache, so the next figure starts cold."""
        if self.scratch is not None:
            self.scratch.fill_(self.rng.randrange(256))

    def time(self, label: str, run: Callable[[int], object], sync: Callable[[], None]) -> Stats:
        self.progress.phase(label)
        self.evict()
        return measure_gbps(
            run,
            sync,
            self.pool.spec.chunk_bytes,
            self.plan.repeats,
            self.plan.warmup,
            on_repeat=lambda i: self.progress.update(f"{i + 1}/{self.total}"),
        )


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    import torch

    from lmcache_core.bench.pool import flat_bytes

    return bool(torch.equal(flat_bytes(a), flat_bytes(b)))


def _kernel_sync(backend: Backend) -> Callable[[], None]:
    return lambda: backend.synchronize()


def _device_synchronize() -> None:
    import torch

    torch.accelerator.synchronize()


def _bench_op(ctx: _ShapeRun, op: str) -> OpResult:
    import torch

    from lmcache_core.bench.memcpy_roof import plan_gather_like, plan_scatter_like
    from lmcache_core.bench.pool import fill_pattern_

    pool, layout, spec = ctx.pool, ctx.pool.layout, ctx.pool.spec
    if op == "scatter":  # sources unlike anything in the pool, so the read-back check means something
        fill_pattern_(ctx.ring, ctx.plan.seed + 1)
    owner = ctx.backend.kernel_name(layout)
    kernel = ctx.backend if owner == ctx.backend.name else ctx.reference
    move = kernel.gather if op == "gather" else kernel.scatter
    tag = f"{spec.name} {op}"

    maps = [pool.next_mapping() for _ in range(ctx.total)]
    kernel_stats = ctx.time(
        f"{tag} {owner}", lambda i: move(layout, pool.tensors, maps[i], ctx.chunk(i)), _kernel_sync(kernel)
    )

    # check the last timed call before anything else touches its memory
    ctx.progress.phase(f"{tag} check")
    last = ctx.total - 1
    expected = torch.empty_like(ctx.chunk(last))
    ctx.reference.gather(layout, pool.tensors, maps[last], expected)
    ctx.reference.synchronize()
    verified = _bits_equal(ctx.chunk(last), expected)
    what = {
        "gather": "gathered chunk vs the reference gather",
        "scatter": "scattered KV read back by the reference gather vs the source chunk",
    }[op]
    check = f"{'bit-exact' if verified else 'MISMATCH'}: {what}"
    if owner == ctx.reference.name:
        check += " (the kernel is the reference)"
        ctx.progress.skip()  # no separate reference figure
        reference_stats = kernel_stats
    else:
        ref_move = ctx.reference.gather if op == "gather" else ctx.reference.scatter
        ref_maps = [pool.next_mapping() for _ in range(ctx.total)]
        reference_stats = ctx.time(
            f"{tag} reference",
            lambda i: ref_move(layout, pool.tensors, ref_maps[i], ctx.chunk(i)),
            _kernel_sync(ctx.reference),
        )

    planner = plan_gather_like if op == "gather" else plan_scatter_like
    plans = [planner(pool.tensors, ctx.chunk(i), ctx.rng) for i in range(ctx.total)]
    roof_sync = (lambda: None) if ctx.plan.device == "cpu" else _device_synchronize
    memcpy_stats = ctx.time(f"{tag} memcpy", lambda i: ctx.memcpy.copy(plans[i]), roof_sync)
    return OpResult(spec, op, owner, kernel_stats, reference_stats, memcpy_stats, verified, check)


def _ring(spec: ShapeSpec, pool: KVPool, count: int, backend: Backend, device: str) -> list[torch.Tensor]:
    """``count`` host chunks ``[num_kv, num_layers, num_tokens, hidden]``, every page written."""
    import torch

    dtype = getattr(torch, spec.dtype)
    shape = pool.layout.chunk_format.shape(spec.num_tokens)
    chunks = []
    for _ in range(count):
        raw = backend.alloc_host(spec.chunk_bytes, pinned=device != "cpu")
        raw.fill_(0)
        chunks.append(raw.view(dtype).view(shape))
    return chunks


def _bench_shape(
    spec: ShapeSpec,
    plan: Plan,
    backend: Backend,
    reference: Backend,
    memcpy: Memcpy,
    progress: ProgressSink,
    scratch: torch.Tensor | None,
) -> tuple[list[OpResult], PoolRun]:
    total = plan.warmup + plan.repeats
    # every timed call gets fresh blocks while the pool lasts: 2 ops x (kernel + reference)
    needed_blocks = 4 * total * spec.blocks_per_chunk
    num_blocks = max(plan.pool_bytes // spec.block_bytes, spec.blocks_per_chunk * 2)
    progress.phase(
        f"{spec.name}: allocating and filling a {num_blocks * spec.block_bytes / MIB:.0f} MiB pool"
    )
    pool = build_pool(spec, num_blocks, plan.device, plan.seed)
    llc = plan.llc_bytes or 0
    ring_size = min(total, max(2, math.ceil(llc / spec.chunk_bytes)))
    ring = _ring(spec, pool, ring_size, backend, plan.device)
    ctx = _ShapeRun(plan, pool, ring, backend, reference, memcpy, progress, scratch, random.Random(plan.seed))
    results = [_bench_op(ctx, "gather"), _bench_op(ctx, "scatter")]
    info = PoolRun(spec.name, pool.nbytes, num_blocks, ring_size, pool.sampler.reused, needed_blocks)
    return results, info


# ---- the run --------------------------------------------------------------------------------


def run(
    plan: Plan,
    backend: Backend,
    *,
    selection: str = "given by the caller",
    reference: Backend | None = None,
    progress: ProgressSink | None = None,
) -> KernelsReport:
    """Time ``backend`` (and ``reference``, default the core's) on every shape of ``plan``.

    Sets torch's thread count to ``plan.threads``. ``selection`` says why this backend (it goes
    into the report). The report's ``all_verified`` is False when any checked call differs from
    the reference; nothing is raised for that.
    """
    import torch

    from lmcache_core.backend import reference_backend
    from lmcache_core.bench.memcpy_roof import Memcpy

    progress = NoProgress() if progress is None else progress
    reference = reference_backend() if reference is None else reference
    torch.set_num_threads(plan.threads)
    memcpy = Memcpy(plan.threads)
    progress.begin(len(plan.shapes) * STEPS_PER_SHAPE)
    host_mem = plan.device == "cpu"
    scratch = None
    if host_mem and plan.llc_bytes and not plan.quick:
        scratch = torch.empty(min(2 * plan.llc_bytes, 1 << 30), dtype=torch.uint8)
    results: list[OpResult] = []
    pools: list[PoolRun] = []
    try:
        for spec in plan.shapes:
            shape_results, pool_info = _bench_shape(spec, plan, backend, reference, memcpy, progress, scratch)
            results += shape_results
            pools.append(pool_info)
            gc.collect()
    finally:
        memcpy.close()
    notes = list(plan.notes)
    if any(p.blocks_reused for p in pools):
        notes.append(
            "the pool was too small for every timed call to use fresh blocks; some blocks were read twice"
        )
    if plan.quick:
        notes.append("--quick: small shapes and pool; figures are cache bandwidth, not memory bandwidth")
    return KernelsReport(
        plan=plan,
        backend=backend.name,
        selection=selection,
        memcpy=memcpy.describe(host_mem),
        torch_version=torch.__version__,
        torch_threads=torch.get_num_threads(),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        results=tuple(results),
        pools=tuple(pools),
        notes=tuple(notes),
    )
