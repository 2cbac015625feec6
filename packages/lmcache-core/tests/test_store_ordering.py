"""Stores and loads ordered against the forward, and deferred commits, proved on the CPU.

A GPU runs the forward and the engine's copies on different streams; a store called right after
the forward was *enqueued* must still read the KV the forward writes. These tests run the
CacheEngine over a real asynchronous backend made of host threads
(:mod:`lmcache_core.testing.streams`): the semantics of device streams, with the reference
kernels doing the copies. The "forward" is work queued on the compute stream
that writes new KV only after a gate opens, so the test, not a timer, decides when it runs.

The GPU versions (same checks, real kernels and ``torch.cuda._sleep``) live in
``lmcache_gpu.testing.ordering`` and run in ``make device-check``.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import torch

from lmcache_core import CacheEngine, CacheEngineConfig
from lmcache_core.backend import Backend, reference_backend
from lmcache_core.cache_engine import SKIP_STREAM_WAIT_ENV
from lmcache_core.layout_registry import LayoutHints, allocate_example
from lmcache_core.testing.streams import COMPUTE, ThreadStreams, ThreadStreams10

TOKENS = list(range(500, 548))  # 3 chunks of 16


def _paged_kv(num_layers: int = 2) -> tuple[list[torch.Tensor], LayoutHints]:
    """The engine's paged KV in these tests: vLLM flash NHD, 8 blocks of 16 tokens, 2 heads of 8,
    float32, ``num_layers`` layers."""
    return allocate_example(
        "vllm_flash_nhd",
        num_layers=num_layers,
        num_blocks=8,
        block_size=16,
        num_kv_heads=2,
        head_size=8,
        dtype=torch.float32,
    )


def _setup(
    plugin: ThreadStreams, monkeypatch: pytest.MonkeyPatch, skip_wait: bool = False
) -> tuple[CacheEngine, list[torch.Tensor], torch.Tensor, Any]:
    if skip_wait:
        monkeypatch.setenv(SKIP_STREAM_WAIT_ENV, "1")
    else:
        monkeypatch.delenv(SKIP_STREAM_WAIT_ENV, raising=False)
    kv, hints = _paged_kv()
    for t in kv:
        t.fill_(1.0)  # the KV before the forward
    backend = Backend("threads", plugin, reference_backend())
    eng = CacheEngine(CacheEngineConfig(chunk_size=16, l1_bytes=1 << 20), backend=backend, layout_hints=hints)
    slots = torch.arange(len(TOKENS), dtype=torch.int64)
    eng.register_kv_caches(kv)
    return eng, kv, slots, hints


def _forward(plugin: ThreadStreams, kv: list[torch.Tensor], value: float) -> threading.Event:
    """Queue a forward on the compute stream: it writes ``value`` into every page once the
    returned gate opens."""
    gate = threading.Event()

    def run() -> None:
        assert gate.wait(timeout=10), "gate never opened"
        for t in kv:
            t.fill_(value)

    plugin.streams[COMPUTE].enqueue(run)
    return gate


def _stored_values(eng: CacheEngine, tokens: list[int]) -> set[float]:
    values: set[float] = set()
    dst, _ = _paged_kv()
    for t in dst:
        t.fill_(-1.0)
    eng.retrieve(tokens, dst, torch.arange(len(tokens), dtype=torch.int64))
    for t in dst:
        values |= set(t[:, : len(tokens) // 16].unique().tolist())
    return values


@pytest.fixture
def plugin() -> Any:
    p = ThreadStreams()
    yield p
    p.close()


Setup = tuple[CacheEngine, list[torch.Tensor], torch.Tensor, Any]


@pytest.fixture
def engine(plugin: ThreadStreams, monkeypatch: pytest.MonkeyPatch) -> Any:
    """:func:`_setup` over ``plugin``, with the device-side wait (closed after the test too)."""
    setup = _setup(plugin, monkeypatch)
    yield setup
    setup[0].close()


def test_store_queued_right_after_the_forward_reads_what_the_forward_wrote(
    plugin: ThreadStreams, engine: Setup
) -> None:
    eng, kv, slots, _ = engine
    gate = _forward(plugin, kv, 7.0)
    assert eng.store(TOKENS, kv, slots).tokens == 48  # returns without waiting for the forward
    assert eng.stores_in_flight() == 3 and eng.lookup(TOKENS).tokens == 0  # not committed yet
    gate.set()
    eng.wait_stores()
    assert eng.lookup(TOKENS).tokens == 48
    assert _stored_values(eng, TOKENS) == {7.0}
    eng.close()


def test_without_the_wait_the_store_reads_stale_kv(
    plugin: ThreadStreams, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The negative control: the switch removes the device-side wait, and the check above sees
    the KV from before the forward. This is how the ordering tests are shown to catch the bug."""
    eng, kv, slots, _ = _setup(plugin, monkeypatch, skip_wait=True)
    gate = _forward(plugin, kv, 7.0)
    eng.store(TOKENS, kv, slots)
    eng.wait_stores()  # the copies finish while the forward still waits at its gate
    gate.set()
    assert _stored_values(eng, TOKENS) == {1.0}
    eng.close()


