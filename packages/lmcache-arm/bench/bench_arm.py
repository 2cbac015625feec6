"""Tuning benchmark of the ``arm`` kernels: copy policies x thread counts next to the memcpy roof.

``lmcache-core bench kernels --backend arm`` is the benchmark of record; this script measures what
that one cannot: the same shapes under each copy policy of ``lmcache_arm._C.set_tuning``
(coalescing on/off, NEON-only, memcpy-only, span length), called through
:func:`lmcache_arm.kernels.gather` / ``scatter`` directly (no core validation), each figure next
to the libc memcpy roof of the same bytes from the same pool. It reuses the core benchmark's pool,
slot mappings and roof (:mod:`lmcache_core.bench.pool`, :mod:`lmcache_core.bench.memcpy_roof`).

Usage::

    python packages/lmcache-arm/bench/bench_arm.py [--shapes nhd small_rows mla vllm_cpu hnd ...]
        [--threads 1 2] [--policies default no-coalescing all-neon all-memcpy ...] [--reference]
        [--pool-mib 3840] [--repeats 11]

GB/s = chunk bytes / seconds / 1e9, median (min-max) of ``--repeats`` runs, fresh random blocks
every run, a 1 GiB buffer overwritten before every figure (as the core bench does). After each
shape it prints how many CPUs other processes kept busy meanwhile (``/proc/stat``): on a shared
2-core machine a shape measured while that is above ~0.1 should be rerun.
"""

from __future__ import annotations

import argparse
import datetime
import random
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch

from lmcache_arm import _C, kernels
from lmcache_core.backend import reference_backend
from lmcache_core.bench.host import host_info
from lmcache_core.bench.memcpy_roof import Memcpy, plan_gather_like, plan_scatter_like
from lmcache_core.bench.pool import SHAPES, KVPool, ShapeSpec, build_pool

#: The core benchmark's shapes plus the head-strided layouts it does not time.
EXTRA_SHAPES = {
    "hnd": ShapeSpec(
        "hnd",
        "vllm_flash_hnd",
        32,
        8,
        128,
        "bfloat16",
        16,
        256,
        "vLLM HND pages: per block, each head's block_size rows together",
    ),
    "trtllm": ShapeSpec(
        "trtllm",
        "trtllm",
        32,
        8,
        128,
        "bfloat16",
        32,
        256,
        "TensorRT-LLM pool: one tensor, HND inside each (block, layer, kv)",
    ),
    "sglang": ShapeSpec(
        "sglang", "sglang", 32, 8, 128, "bfloat16", 1, 256, "SGLang token pool, block_size 1, random slots"
    ),
}
ALL_SHAPES = {**SHAPES, **EXTRA_SHAPES}

MIB = 1 << 20

#: name -> set_tuning overrides
POLICIES: dict[str, dict[str, object]] = {
    "default": {},
    "no-coalescing": {"coalesce": False},
    "all-neon": {"memcpy_min_bytes": 1 << 62},
    "all-memcpy": {"memcpy_min_bytes": 0},
    "span-16k": {"max_span_bytes": 16 << 10},
    "span-4m": {"max_span_bytes": 4 << 20},
    "prefetch-4k-d2": {"prefetch_bytes": 4 << 10, "prefetch_distance": 2},
    "prefetch-4k-d4": {"prefetch_bytes": 4 << 10, "prefetch_distance": 4},
    "prefetch-4k-d8": {"prefetch_bytes": 4 << 10, "prefetch_distance": 8},
    "prefetch-1k": {"prefetch_bytes": 1 << 10},
    "prefetch-4k": {"prefetch_bytes": 4 << 10},
    "prefetch-32k": {"prefetch_bytes": 32 << 10},
    "memcpy-from-128": {"memcpy_min_bytes": 128},
    "memcpy-from-512": {"memcpy_min_bytes": 512},
    "memcpy-from-4k": {"memcpy_min_bytes": 4 << 10},
    "memcpy-prefetch-4k": {"memcpy_min_bytes": 0, "prefetch_bytes": 4 << 10},
    "no-coalescing-memcpy": {"coalesce": False, "memcpy_min_bytes": 0},
    "tokens-outer": {"tokens_outer": True},
    "heads-outer": {"tokens_outer": False},
    "memcpy-tokens-outer": {"memcpy_min_bytes": 0, "tokens_outer": True},
    "memcpy-heads-outer": {"memcpy_min_bytes": 0, "tokens_outer": False},
}


