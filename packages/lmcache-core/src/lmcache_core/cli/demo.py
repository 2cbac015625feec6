"""``lmcache-core demo``: a multi-turn chat workload over the CacheEngine, on embedded defaults.

The engine here is synthetic and says so: a small stack of matrix products stands in for a
model's prefill and writes K and V into paged memory in vLLM's CPU layout
(``[num_blocks, num_kv_heads, block_size, 2*head_size]`` per layer). Everything lmcache-core does
is real: layout detection, backend selection, gather into L1 host chunks, prefix lookup, scatter
back into freshly allocated pages. Each turn's loaded KV is checked bit for bit against a full
recompute, so the speed-up shown is for correct KV.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

NAME = "demo"
HELP = "multi-turn chat over the cache engine (synthetic model, real cache path)"


@dataclass
class TurnResult:
    conversation: int
    turn: int
    prompt_tokens: int
    hit_tokens: int
    ttft_miss_ms: float
    ttft_hit_ms: float
    bytes_loaded: int
    identical: bool


class SyntheticModel:
    """Prefill stand-in: per layer ``x = tanh(x @ W_l)``, K and V projected from ``x``.

    KV of token ``t`` depends on its id and position only, so a cached prefix must reproduce a
    recompute exactly. Cost grows linearly with the tokens prefilled, as a prefill does.
    """

    def __init__(
        self,
        num_layers: int,
        num_kv_heads: int,
        head_size: int,
        width: int,
        vocab: int,
        num_blocks: int,
        block_size: int,
    ) -> None:
        import torch

        g = torch.Generator().manual_seed(0)
        self.L, self.H, self.D, self.bs = num_layers, num_kv_heads, head_size, block_size
        self.embed = torch.randn(vocab, width, generator=g)
        self.pos = torch.randn(8192, width, generator=g) * 0.1
        self.w = [torch.randn(width, width, generator=g) / width**0.5 for _ in range(num_layers)]
        self.wkv = [
            torch.randn(width, 2 * num_kv_heads * head_size, generator=g) / width**0.5
            for _ in range(num_layers)
        ]
        self.kv = [
            torch.zeros(num_blocks, num_kv_heads, block_size, 2 * head_size) for _ in range(num_layers)
        ]
        self.num_blocks = num_blocks

    def prefill(self, tokens: list[int], slots: torch.Tensor, start: int) -> None:
        """Compute and write KV of ``tokens[start:]`` into their slots."""
        import torch

        if start >= len(tokens):
            return
        ids = torch.tensor(tokens[start:])
        x = self.embed[ids] + self.pos[start : len(tokens)]
        s = slots[start:]
        blk, off = s // self.bs, s % self.bs
        for layer in range(self.L):
            x = torch.tanh(x @ self.w[layer])
            kv = (x @ self.wkv[layer]).view(-1, 2, self.H, self.D)
            view = self.kv[layer].view(self.num_blocks, self.H, 2, self.bs, self.D)
            for k_or_v in range(2):
                view[blk, :, k_or_v, off] = kv[:, k_or_v]


def _slots(num_tokens: int, block_size: int, free_blocks: list[int]) -> torch.Tensor:
    import torch

    need = (num_tokens + block_size - 1) // block_size
    blocks = torch.tensor([free_blocks[i % len(free_blocks)] for i in range(need)])
    return (blocks[:, None] * block_size + torch.arange(block_size)).flatten()[:num_tokens].long()


def run(args: argparse.Namespace) -> int:
    import random

    import torch

    from lmcache_core import CacheEngine, CacheEngineConfig
    from lmcache_core.layout_registry import LayoutHints

    torch.set_num_threads(args.threads)
    block_size, num_blocks = 16, args.num_blocks
    model = SyntheticModel(
        args.layers, args.kv_heads, args.head_size, args.width, 32000, num_blocks, block_size
    )
    engine = CacheEngine(
        CacheEngineConfig(
            model_id="synthetic-demo", chunk_size=args.chunk_size, l1_bytes=args.l1_gib * 2**30
        ),
        layout_hints=LayoutHints(kind="vllm_cpu", block_size=block_size),
    )
    engine.register_kv_caches(model.kv)
    rng = random.Random(0)
    results: list[TurnResult] = []
    print(
        f"synthetic model: {args.layers} layers, {args.kv_heads} kv heads x {args.head_size}, fp32, "
        f"vLLM CPU layout, block {block_size}; chunk {args.chunk_size} tokens"
    )
    print(
        f"{'conv':>4} {'turn':>4} {'prompt':>7} {'hit':>6} {'TTFT miss ms':>13} {'TTFT hit ms':>12} "
        f"{'speed-up':>9} {'MiB loaded':>11} {'KV identical':>13}"
    )
    for conv in range(args.conversations):
        history = [rng.randrange(32000) for _ in range(args.system_tokens)]
        for turn in range(args.turns):
            history += [rng.randrange(32000) for _ in range(args.turn_tokens)]
            prompt = list(history)
            free = rng.sample(range(num_blocks), num_blocks)
            slots_miss = _slots(len(prompt), block_size, free[: num_blocks // 2])
            slots_hit = _slots(len(prompt), block_size, free[num_blocks // 2 :])

            t0 = time.perf_counter()
            model.prefill(prompt, slots_miss, 0)
            ttft_miss = time.perf_counter() - t0
            expected = [t.clone() for t in model.kv]

            before = engine.stats.retrieved_bytes
            t0 = time.perf_counter()
            hit = engine.lookup(prompt)
            loaded = engine.retrieve(prompt, model.kv, slots_hit) if hit else 0
            model.prefill(prompt, slots_hit, loaded)
            ttft_hit = time.perf_counter() - t0
            engine.store(prompt, model.kv, slots_hit)  # after the first token, as an engine would

            identical = _same_rows(expected, slots_miss, model.kv, slots_hit, model)
            r = TurnResult(
                conv,
                turn,
                len(prompt),
                hit,
                ttft_miss * 1e3,
                ttft_hit * 1e3,
                engine.stats.retrieved_bytes - before,
                identical,
            )
            results.append(r)
            print(
                f"{conv:>4} {turn:>4} {r.prompt_tokens:>7} {r.hit_tokens:>6} {r.ttft_miss_ms:>13.1f} "
                f"{r.ttft_hit_ms:>12.1f} {r.ttft_miss_ms / r.ttft_hit_ms:>8.2f}x "
                f"{r.bytes_loaded / 2**20:>11.1f} {'yes' if identical else 'NO':>13}"
            )
    later = [r for r in results if r.turn > 0]
    miss = sum(r.ttft_miss_ms for r in later)
    hit_ms = sum(r.ttft_hit_ms for r in later)
    st = engine.stats
    print(
        f"\nturns after the first: TTFT {miss:.0f} ms without lmcache-core, {hit_ms:.0f} ms with "
        f"({miss / hit_ms:.2f}x); hit tokens {sum(r.hit_tokens for r in later)}"
    )
    print(
        f"stored {st.stored_chunks} chunks ({st.stored_bytes / 2**20:.1f} MiB), loaded "
        f"{st.retrieved_chunks} chunks ({st.retrieved_bytes / 2**20:.1f} MiB); backend "
        f"{engine.backend.name} (kernels: {engine.backend.kernel_name(engine.spec.groups[0])})"
    )
    ok = all(r.identical for r in results)
    print("every turn's KV identical to a full recompute:", "yes" if ok else "NO")
    return 0 if ok else 1


def _same_rows(
    expected: list[torch.Tensor],
    slots_a: torch.Tensor,
    actual: list[torch.Tensor],
    slots_b: torch.Tensor,
    model: SyntheticModel,
) -> bool:
    import torch

    def rows(kv: list[torch.Tensor], slots: torch.Tensor) -> torch.Tensor:
        blk, off = slots // model.bs, slots % model.bs
        return torch.stack(
            [t.view(model.num_blocks, model.H, 2, model.bs, model.D)[blk, :, :, off] for t in kv]
        )

    return torch.equal(rows(expected, slots_a).view(torch.int32), rows(actual, slots_b).view(torch.int32))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--conversations", type=int, default=2)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--system-tokens", type=int, default=512, help="shared start of each conversation")
    parser.add_argument("--turn-tokens", type=int, default=384, help="tokens each turn adds")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-size", type=int, default=64)
    parser.add_argument("--width", type=int, default=1024, help="synthetic model width")
    parser.add_argument("--num-blocks", type=int, default=1024)
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--l1-gib", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
