"""A small random-weight Llama and a word-level tokenizer, built locally (no download).

Engine tests, ``lmcache-core demo`` and ``lmcache-core bench e2e`` need a real model directory an
inference engine can load. :func:`build_tiny_llama` writes one with transformers (``config.json``
plus safetensors weights drawn with a fixed seed) and a tokenizers ``WordLevel`` tokenizer
(``tokenizer.json`` plus a matching ``tokenizer_config.json``). The weights are random with a large
``initializer_range`` so that different contexts give clearly different next tokens: a test that
corrupts the KV sees the output change.

The vocabulary is ``[UNK]``, ``<s>``, ``</s>``, then words ``w3`` ... ``w{vocab_size-1}``; a
word's id is its number, so :func:`words` and token ids convert trivially.

Needs ``transformers``, ``tokenizers`` and ``safetensors`` (installed with vllm); imports them
only when called.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

SPECIAL_TOKENS = ("[UNK]", "<s>", "</s>")


@dataclass(frozen=True)
class TinyLlamaSpec:
    """Shape of the model. ``hidden_size`` = ``num_heads * head_size``; sizes are counts."""

    num_layers: int = 2
    hidden_size: int = 256
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 512
    vocab_size: int = 1024
    max_position_embeddings: int = 4096
    initializer_range: float = 0.3
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "intermediate_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name}: expected a positive int, given {v!r}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size: expected a multiple of num_heads ({self.num_heads}), given {self.hidden_size}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_kv_heads: expected a divisor of num_heads ({self.num_heads}), given {self.num_kv_heads}"
            )
        if self.vocab_size <= len(SPECIAL_TOKENS):
            raise ValueError(f"vocab_size: expected > {len(SPECIAL_TOKENS)}, given {self.vocab_size}")

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_heads

    def digest(self) -> str:
        """Short hash of every field: the directory name of a cached build."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


#: Correctness tests: 2 layers, hidden 256, 4 heads (2 KV heads) of 64.
TEST_SPEC = TinyLlamaSpec()
#: Benchmarks where prefill dominates: 8 layers, hidden 1024, 16 heads (8 KV heads) of 64.
BENCH_SPEC = TinyLlamaSpec(
    num_layers=8,
    hidden_size=1024,
    num_heads=16,
    num_kv_heads=8,
    intermediate_size=2816,
    vocab_size=4096,
    max_position_embeddings=8192,
)


def words(token_ids: list[int]) -> str:
    """Text that the tokenizer maps back to exactly ``token_ids`` (ids >= 3)."""
    bad = [t for t in token_ids if t < len(SPECIAL_TOKENS)]
    if bad:
        raise ValueError(f"token_ids: expected word ids >= {len(SPECIAL_TOKENS)}, given {bad[:5]}")
    return " ".join(f"w{t}" for t in token_ids)


def _write_tokenizer(path: Path, spec: TinyLlamaSpec) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    vocab.update({f"w{i}": i for i in range(len(SPECIAL_TOKENS), spec.vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "unk_token": "[UNK]",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "model_max_length": spec.max_position_embeddings,
                "clean_up_tokenization_spaces": False,
            },
            indent=1,
        )
    )
    (path / "special_tokens_map.json").write_text(
        json.dumps({"unk_token": "[UNK]", "bos_token": "<s>", "eos_token": "</s>"}, indent=1)
    )


def _write_model(path: Path, spec: TinyLlamaSpec) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        head_dim=spec.head_size,
        max_position_embeddings=spec.max_position_embeddings,
        initializer_range=spec.initializer_range,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config)
    # RMSNorm weights start at 1; draw them too so every layer shapes the residual differently.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    model.save_pretrained(str(path), safe_serialization=True)


def build_tiny_llama(root: str | os.PathLike[str], spec: TinyLlamaSpec = TEST_SPEC) -> Path:
    """Write the model for ``spec`` under ``root/tiny-llama-<digest>`` unless it is there already.

    Returns the model directory (``config.json``, ``model.safetensors``, ``tokenizer.json``,
    ``tokenizer_config.json``). The directory is complete or absent: it is written under a
    temporary name and renamed.
    """
    root = Path(root).expanduser()
    target = root / f"tiny-llama-{spec.digest()}"
    if (target / "config.json").exists() and (target / "tokenizer.json").exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-llama-", dir=root))
    try:
        _write_model(tmp, spec)
        _write_tokenizer(tmp, spec)
        (tmp / "tiny_llama_spec.json").write_text(json.dumps(asdict(spec), indent=1))
        try:
            tmp.rename(target)
        except OSError:  # another process finished first
            if not (target / "config.json").exists():
                raise
    finally:
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return target
