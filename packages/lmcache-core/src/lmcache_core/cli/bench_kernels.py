"""``lmcache-core bench kernels``: gather and scatter GB/s next to the memcpy roof and the reference.

Parses the options, selects the backend, calls :func:`lmcache_core.bench.kernels.run` (what is
measured and how: see that module) and prints its report as tables or one JSON document. Exit
status 1 when a timed call is not bit-exact with the reference, 2 for a bad option.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from lmcache_core.bench.kernels import MIB, MIN_POOL, POOL_LLC_FACTOR, QUICK_POOL, QUICK_REPEATS
from lmcache_core.bench.pool import QUICK_LAYERS, QUICK_TOKENS, SHAPES
from lmcache_core.cli.args import add_output_flags, add_quick_flag, bench_error
from lmcache_core.cli.errors import CLIError
from lmcache_core.cli.table import format_table

if TYPE_CHECKING:
    from lmcache_core.bench.kernels import KernelsReport, OpResult

NAME = "bench kernels"
HELP = "gather/scatter GB/s of a backend and of the reference, next to the memcpy roof"


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
        "--repeats",
        type=int,
        default=None,
        help=f"timed runs per figure (default 10, --quick {QUICK_REPEATS})",
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
    add_quick_flag(
        parser,
        f"small shapes ({QUICK_LAYERS} layers, {QUICK_TOKENS}-token chunks), small pool, {QUICK_REPEATS} "
        "repeats: a smoke run in seconds; its numbers are cache bandwidth, not memory bandwidth",
    )
    add_output_flags(parser)


# ---- output ---------------------------------------------------------------------------------


def render(report: KernelsReport) -> str:
    """The report as text: a header, one table per shape, the correctness line and the notes."""
    doc, results = report.to_json(), report.results
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


def render_plugin(doc: dict[str, Any]) -> str:
    """A plugin kernel bench's report (:mod:`lmcache_core.bench.array_kernels`) as text."""
    lines = [
        f"lmcache-core bench kernels: backend {doc['backend']}, median of {doc['repeats']} runs (min-max), "
        f"{doc['date']}",
        f"roof: {doc['roof']}, same bytes",
        "GB/s = chunk bytes / seconds (1e9 B/s, each byte counted once)",
        "",
    ]
    rows = [
        [
            r["case"],
            r["op"],
            f"{r['chunk_bytes'] / MIB:.2f}",
            _stats(r["kernel_gbps"]),
            _stats(r["roof_gbps"]),
            f"{r['ratio_kernel_roof']:.2f}",
            "yes" if r["verified"] else "NO",
        ]
        for r in doc["results"]
    ]
    headers = ["case", "op", "chunk MiB", "kernel GB/s", "roof GB/s", "kern/roof", "bit-exact"]
    lines.append(format_table(headers, rows, indent="  "))
    lines += [f"note: {n}" for n in doc["notes"]]
    return "\n".join(lines)


def _stats(s: dict[str, Any]) -> str:
    return f"{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})"


def _run_plugin(args: argparse.Namespace) -> int:
    from lmcache_core.bench import array_kernels

    quick = bool(args.quick)
    repeats = args.repeats or (QUICK_REPEATS if quick else 10)
    doc = array_kernels.run(
        args.backend, quick=quick, repeats=repeats, warmup=args.warmup, pool_mib=args.pool_mib, seed=args.seed
    )
    print(json.dumps(doc, indent=2) if args.json else render_plugin(doc))
    sys.stdout.flush()
    return 0 if doc["all_verified"] else 1


def run(args: argparse.Namespace) -> int:
    from lmcache_core.bench import array_kernels, kernels

    if args.backend is not None and args.backend in array_kernels.available():
        return _run_plugin(args)
    from lmcache_core.cli.progress import Progress
    from lmcache_core.selection import select_backend

    try:
        plan = kernels.make_plan(
            device=args.device,
            shapes=args.shapes,
            repeats=args.repeats,
            warmup=args.warmup,
            threads=args.threads,
            pool_mib=args.pool_mib,
            seed=args.seed,
            quick=args.quick,
        )
    except ValueError as e:
        raise bench_error(e, args) from None
    try:
        selection = select_backend(plan.device, args.backend)
    except (ValueError, RuntimeError) as e:
        what = f"--backend {args.backend!r}" if args.backend else "backend selection"
        raise CLIError(f"{what} for device {plan.device!r}: {e}") from None
    progress = Progress(enabled=not args.no_progress)
    try:
        report = kernels.run(plan, selection.backend, selection=selection.why, progress=progress)
    finally:
        progress.close()
    print(json.dumps(report.to_json(), indent=2) if args.json else render(report))
    sys.stdout.flush()
    return 0 if report.all_verified else 1
