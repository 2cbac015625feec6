"""``lmcache-core bench serde``: ratio, encode/decode GB/s per core and accuracy of codec chains.

Parses the options, calls :func:`lmcache_core.bench.serde.measure` (what is measured and how: see
that module) and prints its document as a table or JSON. Exit status 2 for a bad option.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from lmcache_core.cli.args import add_output_flags, positive_int
from lmcache_core.cli.table import format_table

NAME = "bench serde"
HELP = "codec chains on real KV of the demo model: ratio, encode/decode GB/s per core, accuracy"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from lmcache_core.bench.serde import DEFAULT_CHAINS, DTYPES

    parser.add_argument("--chain", action="append", metavar="CHAIN",
                        help=f"a chain to measure, repeatable (default: {' '.join(DEFAULT_CHAINS)})")  # fmt: skip
    parser.add_argument("--dtype", action="append", choices=("bfloat16", "float16", "float32"),
                        help=f"KV dtype, repeatable (default: {' '.join(DTYPES)})")  # fmt: skip
    parser.add_argument(
        "--tokens", type=positive_int, default=256, help="tokens of KV per chunk (default 256)"
    )
    parser.add_argument("--continue-tokens", type=positive_int, default=32,
                        help="tokens scored after the prompt for the logprob error (default 32)")  # fmt: skip
    parser.add_argument(
        "--repeats", type=positive_int, default=5, help="timed runs, best counted (default 5)"
    )
    parser.add_argument(
        "--model-dir", default=None, help="where the demo model is built (default: a temp dir)"
    )
    parser.add_argument("--init-range", type=float, default=None,
                        help="initializer_range of the demo model (default 0.3; real checkpoints ~0.02)")  # fmt: skip
    parser.add_argument("--key-file", default=None, help="aesgcm master key (default: a fresh one)")
    add_output_flags(parser)


def render(doc: dict[str, Any]) -> str:
    m = doc["model"]
    lines = [
        f"KV of the demo model (initializer_range {m['initializer_range']}): {m['num_layers']} layers, hidden_kv {m['hidden_kv']}, {m['tokens']} tokens "
        f"(|x| max {doc['kv_abs_max']:.3g}, mean {doc['kv_abs_mean']:.3g}); one thread, best of {doc['repeats']}",
        "",
    ]
    rows = []
    for r in doc["results"]:
        acc = (
            "exact"
            if r.get("exact")
            else ("WRONG" if r["lossless"] else f"{r['max_abs_err']:.3g} / {r['mean_abs_err']:.3g}")
        )
        lp = (f"{r['max_logprob_diff']:.3g} ({r['greedy_match']}/{r['greedy_of']})"
              if "max_logprob_diff" in r else "")  # fmt: skip
        rows.append([r["chain"], r["dtype"], f"{r['ratio']:.3f}", f"{r['encode_gbps']:.2f}",
                     f"{r['decode_gbps']:.2f}", acc, lp])  # fmt: skip
    lines.append(format_table(
        ["chain", "dtype", "ratio", "enc GB/s", "dec GB/s", "max / mean abs err", "max logprob diff (greedy)"], rows
    ))  # fmt: skip
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from lmcache_core.bench.serde import DEFAULT_CHAINS, DTYPES, measure
    from lmcache_core.cli.args import bench_error
    from lmcache_core.cli.progress import Progress

    progress = Progress(enabled=not args.no_progress)
    try:
        doc = measure(
            chains=args.chain or DEFAULT_CHAINS,
            dtypes=args.dtype or DTYPES,
            tokens=args.tokens,
            continue_tokens=args.continue_tokens,
            repeats=args.repeats,
            model_dir=args.model_dir,
            key_file=args.key_file,
            init_range=args.init_range,
            progress=progress,
        )
    except (ValueError, ImportError) as e:
        raise bench_error(e, args) from None
    finally:
        progress.close()
    print(json.dumps(doc, indent=2) if args.json else render(doc))
    return 0
