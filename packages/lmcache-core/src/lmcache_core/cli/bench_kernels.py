"""``lmcache-core bench kernels``: gather and scatter GB/s next to the memcpy roof and the reference.

For each shape (:data:`lmcache_core.cli.bench_pool.SHAPES`) it allocates a paged KV pool in the
engine's layout, by default at least 8x the last-level cache and 256 MiB, and times, with fresh
random blocks for every call:

* the chosen backend's gather (pool -> host chunk) and scatter (host chunk -> pool);
* the reference backend's gather and scatter (skipped when the kernel *is* the reference);
* the memcpy roof: the same bytes between the same memories, read from random places of the same
  pool (:mod:`lmcache_core.cli.memcpy_roof`).

Throughput is chunk bytes / seconds (each byte counted once); each figure is the median of
``--repeats`` runs, with min and max. The last timed gather and scatter of the chosen backend are
checked bit for bit against the reference before anything else touches them.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lmcache_core.cli.bench_pool import SHAPES, KVPool, ShapeSpec, build_pool, get_shapes, quick
from lmcache_core.cli.errors import CLIError
from lmcache_core.cli.host import HostInfo, host_info
from lmcache_core.cli.progress import Progress
from lmcache_core.cli.table import format_table
from lmcache_core.cli.timing import Stats, measure_gbps

if TYPE_CHECKING:
    import torch

    from lmcache_core.backend import Backend
    from lmcache_core.cli.memcpy_roof import Memcpy

NAME = "bench kernels"
HELP = "gather/scatter GB/s of a backend and of the reference, next to the memcpy roof"

MIB = 1 << 20
#: Default pool: at least this many times the last-level cache, and at least MIN_POOL bytes.
POOL_LLC_FACTOR = 8
MIN_POOL = 256 * MIB
#: The pool never takes more than this share of the memory available when the bench starts.
MAX_MEMORY_SHARE = 0.5
QUICK_POOL = 16 * MIB
QUICK_REPEATS = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        metavar="NAME",
        default=None,
        help="backend to time (default: the one selected for the device, as "
        "LMCACHE_BACKEND or automatic selection picks it)",
    )
    parser.add_argument(
        "--device",
        default=None,
        help="torch device type holding the KV (default: the current accelerator, else cpu)",
    )
    parser.add_argument(
        "--shapes",
        nargs="+",
        metavar="SHAPE",
        default=list(SHAPES),
        help=f"cases to run, from {', '.join(SHAPES)} (default: all)",
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed runs per figure (default 10, --quick 3)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before each figure")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads and memcpy threads (default: usable cpus)"
    )
    parser.add_argument(
        "--pool-mib",
        type=int,
        default=None,
        help=f"KV pool size per shape in MiB (default: max({POOL_LLC_FACTOR} x LLC, "
        f"{MIN_POOL // MIB} MiB); --quick {QUICK_POOL // MIB})",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the pool pattern and block picks")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"small shapes ({4} layers, 64-token chunks), small pool, 3 repeats: a smoke "
        "run in seconds; its numbers are cache bandwidth, not memory bandwidth",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    parser.add_argument("--no-progress", action="store_true", help="no progress line on stderr")


# ---- plan -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Everything decided before the first byte moves."""

    device: str
    threads: int
    repeats: int
    warmup: int
    shapes: list[ShapeSpec]
    pool_bytes: int
    llc_bytes: int | None
    quick: bool
    seed: int
    notes: list[str] = field(default_factory=list)


def _positive(name: str, value: int | None, minimum: int = 1) -> None:
    if value is not None and (isinstance(value, bool) or value < minimum):
        raise CLIError(f"{name}: expected an integer >= {minimum}, given {value}")


