"""``lmcache-core bench serve``: lmcache-core against vLLM as users run it, over the OpenAI API.

Every configuration is a real ``vllm serve`` on 127.0.0.1 (:mod:`.vllm_server`) with vLLM's
prefix cache ON, float32, a random-weight Llama built locally, the same pinned CPU binding
(:class:`~.vllm_server.CpuBinding`; each server's logged binding is reported) and a KV space
of ``ceil(working set / ws_factor)`` tokens, so the chat's working set does not fit in vLLM's own
cache:

1. ``vllm`` (plain vLLM) and ``lmcache`` (the connector, L1 larger than the working set, a
   filesystem L2 in the work directory) both start and stay up; then ``repeats`` repetitions
   of the no-reuse load (:class:`~.serve_load.NoReuseSpec`) and the multi-round chat
   (:class:`~.serve_load.ChatSpec`, after an unmeasured request carrying its system prompt)
   run on one server, then the same load on the other (which goes first alternates), each
   repetition with its own seeds. Pairs measured back to back see the same host load; the
   ratios reported are the medians of the repetitions' ratios.
2. ``lmcache-restart``: a fresh connector server on the same L2 replays every repetition's
   first round; its TTFT is compared with the same turns on ``lmcache`` (which had only the
   system prompt cached).
3. Optionally (``vllm_bench``) vLLM's own ``vllm bench serve --dataset-name prefix_repetition``
   against ``vllm`` and ``lmcache``.

Reported per configuration and load: TTFT p50/p90/p99, mean inter-token latency, requests/s,
output tokens/s, and the hit tokens read from each server's ``/metrics`` (local prefix cache,
connector) with the hit tokens the workload's structure predicts for the connector server (a
difference is a bug). Greedy outputs must be identical across configurations. A PNG shows the
chat's TTFT CDF and TTFT p50 by round.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lmcache_core.bench.progress import NoProgress, ProgressSink
from lmcache_core.bench.serve_load import (
    ChatSpec,
    NoReuseSpec,
    Result,
    percentile,
    run_chat,
    run_first_round,
    run_no_reuse,
    summarize,
    system_prompt,
    warm_up,
    words,
)
from lmcache_core.bench.tiny_llama import TinyLlamaSpec
from lmcache_core.bench.vllm_server import (
    CpuBinding,
    ServerConfig,
    VllmServer,
    metrics_delta,
    scrape_metrics,
)

#: The serving model: 4 layers, hidden 512 (8 heads, 4 KV heads of 64), vocabulary 4096.
SERVE_SPEC = TinyLlamaSpec(
    num_layers=4,
    hidden_size=512,
    num_heads=8,
    num_kv_heads=4,
    intermediate_size=1408,
    vocab_size=4096,
    max_position_embeddings=8192,
)

TARGETS = {
    "no_reuse_rps_ratio_min": 0.97,
    "no_reuse_ttft_p50_ratio_max": 1.05,
    "chat_ttft_p50_ratio_max": 0.3,
    "chat_rps_ratio_min": 1.5,
    "restart_ttft_p50_ratio_max": 0.3,
}


@dataclass
class ServeBenchConfig:
    workdir: Path
    chat: ChatSpec = field(default_factory=ChatSpec)
    no_reuse: NoReuseSpec = field(default_factory=NoReuseSpec)
    model_spec: TinyLlamaSpec = SERVE_SPEC
    model: str | None = None
    block_size: int = 32
    chunk_size: int = 32
    ws_factor: float = 3.0
    max_num_seqs: int = 2
    l1_bytes: str = "4G"
    binding: CpuBinding = field(default_factory=CpuBinding.default)
    vllm_bench: bool = False
    restart: bool = True
    load_async: str = "l2"
    repeats: int = 3


def _loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _rows(results: list[Result]) -> list[dict[str, Any]]:
    return [
        {
            "key": r.key,
            "round": r.round,
            "prompt_tokens": r.prompt_tokens,
            "expected_hit": r.expected_hit,
            "ttft_s": r.ttft_s,
            "tokens": r.tokens,
        }
        for r in results
    ]


def _hits(delta: dict[str, float]) -> dict[str, float]:
    local = delta["vllm:prefix_cache_hits_total"]
    ext = delta["vllm:external_prefix_cache_hits_total"]
    return {
        "local_hit_tokens": local,
        "connector_hit_tokens": ext,
        "hit_tokens": local + ext,
        "declined_tokens": delta["vllm:lmcache_core_declined_tokens_total"],
        "l2_matched_tokens": delta["vllm:lmcache_core_l2_matched_tokens_total"],
        "load_failed_tokens": delta["vllm:lmcache_core_load_failed_tokens_total"],
        "preemptions": delta["vllm:num_preemptions_total"],
        "stores": delta["vllm:lmcache_core_stores_total"],
        "store_seconds": delta["vllm:lmcache_core_store_seconds_total"],
        "async_loads": delta["vllm:lmcache_core_async_loads_total"],
        "prompt_tokens": delta["vllm:prompt_tokens_total"],
    }


def repetition(cfg: ServeBenchConfig, rep: int) -> tuple[ChatSpec, NoReuseSpec]:
    """Repetition ``rep``'s loads: the configured ones with their seeds moved on by ``rep``, so
    no repetition finds another's prompts in any cache."""
    return (dataclasses.replace(cfg.chat, seed=cfg.chat.seed + 1000 * rep),
            dataclasses.replace(cfg.no_reuse, seed=cfg.no_reuse.seed + 1000 * rep))  # fmt: skip


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Repetitions of one load on one server as one measurement: the median of each summary
    figure (request and expected-hit counts summed), counters summed, rows pooled."""
    if not runs:
        raise ValueError("runs: expected at least one measurement, given none")
    summary = {k: statistics.median(r["summary"][k] for r in runs) for k in runs[0]["summary"]}
    for k in ("requests", "expected_hit_tokens"):
        summary[k] = sum(r["summary"][k] for r in runs)
    return {
        "name": runs[0]["name"],
        "wall_s": sum(r["wall_s"] for r in runs),
        "summary": summary,
        "metrics": {k: sum(r["metrics"][k] for r in runs) for k in runs[0]["metrics"]},
        # keys name the repetition too: every repetition sends the same keys
        "rows": [{**row, "key": f"{i}:{row['key']}"} for i, r in enumerate(runs) for row in r["rows"]],
        "loadavg": [
            round(statistics.median(r["loadavg"][i] for r in runs), 2) for i in range(len(runs[0]["loadavg"]))
        ],
    }


def _measure(server: VllmServer, name: str, fn: Any) -> dict[str, Any]:
    before = scrape_metrics(server.url)
    t0 = time.monotonic()
    results: list[Result] = fn()
    time.sleep(1.0)  # vLLM publishes its counters once per logging interval step
    after = scrape_metrics(server.url)
    return {
        "name": name,
        "wall_s": time.monotonic() - t0,
        "summary": summarize(results),
        "metrics": _hits(metrics_delta(after, before)),
        "rows": _rows(results),
        "loadavg": _loadavg(),
    }


def _vllm_bench(server: VllmServer, model: str, workdir: Path, name: str) -> dict[str, Any]:
    """``vllm bench serve`` with its prefix-repetition dataset; its JSON result."""
    out = workdir / f"vllm-bench-{name}.json"
    args = [sys.executable, "-m", "lmcache_core.bench.vllm_cli", "bench", "serve", "--backend", "vllm",
            "--base-url", server.url, "--model", "model", "--tokenizer", model,
            "--dataset-name", "prefix_repetition", "--prefix-repetition-prefix-len", "512",
            "--prefix-repetition-suffix-len", "128", "--prefix-repetition-num-prefixes", "4",
            "--prefix-repetition-output-len", "32", "--num-prompts", "32", "--request-rate", "2",
            "--seed", "0", "--ignore-eos", "--save-result", "--result-dir", str(workdir),
            "--result-filename", out.name]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, timeout=1800, check=False)
    (workdir / f"vllm-bench-{name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or not out.exists():
        return {
            "error": f"vllm bench serve ended with {proc.returncode}: {(proc.stdout + proc.stderr)[-1500:]}"
        }
    doc = json.loads(out.read_text())
    keep = ("completed", "request_throughput", "output_throughput", "median_ttft_ms", "p99_ttft_ms",
            "mean_itl_ms", "median_itl_ms")  # fmt: skip
    return {k: doc.get(k) for k in keep}


def _same_tokens(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Keys whose greedy tokens differ between two measurements of the same load."""
    want = {r["key"]: r["tokens"] for r in a["rows"]}
    return [r["key"] for r in b["rows"] if r["key"] in want and r["tokens"] != want[r["key"]]]