def _cpu_ticks() -> tuple[int, int]:
    """(busy ticks of the whole machine, ticks of this process), from /proc (Linux only)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            mine = f.read().rsplit(")", 1)[1].split()
        return sum(fields) - fields[3] - fields[4], int(mine[11]) + int(mine[12])
    except (OSError, ValueError, IndexError):
        return 0, 0


def _gbps(nbytes: int, run, repeats: int, warmup: int = 2) -> tuple[float, float, float]:
    """Median, min, max GB/s of ``repeats`` timed calls after ``warmup`` untimed ones."""
    values = []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        run(i)
        dt = time.perf_counter() - t0
        if i >= warmup:
            values.append(nbytes / dt / 1e9)
    return statistics.median(values), min(values), max(values)


def _fmt(s: tuple[float, ...]) -> str:
    return f"{s[0]:6.2f} ({s[1]:.2f}-{s[2]:.2f})"


#: timed(run, nbytes): median, min, max GB/s of run(i) over the benchmark's repeats
Timer = Callable[[Callable[[int], None], int], tuple[float, float, float]]


def _call(
    fn: Callable[..., None],
    pool: KVPool,
    maps: list[torch.Tensor],
    ring: list[torch.Tensor],
    i: int,
    **kwargs: object,
) -> None:
    fn(pool.layout, pool.tensors, maps[i], ring[i % len(ring)], **kwargs)


def _bench_shape(spec: ShapeSpec, args: argparse.Namespace, timed: Timer, rng: random.Random) -> None:
    """Print one table: every thread count, op and policy of ``spec``, with the roof (and reference)."""
    num_blocks = max(args.pool_mib * MIB // spec.block_bytes, 4 * spec.blocks_per_chunk)
    pool = build_pool(spec, num_blocks, "cpu", args.seed)
    layout = pool.layout
    dtype = getattr(torch, spec.dtype)
    ring = [torch.zeros(layout.chunk_format.shape(spec.num_tokens), dtype=dtype) for _ in range(args.ring)]
    ref = reference_backend()
    print(
        f"\n[{spec.name}] {spec.describe()}; pool {pool.nbytes / MIB:.0f} MiB, run "
        f"{layout.contiguous_run() * layout.element_size} B"
    )
    print(f"  {'threads':>7}  {'op':<7}  {'policy':<20}  {'kernel GB/s':<20}  {'memcpy GB/s':<20}  ratio")
    busy0, mine0 = _cpu_ticks()
    t_shape = time.perf_counter()
    total = args.repeats + 2
    for threads in args.threads:
        torch.set_num_threads(threads)
        memcpy = Memcpy(threads)
        for op in ("gather", "scatter"):
            planner = plan_gather_like if op == "gather" else plan_scatter_like
            plans = [planner(pool.tensors, ring[i % len(ring)], rng) for i in range(total)]
            roof = timed(lambda i, plans=plans, memcpy=memcpy: memcpy.copy(plans[i]), spec.chunk_bytes)
            rows: list[tuple[str, tuple[float, float, float]]] = []
            fn = kernels.gather if op == "gather" else kernels.scatter
            for name in args.policies:
                _C.reset_tuning()
                _C.set_tuning(**{**_C.get_tuning(), **POLICIES[name]})
                maps = [pool.next_mapping() for _ in range(total)]
                run = partial(_call, fn, pool, maps, ring, num_threads=threads)
                rows.append((name, timed(run, spec.chunk_bytes)))
            _C.reset_tuning()
            if args.reference:
                move = ref.gather if op == "gather" else ref.scatter
                maps = [pool.next_mapping() for _ in range(total)]
                rows.append(("reference", timed(partial(_call, move, pool, maps, ring), spec.chunk_bytes)))
            for name, s in rows:
                print(
                    f"  {threads:>7}  {op:<7}  {name:<20}  {_fmt(s):<20}  {_fmt(roof):<20}  {s[0] / roof[0]:.2f}"
                )
        memcpy.close()
    busy1, mine1 = _cpu_ticks()
    others = max(0, (busy1 - busy0) - (mine1 - mine0)) / 100 / (time.perf_counter() - t_shape)  # USER_HZ 100
    print(
        f"  other processes kept {others:.2f} CPUs busy on average while this shape ran"
        + (" - figures disturbed, rerun" if others > 0.1 else "")
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=sorted(ALL_SHAPES))
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--policies", nargs="+", default=["default", "no-coalescing", "all-neon", "all-memcpy"])
    p.add_argument("--pool-mib", type=int, default=3840, help="KV pool per shape (the core bench: 8 x LLC)")
    p.add_argument(
        "--ring",
        type=int,
        default=13,
        help="chunk buffers cycled through (default: one per call, as the core bench does)",
    )
    p.add_argument("--repeats", type=int, default=11)
    p.add_argument("--reference", action="store_true", help="also time the reference backend")
    p.add_argument(
        "--evict-mib",
        type=int,
        default=1024,
        help="overwrite this much memory before every figure so it starts cold (0: off)",
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    unknown = [x for x in args.policies if x not in POLICIES]
    if unknown:
        raise SystemExit(f"--policies: expected names from {sorted(POLICIES)}, given {unknown}")

    print(f"bench_arm: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}")
    print(f"host: {host_info().describe()}; extension: {_C.isa()}; torch {torch.__version__}")
    print(f"pool {args.pool_mib} MiB per shape, median (min-max) of {args.repeats} runs, GB/s = 1e9 B/s")
    rng = random.Random(args.seed)
    scratch = torch.empty(args.evict_mib * MIB, dtype=torch.uint8) if args.evict_mib else None

    def timed(run: Callable[[int], None], nbytes: int) -> tuple[float, float, float]:
        if scratch is not None:
            scratch.fill_(rng.randrange(256))
        return _gbps(nbytes, run, args.repeats)

    for name in args.shapes:
        _bench_shape(ALL_SHAPES[name], args, timed, rng)


if __name__ == "__main__":
    main()