def make_plan(args: argparse.Namespace, host: HostInfo, default_device: str) -> Plan:
    """Turn arguments into a plan; CLIError names the bad argument."""
    _positive("--repeats", args.repeats)
    _positive("--warmup", args.warmup, minimum=0)
    _positive("--threads", args.threads)
    _positive("--pool-mib", args.pool_mib)
    try:
        shapes = get_shapes(args.shapes)
    except ValueError as e:
        raise CLIError(str(e)) from None
    if args.quick:
        shapes = [quick(s) for s in shapes]
    notes: list[str] = []
    llc = host.llc.size_bytes if host.llc else None
    if args.pool_mib is not None:
        pool = args.pool_mib * MIB
    elif args.quick:
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
    threads = args.threads or host.usable_cpus or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if load is not None and host.usable_cpus and load > 0.5 * host.usable_cpus:
        notes.append(
            f"the machine is busy (1-minute load {load:.1f} on {host.usable_cpus} cpus): "
            "figures may be low and noisy"
        )
    return Plan(
        device=args.device or default_device,
        threads=threads,
        repeats=args.repeats or (QUICK_REPEATS if args.quick else 10),
        warmup=args.warmup,
        shapes=shapes,
        pool_bytes=pool,
        llc_bytes=llc,
        quick=args.quick,
        seed=args.seed,
        notes=notes,
    )


# ---- one shape ------------------------------------------------------------------------------


@dataclass
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


@dataclass
class ShapeRun:
    """Per-shape context: the pool, the host chunk ring and the timing tools."""

    plan: Plan
    pool: KVPool
    ring: list[torch.Tensor]
    backend: Backend
    reference: Backend
    memcpy: Memcpy
    progress: Progress
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

    def time(self, label: str, run: Callable[[int], None], sync: Callable[[], None]) -> Stats:
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

    from lmcache_core.cli.bench_pool import flat_bytes

    return bool(torch.equal(flat_bytes(a), flat_bytes(b)))


def _kernel_sync(backend: Backend) -> Callable[[], None]:
    return lambda: backend.synchronize()


def _bench_op(ctx: ShapeRun, op: str) -> OpResult:
    import torch

    from lmcache_core.cli.bench_pool import fill_pattern_
    from lmcache_core.cli.memcpy_roof import plan_gather_like, plan_scatter_like

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
        ctx.progress.total -= 1  # no separate reference figure

    if owner == ctx.reference.name:
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


def _device_synchronize() -> None:
    import torch

    torch.accelerator.synchronize()


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
    progress: Progress,
    scratch: torch.Tensor | None,
) -> tuple[list[OpResult], dict[str, Any]]:
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
    ctx = ShapeRun(plan, pool, ring, backend, reference, memcpy, progress, scratch, random.Random(plan.seed))
    results = [_bench_op(ctx, "gather"), _bench_op(ctx, "scatter")]
    info = {
        "shape": spec.name,
        "pool_bytes": pool.nbytes,
        "num_blocks": num_blocks,
        "chunk_ring": ring_size,
        "blocks_reused": pool.sampler.reused,
        "blocks_needed_for_no_reuse": needed_blocks,
    }
    return results, info


# ---- output ---------------------------------------------------------------------------------