def measure(cfg: ServeBenchConfig, progress: ProgressSink | None = None) -> dict[str, Any]:
    """Run every configuration; returns the report document (see the module docstring)."""
    from lmcache_core.bench.tiny_llama import build_tiny_llama

    progress = progress or NoProgress()
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    if cfg.repeats < 1:
        raise ValueError(f"repeats: expected at least 1 repetition, given {cfg.repeats}")
    progress.begin(5 + (1 if cfg.restart else 0))
    progress.phase("building the random-weight model")
    model = cfg.model or str(build_tiny_llama(cfg.workdir / "models", cfg.model_spec))
    vocab = cfg.model_spec.vocab_size
    bs = cfg.block_size
    ws_tokens = cfg.chat.working_set_tokens()
    max_len = math.ceil((cfg.chat.history_tokens() + cfg.chat.answer_tokens) / bs) * bs
    max_len = max(max_len, math.ceil((cfg.no_reuse.prompt_tokens + cfg.no_reuse.answer_tokens) / bs) * bs)
    # at least max_num_seqs requests of the longest length at once: a preempted request is
    # recomputed and hits again, which the workload's expected hits cannot predict
    num_blocks = max(
        math.ceil(ws_tokens / cfg.ws_factor / bs), cfg.max_num_seqs * math.ceil(max_len / bs) + 1
    )
    l2_dir = cfg.workdir / "l2"
    connector = {"chunk_size": cfg.chunk_size, "l1_bytes": cfg.l1_bytes, "l2_urls": [f"fs://{l2_dir}"],
                 "load_async": cfg.load_async}  # fmt: skip
    doc: dict[str, Any] = {
        "host": f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "model": asdict(cfg.model_spec) if cfg.model is None else {"path": cfg.model},
        "chat": asdict(cfg.chat),
        "no_reuse": asdict(cfg.no_reuse),
        "block_size": bs,
        "chunk_size": cfg.chunk_size,
        "kv_blocks": num_blocks,
        "kv_tokens": num_blocks * bs,
        "working_set_tokens": ws_tokens,
        "max_model_len": max_len,
        "max_num_seqs": cfg.max_num_seqs,
        "binding": asdict(cfg.binding),
        "connector": connector,
        "repeats": cfg.repeats,
        "loadavg_start": _loadavg(),
        "configs": {},
    }

    def waiting(name: str) -> Any:
        return lambda s: progress.note(
            f"  {name}: vllm serve starting ({s:.0f} s; engines take minutes here)"
        )

    def server(name: str, conn: dict[str, Any] | None) -> VllmServer:
        sc = ServerConfig(name, model, conn, num_blocks, bs, max_len, cfg.max_num_seqs, cfg.binding)
        return VllmServer(sc, cfg.workdir, on_wait=waiting(name))

    with contextlib.ExitStack() as stack:
        pair: dict[str, VllmServer] = {}
        for name, conn in (("vllm", None), ("lmcache", connector)):
            progress.phase(f"{name}: starting vllm serve")
            s = stack.enter_context(server(name, conn))
            pair[name] = s
            doc["configs"][name] = {"startup_s": s.startup_s, "binding": s.binding_report(),
                                    "no_reuse_runs": [], "chat_runs": []}  # fmt: skip
            progress.note(f"  {name}: up in {s.startup_s:.0f} s; binding {doc['configs'][name]['binding']}")
            # first requests cost more (allocations, first shapes): one unmeasured request
            warm_up(s.url, words(random.Random("warm-up"), cfg.no_reuse.prompt_tokens, vocab))
        progress.phase(f"{cfg.repeats} repetitions of no reuse then chat, the two servers alternating")
        for rep in range(cfg.repeats):
            chat, no_reuse = repetition(cfg, rep)
            order = list(pair) if rep % 2 == 0 else list(pair)[::-1]
            for name in order:
                progress.note(f"  repetition {rep + 1}/{cfg.repeats}: {name}, no reuse")
                s = pair[name]
                doc["configs"][name]["no_reuse_runs"].append(
                    _measure(s, "no_reuse", functools.partial(run_no_reuse, s.url, no_reuse, vocab))
                )
            for name in order:
                progress.note(f"  repetition {rep + 1}/{cfg.repeats}: {name}, chat")
                s = pair[name]
                # the system prompt served once, unmeasured, so every first turn can hit on it
                warm_up(s.url, system_prompt(chat, vocab))
                doc["configs"][name]["chat_runs"].append(
                    _measure(s, "chat", functools.partial(run_chat, s.url, chat, vocab, bs))
                )
        for name, s in pair.items():
            entry = doc["configs"][name]
            entry["no_reuse"] = combine(entry["no_reuse_runs"])
            entry["chat"] = combine(entry["chat_runs"])
            if cfg.vllm_bench:
                progress.note(f"  {name}: vllm bench serve (prefix_repetition)")
                entry["vllm_bench_prefix_repetition"] = _vllm_bench(s, model, cfg.workdir, name)
    if cfg.restart:
        progress.phase("lmcache-restart: a fresh server on the same L2 replays every round 0")
        with server("lmcache-restart", connector) as s:
            entry = {"startup_s": s.startup_s, "binding": s.binding_report(), "replay_runs": []}
            progress.note(f"  lmcache-restart: up in {s.startup_s:.0f} s; binding {entry['binding']}")
            warm_up(s.url, words(random.Random("restart-warm-up"), 64, vocab))
            for rep in range(cfg.repeats):
                chat, _ = repetition(cfg, rep)
                entry["replay_runs"].append(
                    _measure(s, "replay", functools.partial(run_first_round, s.url, chat, vocab, bs))
                )
            entry["replay"] = combine(entry["replay_runs"])
            doc["configs"]["lmcache-restart"] = entry
    progress.phase("comparing")
    doc["loadavg_end"] = _loadavg()
    doc["comparison"] = compare(doc)
    return doc


