"""``lmcache-core bench server``: the cache server's store/retrieve GB/s and lookup latency with
1, 2, 4 concurrent clients, each beside the in-process CacheEngine on the same data
(:mod:`lmcache_core.bench.server`). Exit status 2 for a bad option or a failed run (a worker
that retrieved wrong bytes included)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from lmcache_core.cli.args import add_output_flags, add_quick_flag, positive_int
from lmcache_core.cli.table import format_table

NAME = "bench server"
HELP = "store/retrieve GB/s and lookup p50/p99 through lmcache-core serve, next to in-process"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clients", default="1,2,4", help="concurrent client counts (default 1,2,4)")
    parser.add_argument("--tokens", type=positive_int, default=2048, help="tokens per prompt (default 2048)")
    parser.add_argument("--prompts", type=positive_int, default=4, help="prompts per client (default 4)")
    parser.add_argument("--layers", type=positive_int, default=8, help="KV layers (default 8)")
    parser.add_argument("--heads", type=positive_int, default=8, help="KV heads (default 8)")
    parser.add_argument("--head-dim", type=positive_int, default=128, help="head size (default 128)")
    parser.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"))
    parser.add_argument("--chunk-size", type=positive_int, default=256, help="tokens per chunk (default 256)")
    parser.add_argument("--lookups", type=positive_int, default=100, help="lookups per prompt (default 100)")
    parser.add_argument("--rounds", type=positive_int, default=3, help="measurements per cell, median shown")
    add_quick_flag(parser, "tiny sizes, 1 round, clients 1,2: a smoke run")
    add_output_flags(parser)


def render(doc: dict[str, Any]) -> str:
    p = doc["params"]
    head = (
        f"{p['tokens']} tokens/prompt x {p['prompts']} prompts/client, {p['layers']} layers x {p['heads']} heads x "
        f"{p['head_dim']} {p['dtype']} ({doc['prompt_bytes'] / 2**20:.1f} MiB a prompt), chunk {p['chunk_size']}, "
        f"median of {p['rounds']}"
    )
    rows = []
    for r in doc["results"]:
        s, i, q = r["server"], r["inproc"], r["ratio"]
        rows.append([r["clients"], f"{s['store_gbps']:.2f}", f"{i['store_gbps']:.2f}", f"{q['store_gbps']:.2f}x",
                     f"{s['retrieve_gbps']:.2f}", f"{i['retrieve_gbps']:.2f}", f"{q['retrieve_gbps']:.2f}x",
                     f"{s['lookup_p50_ms']:.3f}", f"{s['lookup_p99_ms']:.3f}", f"{i['lookup_p99_ms']:.3f}"])  # fmt: skip
    table = format_table(
        ["clients", "store GB/s server", "in-proc", "ratio", "retrieve GB/s server", "in-proc", "ratio",
         "lookup p50 ms", "p99 ms", "in-proc p99 ms"],
        rows,
    )  # fmt: skip
    t = doc["targets"]
    verdict = (
        f"targets: ratio >= {t['ratio_min']} -> worst {t['ratio_worst']:.2f}x ({'met' if t['ratio_met'] else 'NOT met'}); "
        f"lookup p99 < {t['lookup_p99_ms_max']} ms -> worst {t['lookup_p99_ms_worst']:.3f} ms "
        f"({'met' if t['lookup_met'] else 'NOT met'})"
    )
    return "\n".join([head, "", table, "", verdict])


def run(args: argparse.Namespace) -> int:
    from lmcache_core.bench.server import BenchError, Params, measure
    from lmcache_core.cli.args import bench_error
    from lmcache_core.cli.progress import Progress

    try:
        clients = [int(c) for c in args.clients.split(",") if c.strip()]
    except ValueError:
        clients = []
    if not clients or min(clients) <= 0:
        raise bench_error(ValueError(f"clients: expected counts like 1,2,4, given {args.clients!r}"), args)
    fields = dict(tokens=args.tokens, prompts=args.prompts, layers=args.layers, heads=args.heads,
                  head_dim=args.head_dim, dtype=args.dtype, chunk_size=args.chunk_size, lookups=args.lookups,
                  rounds=args.rounds)  # fmt: skip
    if args.quick:
        fields.update(
            tokens=256, prompts=2, layers=2, heads=2, head_dim=64, chunk_size=64, lookups=20, rounds=1
        )
        clients = [c for c in clients if c <= 2] or [1]
    progress = Progress(enabled=not args.no_progress)
    try:
        doc = measure(Params(**fields), clients, progress=progress.phase)
    except (ValueError, BenchError) as e:
        raise bench_error(e, args) from None
    finally:
        progress.close()
    print(json.dumps(doc, indent=2) if args.json else render(doc))
    return 0