def _render(doc: dict[str, Any], results: list[OpResult]) -> str:
    lines = [
        f"lmcache-core bench kernels: backend {doc['backend']} ({doc['selection']}), device {doc['device']}, "
        f"threads {doc['threads']}, median of {doc['repeats']} runs (min-max), warmup {doc['warmup']}",
        f"host: {doc['host_line']}",
        f"torch {doc['torch']}, lmcache-core {doc['lmcache_core']}, {doc['date']}",
        f"memcpy roof: {doc['memcpy']}, same bytes, random runs in the same pool",
        "GB/s = chunk bytes / seconds (1e9 B/s, each byte counted once)",
    ]
    by_shape: dict[str, list[OpResult]] = {}
    for r in results:
        by_shape.setdefault(r.spec.name, []).append(r)
    pools = {p["shape"]: p for p in doc["pools"]}
    for name, rows in by_shape.items():
        spec, pool = rows[0].spec, pools[name]
        lines += [
            "",
            f"[{name}] {spec.describe()}",
            f"  pool {pool['pool_bytes'] / MIB:.0f} MiB ({pool['num_blocks']} blocks), "
            f"{pool['chunk_ring']} chunk buffers" + (", blocks reused" if pool["blocks_reused"] else ""),
        ]
        table = [
            [
                r.op,
                r.kernel_backend,
                r.kernel.describe(),
                r.memcpy.describe(),
                f"{r.kernel.median / r.memcpy.median:.2f}",
                r.reference.describe(),
                f"{r.kernel.median / r.reference.median:.2f}",
                "yes" if r.verified else "NO",
            ]
            for r in rows
        ]
        lines.append(
            format_table(
                [
                    "op",
                    "kernel",
                    "kernel GB/s",
                    "memcpy GB/s",
                    "kern/memcpy",
                    "reference GB/s",
                    "kern/ref",
                    "bit-exact",
                ],
                table,
                indent="  ",
            )
        )
    lines.append("")
    ok = all(r.verified for r in results)
    lines.append(
        "correctness: "
        + (
            "the last timed gather and scatter of every shape are bit-exact with the reference"
            if ok
            else "MISMATCH in " + ", ".join(f"{r.spec.name} {r.op}" for r in results if not r.verified)
        )
    )
    lines += [f"note: {n}" for n in doc["notes"]]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import torch

    import lmcache_core
    from lmcache_core.backend import reference_backend
    from lmcache_core.cli.memcpy_roof import Memcpy
    from lmcache_core.selection import select_backend

    host = host_info()
    plan = make_plan(args, host, lmcache_core._default_device_type())
    try:
        selection = select_backend(plan.device, args.backend)
    except (ValueError, RuntimeError) as e:
        what = f"--backend {args.backend!r}" if args.backend else "backend selection"
        raise CLIError(f"{what} for device {plan.device!r}: {e}") from None
    torch.set_num_threads(plan.threads)
    backend, reference = selection.backend, reference_backend()
    memcpy = Memcpy(plan.threads)
    # per shape: fill, then per op kernel, check, reference, memcpy (reference dropped when it is the kernel)
    progress = Progress(total=len(plan.shapes) * 9, enabled=not args.no_progress)
    host_mem = plan.device == "cpu"
    scratch = None
    if host_mem and plan.llc_bytes and not plan.quick:
        scratch = torch.empty(min(2 * plan.llc_bytes, 1 << 30), dtype=torch.uint8)
    results: list[OpResult] = []
    pools: list[dict[str, Any]] = []
    try:
        for spec in plan.shapes:
            shape_results, pool_info = _bench_shape(spec, plan, backend, reference, memcpy, progress, scratch)
            results += shape_results
            pools.append(pool_info)
            gc.collect()
    finally:
        progress.close()
        memcpy.close()
    if any(p["blocks_reused"] for p in pools):
        plan.notes.append(
            "the pool was too small for every timed call to use fresh blocks; some blocks were read twice"
        )
    if plan.quick:
        plan.notes.append("--quick: small shapes and pool; figures are cache bandwidth, not memory bandwidth")
    doc: dict[str, Any] = {
        "command": "bench kernels",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "lmcache_core": lmcache_core.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "host": host.to_json(),
        "host_line": host.describe(),
        "device": plan.device,
        "backend": backend.name,
        "selection": selection.why,
        "threads": plan.threads,
        "torch_threads": torch.get_num_threads(),
        "repeats": plan.repeats,
        "warmup": plan.warmup,
        "quick": plan.quick,
        "llc_bytes": plan.llc_bytes,
        "pool_target_bytes": plan.pool_bytes,
        "memcpy": memcpy.describe(host_mem),
        "unit": "GB/s = chunk bytes / seconds / 1e9",
        "pools": pools,
        "results": [r.to_json() for r in results],
        "all_verified": all(r.verified for r in results),
        "notes": plan.notes,
    }
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(_render(doc, results))
    sys.stdout.flush()
    return 0 if doc["all_verified"] else 1
