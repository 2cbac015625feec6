"""Stores and loads ordered against the forward on an NVIDIA GPU (CUDA torch); skipped elsewhere.

A store queued right after a long KV-writing kernel is enqueued (no synchronize) must read what
that kernel writes; a load must land after the forward still using its pages and before the next
one. The negative control removes the wait (``LMCACHE_TEST_SKIP_STREAM_WAIT=1``) and sees stale
KV. The same checks run on the CPU over thread streams in lmcache-core's test_store_ordering.py
(bodies: :class:`lmcache_gpu.testing.OrderingTests`).
"""

from __future__ import annotations

from lmcache_gpu.testing import OrderingTests


class TestCudaOrdering(OrderingTests):
    package = "lmcache_cuda"
    backend = "cuda"
