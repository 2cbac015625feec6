"""Test support for the package's tests (no product module imports it): JAX engine
arrays from the core's layout registry with random bits, and bit views; imports JAX and torch."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lmcache_core.layout_registry import allocate_example, detect_layout
from lmcache_core.testing.cases import random_bits_
from lmcache_core.testing.numpy_oracle import numpy_dtype, numpy_like


def to_jax(a: np.ndarray, sharding: Any = None) -> jax.Array:
    out = jnp.asarray(np.ascontiguousarray(a))
    return jax.device_put(out, sharding) if sharding is not None else out


def bits(a: Any) -> np.ndarray:
    arr = np.asarray(a)
    return arr.view(np.dtype(f"u{arr.dtype.itemsize}"))


def tpu_kv(
    kind: str, *, layers: int, blocks: int, block_size: int, heads: int, head_size: int, dtype: str,
    seed: int, variant: str | None = None,
) -> tuple[list[np.ndarray], Any]:  # fmt: skip
    """Random-bit numpy engine arrays of a registry layout, and its layout."""
    import torch

    tensors, hints = allocate_example(
        kind, num_layers=layers, num_blocks=blocks, block_size=block_size, num_kv_heads=heads,
        head_size=head_size, dtype=getattr(torch, dtype), variant=variant,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    for t in tensors:
        random_bits_(t, gen)
    layout = detect_layout(tensors, hints)
    assert numpy_dtype(dtype) is not None
    return [numpy_like(t) for t in tensors], layout
