"""Codec chains measured on real KV: ratio, encode/decode GB/s per core, accuracy.

The KV comes from the demo model (:mod:`lmcache_core.bench.tiny_llama`, random weights, built
locally) run through transformers on a prompt of random words: ``past_key_values`` laid out as a
stored chunk, ``[num_kv=2, num_layers, num_tokens, hidden_kv]``, cast to each dtype measured.
Random bytes would mislead (they do not compress); this is what the engine's chunks hold.

Per chain and dtype: ``ratio`` (plain bytes / encoded bytes), ``encode_gbps`` and
``decode_gbps`` (plain bytes per second, best of ``repeats``, one thread: torch and blosc2 pinned
to one, so the figure is per core; the tier's threads multiply it), and for lossy chains the max
and mean absolute error of the values. For lossy chains on float32 it also measures what reaches
the model: the prompt's KV goes through the codec into a transformers ``DynamicCache``, the model
scores ``continue_tokens`` more tokens, and the doc reports the largest difference of the logprob
of the exact run's greedy token (``max_logprob_diff``, every position; over the whole vocabulary:
``max_vocab_logprob_diff``) against the exact KV, and how many greedy tokens match.
``fp8:scaling=none`` is a plain cast to fp8 (what LMCache does), the reference for ``fp8``.
"""

from __future__ import annotations

import functools
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

DEFAULT_CHAINS = (
    "zstd", "lz4", "zstd:level=3", "aesgcm", "zstd,aesgcm",
    "fp8", "fp8:scaling=none", "fp8:format=e5m2", "fp8,zstd", "int8", "int8:group=32", "int8,zstd",
)  # fmt: skip
DTYPES = ("bfloat16", "float32")


def gather_kv(model_dir: str | os.PathLike[str], tokens: int, seed: int = 0) -> tuple[Any, Any, Any]:
    """(model, prompt ids ``[1, tokens]``, KV float32 ``[2, num_layers, tokens, hidden_kv]``)."""
    import torch
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(str(model_dir), torch_dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, model.config.vocab_size, (1, tokens), generator=g)
    with torch.no_grad():
        pkv = model(ids, use_cache=True).past_key_values
    layers = [(layer.keys, layer.values) for layer in pkv.layers]
    k = torch.stack([lk[0].transpose(0, 1).reshape(tokens, -1) for lk, _ in layers])
    v = torch.stack([lv[0].transpose(0, 1).reshape(tokens, -1) for _, lv in layers])
    return model, ids, torch.stack([k, v]).contiguous()


def _best(fn: Callable[[], Any], repeats: int) -> tuple[Any, float]:
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def _to_cache(model: Any, kv: Any) -> Any:
    """KV ``[2, L, T, heads*head_size]`` -> a DynamicCache of the model's ``[1, heads, T, hs]``."""
    from transformers import DynamicCache

    cfg = model.config
    heads, hs = cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
    t = kv.shape[2]
    layers = [
        (kv[0, i].view(t, heads, hs).transpose(0, 1)[None].contiguous(),
         kv[1, i].view(t, heads, hs).transpose(0, 1)[None].contiguous())
        for i in range(kv.shape[1])
    ]  # fmt: skip
    return DynamicCache(layers)


def continuation_logprobs(model: Any, prompt: Any, kv: Any, cont: Any) -> Any:
    """Logprobs ``[continue_tokens, vocab]`` of the model reading ``cont`` after a prompt whose KV is ``kv``."""
    import torch

    with torch.no_grad():
        out = model(cont, past_key_values=_to_cache(model, kv), use_cache=True)
    return torch.log_softmax(out.logits[0].float(), dim=-1)