def test_load_waits_for_the_forward_still_using_the_pages_and_precedes_the_next(
    plugin: ThreadStreams, engine: Setup
) -> None:
    eng, kv, slots, _ = engine
    for t in kv:
        t.fill_(5.0)
    eng.store(TOKENS, kv, slots)
    eng.wait_stores()
    gate = _forward(plugin, kv, 9.0)  # an earlier forward still writing these pages
    threading.Timer(0.05, gate.set).start()
    assert eng.retrieve(TOKENS, kv, slots).tokens == 48
    assert gate.is_set()  # the load could not finish before the forward it had to follow
    seen: list[set[float]] = []
    plugin.streams[COMPUTE].enqueue(lambda: seen.append({float(v) for t in kv for v in t[:, :3].unique()}))
    done = plugin.lmcache_record_event(COMPUTE)
    assert done.wait(timeout=10)
    assert seen == [{5.0}]  # the next forward reads the loaded values
    eng.close()


def test_request_reports_its_stores_in_flight_until_polled_complete(
    plugin: ThreadStreams, engine: Setup
) -> None:
    eng, kv, slots, _ = engine
    gate = _forward(plugin, kv, 3.0)
    eng.store(TOKENS[:32], kv, slots[:32], owner="req-a")
    eng.store(TOKENS, kv, slots, owner="req-b")  # its first two chunks are in flight already
    assert (eng.stores_in_flight("req-a"), eng.stores_in_flight("req-b")) == (2, 1)
    assert eng.stats.store_skipped_present == 2 and eng.l1_stats().entries == 0
    assert eng.poll_stores() == 0  # the forward has not run: nothing completes, nothing blocks
    gate.set()
    deadline = time.monotonic() + 10
    while eng.stores_in_flight() and time.monotonic() < deadline:
        eng.poll_stores()
        time.sleep(0.001)
    assert eng.stores_in_flight("req-a") == 0 and eng.stores_in_flight("req-b") == 0
    assert eng.l1_stats().entries == 3 and eng.lookup(TOKENS).tokens == 48
    assert _stored_values(eng, TOKENS) == {3.0}
    eng.close()


def test_a_failed_store_waits_for_its_queued_copies_before_releasing_the_buffer(
    plugin: ThreadStreams, engine: Setup
) -> None:
    eng, kv, slots, hints = engine
    kv2, hints2 = _paged_kv(num_layers=1)
    eng2 = CacheEngine(
        CacheEngineConfig(chunk_size=16, l1_bytes=1 << 20),
        backend=eng.backend,
        layout_hints=[hints, hints2],
    )
    gate = _forward(plugin, kv, 4.0)
    plugin.fail_gather_call = plugin.gather_calls + 2  # group 0 is queued, group 1 fails
    threading.Timer(0.05, gate.set).start()
    with pytest.raises(RuntimeError, match="injected"):
        eng2.store(TOKENS[:16], [kv, kv2], [slots[:16], slots[:16]])
    stream = plugin.streams[eng2._stream]
    assert gate.is_set() and stream.idle()  # waited for the queued copy before the release
    stats = eng2.l1_stats()
    assert stats.free_buffers == 1 and stats.entries == 0 and eng2.stores_in_flight() == 0
    eng2.close()
    eng.close()


def test_close_commits_stores_in_flight_and_destroys_the_stream(plugin: ThreadStreams, engine: Setup) -> None:
    eng, kv, slots, _ = engine
    gate = _forward(plugin, kv, 2.0)
    eng.store(TOKENS, kv, slots)
    stream = eng._stream
    threading.Timer(0.05, gate.set).start()
    eng.close()
    assert eng.stores_in_flight() == 0 and eng.l1_stats().entries == 3
    assert stream not in plugin.streams


def test_a_version_1_0_plugin_loads_and_is_ordered_by_host_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    plugin = ThreadStreams10(version=(1, 0))
    try:
        eng, kv, slots, _ = _setup(plugin, monkeypatch)
        gate = _forward(plugin, kv, 6.0)
        threading.Timer(0.05, gate.set).start()
        assert eng.store(TOKENS, kv, slots).tokens == 48
        assert gate.is_set()  # the host waited for the forward before queueing the copies
        eng.wait_stores()
        assert _stored_values(eng, TOKENS) == {6.0}
        eng.close()
    finally:
        plugin.close()
