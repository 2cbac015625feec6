import os

import numpy as np
import pytest
import torch

DTYPES = ("float32", "float16", "bfloat16")
KEY = "tiny|kv2.L3.h64.float32|tp1.0|-|00ff"


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "master.key"
    path.write_bytes(os.urandom(32))
    path.chmod(0o600)
    return str(path)


def kv(dtype: str, shape=(2, 3, 16, 64), seed=0) -> np.ndarray:
    """KV-like data (per-head scales spread over 3 decades, some outliers) as uint8 bytes."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.logspace(-2, 1, shape[-1])[None, None, None, :]
    x[0, 0, 0, 0] = 40.0
    return x.to(getattr(torch, dtype)).contiguous().view(torch.uint8).numpy().reshape(-1)


def values(raw: np.ndarray, dtype: str, shape) -> torch.Tensor:
    return torch.from_numpy(raw.copy()).view(getattr(torch, dtype)).view(shape).float()