def measure(
    chains: Sequence[str] = DEFAULT_CHAINS,
    dtypes: Sequence[str] = DTYPES,
    tokens: int = 256,
    continue_tokens: int = 32,
    repeats: int = 5,
    model_dir: str | None = None,
    key_file: str | None = None,
    init_range: float | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """Measure ``chains`` on ``dtypes`` (see the module docstring); returns a JSON-able doc.
    ``init_range``: the demo model's ``initializer_range`` (default the bench model's 0.3; real
    checkpoints are near 0.02, whose KV has many values below fp8 e4m3's normal range)."""
    import dataclasses

    import numpy as np
    import torch

    from lmcache_core.bench.tiny_llama import BENCH_SPEC, build_tiny_llama
    from lmcache_core.serde import parse_chain

    for name, v in (("tokens", tokens), ("continue_tokens", continue_tokens), ("repeats", repeats)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name}: expected a positive int, given {v!r}")
    for d in dtypes:
        if d not in ("bfloat16", "float16", "float32"):
            raise ValueError(f"dtypes: expected bfloat16, float16 or float32, given {d!r}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp = None
    try:
        if key_file is None and any("aesgcm" in c for c in chains):
            tmp = tempfile.TemporaryDirectory(prefix="lmcache-serde-")
            key_file = os.path.join(tmp.name, "master.key")
            with open(os.open(key_file, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as f:
                f.write(os.urandom(32))
        root = model_dir or os.path.join(tempfile.gettempdir(), "lmcache-core-models")
        model_spec = (
            BENCH_SPEC
            if init_range is None
            else dataclasses.replace(BENCH_SPEC, initializer_range=init_range)
        )
        model, prompt, kv = gather_kv(build_tiny_llama(Path(root), model_spec), tokens + continue_tokens)
        kv = kv[:, :, :tokens].contiguous()
        ids = prompt[:, :tokens]
        cont = prompt[:, tokens:]
        exact = continuation_logprobs(model, ids, kv, cont)
        exact_greedy = exact.argmax(-1)
        shape = tuple(kv.shape)
        rows = []
        for dtype in dtypes:
            x = kv.to(getattr(torch, dtype)).contiguous()
            raw = x.view(torch.uint8).numpy().reshape(-1)
            for spec in chains:
                chain = parse_chain(spec.replace("aesgcm", f"aesgcm:key_file={key_file}"))
                key = f"demo|kv2.L{shape[1]}.h{shape[3]}.{dtype}|tp1.0|-|00"
                got, t_enc = _best(functools.partial(chain.encode, raw, key, "fmt", dtype, shape), repeats)
                if got is None:
                    continue
                enc, serde = got
                out = np.empty(raw.nbytes, np.uint8)
                _, t_dec = _best(
                    functools.partial(chain.decode, serde, enc, key, "fmt", dtype, shape, out), repeats
                )
                row: dict[str, Any] = {
                    "chain": spec, "dtype": dtype, "plain_bytes": raw.nbytes, "encoded_bytes": int(enc.nbytes),
                    "ratio": raw.nbytes / enc.nbytes, "encode_gbps": raw.nbytes / t_enc / 1e9,
                    "decode_gbps": raw.nbytes / t_dec / 1e9, "lossless": chain.lossless,
                }  # fmt: skip
                y = torch.from_numpy(out).view(x.dtype).view(shape)
                if chain.lossless:
                    row["exact"] = bool(np.array_equal(out, raw))
                else:
                    err = (y.float() - x.float()).abs()
                    row["max_abs_err"] = float(err.max())
                    row["mean_abs_err"] = float(err.mean())
                    if dtype == "float32":
                        lp = continuation_logprobs(model, ids, y.float(), cont)
                        chosen = exact_greedy[:, None]
                        row["max_logprob_diff"] = float(
                            (lp.gather(1, chosen) - exact.gather(1, chosen)).abs().max()
                        )
                        row["max_vocab_logprob_diff"] = float((lp - exact).abs().max())
                        row["greedy_match"] = int((lp.argmax(-1) == exact_greedy).sum())
                        row["greedy_of"] = int(cont.shape[1])
                rows.append(row)
                if progress is not None:
                    progress.update(f"{dtype} {spec}")
        return {
            "model": {
                "num_layers": model_spec.num_layers,
                "hidden_kv": shape[3],
                "tokens": tokens,
                "continue_tokens": continue_tokens,
                "initializer_range": model_spec.initializer_range,
            },
            "kv_abs_max": float(kv.abs().max()),
            "kv_abs_mean": float(kv.abs().mean()),
            "repeats": repeats,
            "threads": 1,
            "results": rows,
        }
    finally:
        torch.set_num_threads(threads)
        if tmp is not None:
            tmp.cleanup()
