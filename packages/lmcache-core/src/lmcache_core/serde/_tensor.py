"""Helpers of the tensor codecs: a chunk's bytes as a float tensor and back (torch, CPU)."""

from __future__ import annotations

from typing import Any

FLOATS = ("float32", "float16", "bfloat16")


def as_tensor(data: Any, dtype: str) -> Any:
    """``data`` (uint8 numpy array) viewed as a flat torch tensor of ``dtype`` (no copy)."""
    import torch

    return torch.from_numpy(data).view(getattr(torch, dtype))


def into(out: Any, values: Any, dtype: str, out_len: int) -> Any:
    """``values`` (float tensor) cast to ``dtype`` into ``out`` (uint8 numpy array of
    ``out_len`` bytes) when given, else a new array; returns the uint8 array."""
    import numpy as np

    target = np.empty(out_len, np.uint8) if out is None else out
    as_tensor(target, dtype).copy_(values.reshape(-1))
    return target
