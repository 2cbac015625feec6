"""Ordering test bodies: the CacheEngine's copies ordered against the forward, on a real device.

A vendor's ``test_<arch>_ordering.py`` subclasses :class:`OrderingTests` with its names. Skipped,
with the probe's reason, where no usable GPU is. Imported only by tests.

The "forward" is ``torch.cuda._sleep`` (a kernel that spins for a number of clock cycles,
~0.25-0.5 s here) followed by a fill of the KV, both enqueued on torch's current stream; the
host returns at once. Nothing here calls ``torch.cuda.synchronize`` between that and the
engine call under test, which is what vLLM does with async scheduling.

How absence of the wait is detected: with ``LMCACHE_TEST_SKIP_STREAM_WAIT=1`` the engine's copy
stream does not wait for the forward. The gather then runs while the sleep kernel still spins,
so the stored chunk holds the KV from *before* the forward, and the first test's check fails;
the negative-control test sets the switch itself and asserts that stale bytes are stored, which
proves the check can see the race. ``make device-check`` runs both, and the store test once more
with the switch set, expecting it to fail.
"""

from __future__ import annotations

import importlib
from typing import Any, ClassVar

import pytest
import torch

from lmcache_core import CacheEngine, CacheEngineConfig
from lmcache_core.cache_engine import SKIP_STREAM_WAIT_ENV
from lmcache_core.layout_registry import LayoutHints, allocate_example
from lmcache_gpu.testing._package import gpu_skip_reason

#: Spin cycles of the fake forward: 0.25 s at 2 GHz, long enough that a copy not ordered after it
#: certainly runs first, short enough for the 8-minute device check.
SLEEP_CYCLES = 500_000_000
TOKENS = list(range(900, 964))  # 4 chunks of 16


class OrderingTests:
    """Stores read what the forward wrote; loads land after the forward that uses the pages and
    before the next one. Subclasses set ``package`` and ``backend``."""

    package: ClassVar[str] = ""
    backend: ClassVar[str] = ""

    @pytest.fixture(autouse=True)
    def _gpu(self, monkeypatch: pytest.MonkeyPatch) -> None:
        reason = gpu_skip_reason(self.package, self.backend)
        if reason:
            pytest.skip(reason)
        monkeypatch.delenv(SKIP_STREAM_WAIT_ENV, raising=False)

    # ---- helpers ----

    def _kv(self, value: float) -> tuple[list[torch.Tensor], LayoutHints]:
        kv, hints = allocate_example(
            "vllm_flash_nhd", num_layers=4, num_blocks=16, block_size=16, num_kv_heads=8, head_size=128,
            dtype=torch.bfloat16,
        )  # fmt: skip
        gpu = [t.to("cuda").fill_(value) for t in kv]
        torch.cuda.synchronize()  # set-up only: the KV before the forward is in place
        return gpu, hints

    def _engine(self, hints: LayoutHints) -> CacheEngine:
        config = CacheEngineConfig(chunk_size=16, l1_bytes=64 << 20, backend=self.backend)
        return CacheEngine(config, layout_hints=hints)

    @staticmethod
    def _forward(kv: list[torch.Tensor], value: float) -> None:
        """Enqueue a long kernel, then a write of ``value`` into every page; returns at once."""
        torch.cuda._sleep(SLEEP_CYCLES)
        for t in kv:
            t.fill_(value)

    @staticmethod
    def _slots() -> torch.Tensor:
        return torch.arange(len(TOKENS), dtype=torch.int64)  # blocks 0..3

    def _stored_values(self, eng: CacheEngine) -> set[float]:
        dst, _ = self._kv(-1.0)
        assert eng.retrieve(TOKENS, dst, self._slots()).tokens == len(TOKENS)
        torch.cuda.synchronize()
        return {float(v) for t in dst for v in t[:, :4].float().unique().cpu()}

    # ---- stores ----

    def test_store_right_after_the_forward_is_enqueued_reads_what_it_wrote(self) -> None:
        kv, hints = self._kv(1.0)
        eng = self._engine(hints)
        eng.register_kv_caches(kv)
        assert eng.backend.name == self.backend
        self._forward(kv, 7.0)
        assert eng.store(TOKENS, kv, self._slots()).tokens == len(TOKENS)
        assert not torch.cuda.current_stream().query(), (
            "test set-up: the forward finished before the store was queued; raise SLEEP_CYCLES"
        )
        assert eng.stores_in_flight() > 0  # committed only when the copies complete
        eng.wait_stores()
        assert self._stored_values(eng) == {7.0}, "the store read KV from before the forward"
        eng.close()

    def test_without_the_wait_the_store_reads_stale_kv(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Negative control: proves the check above sees the race when the wait is removed."""
        monkeypatch.setenv(SKIP_STREAM_WAIT_ENV, "1")
        kv, hints = self._kv(1.0)
        eng = self._engine(hints)
        eng.register_kv_caches(kv)
        self._forward(kv, 7.0)
        eng.store(TOKENS, kv, self._slots())
        eng.wait_stores()
        torch.cuda.synchronize()
        monkeypatch.delenv(SKIP_STREAM_WAIT_ENV)
        assert self._stored_values(eng) == {1.0}
        eng.close()

    def test_stores_in_flight_commit_at_the_next_poll_without_a_host_wait(self) -> None:
        kv, hints = self._kv(1.0)
        eng = self._engine(hints)
        eng.register_kv_caches(kv)
        self._forward(kv, 3.0)
        eng.store(TOKENS, kv, self._slots(), owner="req")
        assert eng.stores_in_flight("req") == 4 and eng.lookup(TOKENS).tokens == 0
        torch.cuda.synchronize()  # the forward and (after it) the copies are done
        eng.backend.synchronize(eng.backend.record_event(eng._stream))
        assert eng.poll_stores() == 4 and eng.stores_in_flight("req") == 0
        assert eng.lookup(TOKENS).tokens == len(TOKENS)
        eng.close()

    # ---- loads ----

    def test_load_lands_after_the_forward_using_the_pages_and_before_the_next(self) -> None:
        kv, hints = self._kv(5.0)
        eng = self._engine(hints)
        eng.register_kv_caches(kv)
        eng.store(TOKENS, kv, self._slots())
        eng.wait_stores()
        self._forward(kv, 9.0)  # an earlier forward still writing these pages
        assert eng.retrieve(TOKENS, kv, self._slots()).tokens == len(TOKENS)
        after = [t[:, :4].clone() for t in kv]  # the next forward's read, enqueued at once
        torch.cuda.synchronize()
        assert {float(v) for a in after for v in a.float().unique().cpu()} == {5.0}
        eng.close()

    # ---- resources ----

    def test_close_destroys_the_stream_and_events_are_pooled(self) -> None:
        kernels: Any = importlib.import_module(f"{self.package}.kernels").KERNELS
        kv, hints = self._kv(1.0)
        eng = self._engine(hints)
        eng.register_kv_caches(kv)
        for _ in range(3):
            eng.store([t + 1 for t in TOKENS], kv, self._slots())
            eng.wait_stores()
        pooled = kernels.cache_stats()["pooled_events"]
        assert pooled >= 1  # released events wait in the pool instead of being destroyed
        eng.close()
        assert eng._stream == 0
        torch.cuda.synchronize()