def _round_p50(m: dict[str, Any], rnd: int) -> float:
    return percentile([r["ttft_s"] for r in m["rows"] if r["round"] == rnd], 50) * 1e3


def compare(doc: dict[str, Any]) -> dict[str, Any]:
    """Ratios against plain vLLM, targets, hit-token check and output identity."""
    c = doc["configs"]
    v, lm = c["vllm"], c["lmcache"]
    out: dict[str, Any] = {}
    for load in ("no_reuse", "chat"):
        pairs = list(zip(v[f"{load}_runs"], lm[f"{load}_runs"], strict=True))
        # the median of each repetition's ratio: the two servers ran back to back in each
        ttft = [b["summary"]["ttft_p50_ms"] / a["summary"]["ttft_p50_ms"] for a, b in pairs]
        rps = [b["summary"]["requests_per_s"] / a["summary"]["requests_per_s"] for a, b in pairs]
        out[f"{load}_ttft_p50_ratio"] = statistics.median(ttft)
        out[f"{load}_rps_ratio"] = statistics.median(rps)
        out[f"{load}_ttft_p50_ratios"] = ttft
        out[f"{load}_rps_ratios"] = rps
        out[f"{load}_different_outputs"] = _same_tokens(v[load], lm[load])
    # Hit tokens: the connector server caches everything (L1 > working set), so vLLM's local hits
    # plus the connector's (plus any it declined as slower than recomputing) are the workload's,
    # in every repetition.
    checked = [("no_reuse", lm["no_reuse_runs"]), ("chat", lm["chat_runs"])]
    if "lmcache-restart" in c:
        checked.append(("replay", c["lmcache-restart"]["replay_runs"]))
    for load, runs in checked:
        expected = [m["summary"]["expected_hit_tokens"] for m in runs]
        got = [m["metrics"]["hit_tokens"] + m["metrics"]["declined_tokens"] for m in runs]
        out[f"{load}_hit_tokens_expected"] = sum(expected)
        out[f"{load}_hit_tokens_metrics"] = sum(got)
        out[f"{load}_hit_tokens_match"] = all(abs(g - e) < 0.5 for g, e in zip(got, expected, strict=True))
    if "lmcache-restart" in c:
        replay = c["lmcache-restart"]["replay"]
        cold = _round_p50(lm["chat"], 0)
        out["restart_cold_round0_ttft_p50_ms"] = cold
        out["restart_replay_ttft_p50_ms"] = replay["summary"]["ttft_p50_ms"]
        out["restart_ttft_p50_ratio"] = replay["summary"]["ttft_p50_ms"] / cold
        out["restart_different_outputs"] = _same_tokens(lm["chat"], replay)
    t = TARGETS
    met = {
        "no_reuse_rps": out["no_reuse_rps_ratio"] >= t["no_reuse_rps_ratio_min"],
        "no_reuse_ttft_p50": out["no_reuse_ttft_p50_ratio"] <= t["no_reuse_ttft_p50_ratio_max"],
        "chat_ttft_p50": out["chat_ttft_p50_ratio"] <= t["chat_ttft_p50_ratio_max"],
        "chat_rps": out["chat_rps_ratio"] >= t["chat_rps_ratio_min"],
        "identical_outputs": not any(v for k, v in out.items() if k.endswith("different_outputs")),
        "hit_tokens_match_workload": all(v for k, v in out.items() if k.endswith("hit_tokens_match")),
    }
    if "restart_ttft_p50_ratio" in out:
        met["restart_ttft_p50"] = out["restart_ttft_p50_ratio"] <= t["restart_ttft_p50_ratio_max"]
    out["targets"] = t
    out["met"] = met
    out["rounds_ttft_p50_ms"] = {
        name: [_round_p50(c[name]["chat"], r) for r in range(doc["chat"]["rounds"])]
        for name in ("vllm", "lmcache")
    }
    return out


