"""CacheEngine with JAX KV: store -> fs L2 -> a new process retrieves into fresh KV arrays."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import jax.numpy as jnp
    from lmcache_core.cache_engine import CacheEngine
    from lmcache_core.config import CacheEngineConfig
    from lmcache_core.layout_registry import LayoutHints
    from lmcache_tpu.testing import tpu_kv

    mode, l2, out = sys.argv[1], sys.argv[2], sys.argv[3]
    arrays, layout = tpu_kv("tpu_inference", layers=2, blocks=8, block_size=4, heads=2, head_size=128,
                            dtype="bfloat16", seed=21)
    hints = LayoutHints(kind="tpu_inference", num_kv_heads=2, head_size=128, block_size=4, num_layers=2)
    config = CacheEngineConfig(model_id="m", chunk_size=8, l1_bytes=1 << 22, l2_urls=(f"fs://{l2}",))
    tokens = np.arange(16, dtype=np.int64)
    slots = np.array([20, 21, 22, 23, 4, 5, 6, 7, 12, 13, 14, 15, 0, 1, 2, 3], dtype=np.int64)
    with CacheEngine(config, layout_hints=hints) as engine:
        if mode == "store":
            kv = [jnp.asarray(a) for a in arrays]
            stored = engine.store(tokens, kv, slots)
            assert stored.tokens == 16, stored
            engine.wait_stores()
            assert engine.flush(30)
            np.save(out, np.stack([np.asarray(a).view(np.uint16) for a in arrays]))
        else:
            kv = [jnp.zeros(a.shape, a.dtype) for a in arrays]
            engine.register_kv_caches(kv)
            assert engine.lookup(tokens).tokens == 16
            result = engine.retrieve(tokens, kv, slots)
            assert (result.tokens, result.l2_tokens) == (16, 16), result
            np.save(out, np.stack([np.asarray(a).view(np.uint16) for a in result.kv_caches]))
    print(engine.backend.name)
    """
)


def _run(tmp_path: Path, mode: str) -> np.ndarray:
    out = tmp_path / f"{mode}.npy"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode, str(tmp_path / "l2"), str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-1] == "tpu"
    return np.load(out)


def test_store_to_fs_then_retrieve_in_a_new_process(tmp_path: Path) -> None:
    stored = _run(tmp_path, "store")
    loaded = _run(tmp_path, "retrieve")
    # the 4 blocks the prompt used hold the same bits; the rest of the fresh KV stays zero
    used = [5, 1, 3, 0]
    assert np.array_equal(loaded[:, used], stored[:, used])
    rest = [b for b in range(8) if b not in used]
    assert not loaded[:, rest].any()
