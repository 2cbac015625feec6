"""Stores and loads ordered against the forward on an AMD gfx90a GPU (ROCm torch); skipped elsewhere.

The checks of lmcache-cuda's test_cuda_ordering.py (one shared body,
:class:`lmcache_gpu.testing.OrderingTests`).
"""

from __future__ import annotations

from lmcache_gpu.testing import OrderingTests


class TestRocmOrdering(OrderingTests):
    package = "lmcache_rocm"
    backend = "rocm"