def plot(doc: dict[str, Any], path: Path) -> Path:
    """PNG: the chat's TTFT CDF per configuration, and TTFT p50 by round (restart replay as a
    point on round 0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    c = doc["configs"]
    for name in ("vllm", "lmcache"):
        ttft = sorted(r["ttft_s"] * 1e3 for r in c[name]["chat"]["rows"])
        ax1.step(ttft, [(i + 1) / len(ttft) for i in range(len(ttft))], where="post", label=name)
        ax2.plot(range(len(doc["comparison"]["rounds_ttft_p50_ms"][name])),
                 doc["comparison"]["rounds_ttft_p50_ms"][name], marker="o", label=name)  # fmt: skip
    if "lmcache-restart" in c:
        ax2.plot([0], [doc["comparison"]["restart_replay_ttft_p50_ms"]], marker="*", markersize=12,
                 linestyle="", label="lmcache restart (L2)")  # fmt: skip
    ax1.set_xscale("log")
    # labels at 1, 2 and 5 of each decade, in plain milliseconds
    ax1.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax1.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}"))
    ax1.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax2.set_xticks(range(doc["chat"]["rounds"]))
    ax1.set_xlabel("TTFT (ms)")
    ax1.set_ylabel("fraction of requests")
    ax1.set_title(f"chat TTFT CDF ({doc['chat']['users']} users, working set "
                  f"{doc['working_set_tokens'] / doc['kv_tokens']:.1f}x vLLM KV)")  # fmt: skip
    ax2.set_xlabel("round")
    ax2.set_ylabel("TTFT p50 (ms)")
    ax2.set_title("TTFT p50 by round (vLLM prefix cache on in both)")
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
