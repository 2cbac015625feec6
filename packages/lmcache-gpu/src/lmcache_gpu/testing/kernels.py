"""Kernel test bodies on a GPU: bit for bit against the reference backend; skipped without one.

A vendor's ``test_<arch>_kernels.py`` subclasses :class:`KernelTests` with its names. Every layout
and dtype through every host path, multi-chunk launches, bad slots writing nothing, the
plane-table cache, host memory and streams. Skipped, with the probe's reason, where no usable GPU
is (a failure when ``LMCACHE_REQUIRE_BACKEND`` names the backend). Imported only by tests.
"""

from __future__ import annotations

import gc
from typing import Any

import pytest
import torch

from lmcache_core.backend import reference_backend
from lmcache_core.layout import KVLayout
from lmcache_core.layout_registry import allocate_example, detect_layout
from lmcache_core.testing.cases import Case, bits, make_cases, poison_, random_bits_
from lmcache_core.testing.require import backend_cannot_run
from lmcache_gpu.kernels import HOST_PATHS, ChunkJob, GpuKernels
from lmcache_gpu.testing._package import PackageUnderTest, gpu_skip_reason, nhd_case

#: Conformance-style cases (every layout variant, every dtype, odd head sizes, holes, skips).
GPU_CASES = make_cases(seed=6, count=6)
#: How the chunk is reached: the two host paths, and the chunk in device memory.
CHUNK_PLACES = (*HOST_PATHS, "device")


class KernelTests(PackageUnderTest):
    """The kernels on a GPU, bit for bit against the reference backend; skipped without one."""

    @pytest.fixture(scope="class")
    @classmethod
    def gpu(cls) -> GpuKernels:
        reason = gpu_skip_reason(cls.package, cls.backend)
        if reason:
            backend_cannot_run(cls.backend, reason)  # a failure when LMCACHE_REQUIRE_BACKEND names it
        return cls.kernels()

    # ---- helpers ----

    @staticmethod
    def _to_gpu(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        return [
            torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="cuda").copy_(t) for t in tensors
        ]

    @staticmethod
    def _gpu_layout(case: Case, kv: list[torch.Tensor]) -> KVLayout:
        return detect_layout(kv, case.hints())

    def _chunk(self, gpu: GpuKernels, shape: tuple[int, ...], dtype: torch.dtype, place: str) -> torch.Tensor:
        nbytes = dtype.itemsize * int(torch.Size(shape).numel())
        if place == "device":
            return torch.empty(shape, dtype=dtype, device="cuda")
        return gpu.alloc_host(nbytes, pinned=True).view(dtype).view(shape)

    def _run_gather(self, gpu: GpuKernels, case: Case, place: str, slots_on_gpu: bool) -> None:
        kv_cpu, layout_cpu = case.random_kv()
        kv = self._to_gpu(kv_cpu)
        layout = self._gpu_layout(case, kv)
        slots = case.slot_tensor()
        out = poison_(self._chunk(gpu, case.chunk_shape(), case.chunk_dtype, place))
        path = gpu.gather(
            layout,
            kv,
            slots.cuda() if slots_on_gpu else slots,
            out,
            case.skip_prefix,
            host_path=None if place == "device" else place,
        )
        gpu.synchronize()
        expected = poison_(torch.empty(case.chunk_shape(), dtype=case.chunk_dtype))
        reference_backend().gather(layout_cpu, kv_cpu, slots, expected, case.skip_prefix)
        assert torch.equal(bits(out.cpu()), bits(expected)), f"gather ({path}) differs: {case.describe()}"
        if case.live_tokens():
            assert path == place, path
        for t, t_cpu in zip(kv, kv_cpu, strict=True):
            assert torch.equal(bits(t.cpu()), bits(t_cpu)), "gather wrote KV"

    def _run_scatter(self, gpu: GpuKernels, case: Case, place: str, slots_on_gpu: bool) -> None:
        kv_cpu, layout_cpu = case.poisoned_kv()
        kv = self._to_gpu(kv_cpu)
        layout = self._gpu_layout(case, kv)
        slots = case.slot_tensor(unique=True)
        src_cpu = case.random_chunk()
        src = self._chunk(gpu, case.chunk_shape(), case.chunk_dtype, place).copy_(src_cpu)
        path = gpu.scatter(
            layout,
            kv,
            slots.cuda() if slots_on_gpu else slots,
            src,
            case.skip_prefix,
            host_path=None if place == "device" else place,
        )
        gpu.synchronize()
        reference_backend().scatter(layout_cpu, kv_cpu, slots, src_cpu, case.skip_prefix)
        for i, (t, t_cpu) in enumerate(zip(kv, kv_cpu, strict=True)):
            assert torch.equal(bits(t.cpu()), bits(t_cpu)), (
                f"kv_caches[{i}] after scatter ({path}): {case.describe()}"
            )
        assert torch.equal(bits(src.cpu()), bits(src_cpu)), "scatter wrote its source"

    # ---- bitwise against the reference ----

    @pytest.mark.parametrize("place", CHUNK_PLACES)
    @pytest.mark.parametrize("case", GPU_CASES, ids=[c.id for c in GPU_CASES])
    def test_gather_bitwise(self, gpu: GpuKernels, case: Case, place: str) -> None:
        self._run_gather(gpu, case, place, slots_on_gpu=True)

    @pytest.mark.parametrize("place", CHUNK_PLACES)
    @pytest.mark.parametrize("case", GPU_CASES, ids=[c.id for c in GPU_CASES])
    def test_scatter_bitwise(self, gpu: GpuKernels, case: Case, place: str) -> None:
        self._run_scatter(gpu, case, place, slots_on_gpu=True)

    @pytest.mark.parametrize("case", GPU_CASES[::7], ids=[c.id for c in GPU_CASES[::7]])
    def test_host_slot_mappings_are_uploaded(self, gpu: GpuKernels, case: Case) -> None:
        self._run_gather(gpu, case, "mapped", slots_on_gpu=False)
        self._run_scatter(gpu, case, "staged", slots_on_gpu=False)

    def test_mapped_and_staged_paths_give_the_same_bytes(self, gpu: GpuKernels) -> None:
        kv_cpu, layout = nhd_case(num_tokens=40, dtype=torch.bfloat16)
        kv = self._to_gpu(kv_cpu)
        layout = detect_layout(kv, _nhd_hints())
        slots = torch.tensor([-1, *range(16, 40), -1, 3, 2, 1], dtype=torch.int64).cuda()
        shape = layout.chunk_format.shape(slots.numel())
        outs = {}
        for place in CHUNK_PLACES:
            outs[place] = poison_(self._chunk(gpu, shape, torch.bfloat16, place))
            gpu.gather(layout, kv, slots, outs[place], 2, host_path=None if place == "device" else place)
        gpu.synchronize()
        assert torch.equal(bits(outs["mapped"]), bits(outs["staged"]))
        assert torch.equal(bits(outs["mapped"]), bits(outs["device"].cpu()))
        pageable = poison_(torch.empty(shape, dtype=torch.bfloat16))
        assert (
            gpu.gather(layout, kv, slots, pageable, 2, host_path="mapped") == "staged (pageable host memory)"
        )
        gpu.synchronize()
        assert torch.equal(bits(pageable), bits(outs["mapped"]))

    def test_unaligned_chunk_falls_back_to_narrow_accesses(self, gpu: GpuKernels) -> None:
        case = next(c for c in GPU_CASES if c.kind == "vllm_flash_nhd" and c.dtype == torch.float16)
        kv_cpu, layout_cpu = case.random_kv()
        kv = self._to_gpu(kv_cpu)
        layout = self._gpu_layout(case, kv)
        shape = case.chunk_shape()
        n = int(torch.Size(shape).numel())
        raw = gpu.alloc_host((n + 1) * 2, pinned=True).view(torch.float16)
        out = poison_(raw[1:].view(shape))  # 2 bytes past a page boundary
        assert gpu.plan(layout, kv, [out])["vector_bytes"] == 2
        slots = case.slot_tensor()
        gpu.gather(layout, kv, slots.cuda(), out, case.skip_prefix, host_path="mapped")
        gpu.synchronize()
        expected = poison_(torch.empty(shape, dtype=torch.float16))
        reference_backend().gather(layout_cpu, kv_cpu, slots, expected, case.skip_prefix)
        assert torch.equal(bits(out), bits(expected))

    # ---- several chunks per launch ----

    @pytest.mark.parametrize("count", [3, 33])  # 33: two launches of up to 32 chunks
    def test_many_chunks_match_one_by_one(self, gpu: GpuKernels, count: int) -> None:
        tensors, hints = allocate_example(
            "vllm_flash_hnd", num_layers=4, num_blocks=3 * count, block_size=16, num_kv_heads=2, head_size=64,
            dtype=torch.bfloat16,
        )  # fmt: skip
        gen = torch.Generator().manual_seed(count)
        for t in tensors:
            random_bits_(t, gen)
        kv = self._to_gpu(tensors)
        layout = detect_layout(kv, hints)
        jobs, singles = [], []
        for i in range(count):
            n = 16 + (i % 3) * 8
            slots = (torch.arange(n, dtype=torch.int64) + 48 * i).cuda()
            shape = layout.chunk_format.shape(n)
            jobs.append(ChunkJob(slots, poison_(self._chunk(gpu, shape, torch.bfloat16, "mapped")), i % 4))
            singles.append(poison_(self._chunk(gpu, shape, torch.bfloat16, "staged")))
        assert gpu.gather_chunks(layout, kv, jobs) == ["mapped"] * count
        for job, single in zip(jobs, singles, strict=True):
            gpu.gather(layout, kv, job.slot_mapping, single, job.skip_prefix, host_path="staged")
        gpu.synchronize()
        for job, single in zip(jobs, singles, strict=True):
            assert torch.equal(bits(job.chunk), bits(single))
        fresh = self._to_gpu([poison_(t.clone()) for t in tensors])
        gpu.scatter_chunks(layout, fresh, jobs, host_path="staged")
        again = [poison_(self._chunk(gpu, tuple(j.chunk.shape), torch.bfloat16, "device")) for j in jobs]
        gpu.gather_chunks(
            layout,
            fresh,
            [ChunkJob(j.slot_mapping, a, j.skip_prefix) for j, a in zip(jobs, again, strict=True)],
        )
        gpu.synchronize()
        for job, a in zip(jobs, again, strict=True):
            assert torch.equal(bits(job.chunk), bits(a.cpu()))

    # ---- bad slots ----

    @pytest.mark.parametrize("slots_on_gpu", [True, False])
    @pytest.mark.parametrize("op", ["gather", "scatter"])
    def test_bad_slot_raises_and_writes_nothing(self, gpu: GpuKernels, op: str, slots_on_gpu: bool) -> None:
        kv_cpu, _ = nhd_case()
        kv = self._to_gpu(kv_cpu)
        layout = detect_layout(kv, _nhd_hints())
        slots = torch.arange(8, dtype=torch.int64)
        slots[5] = layout.num_slots + 3
        chunk = poison_(self._chunk(gpu, layout.chunk_format.shape(8), torch.float16, "mapped"))
        before = chunk.clone()
        move = gpu.gather if op == "gather" else gpu.scatter
        with pytest.raises(ValueError, match=r"slot_mapping\[5\]: expected -1 <= slot < 64 .*given 67"):
            move(layout, kv, slots.cuda() if slots_on_gpu else slots, chunk)
        gpu.synchronize()
        assert torch.equal(bits(chunk), bits(before)), "chunk written"
        for t, t_cpu in zip(kv, kv_cpu, strict=True):
            assert torch.equal(bits(t.cpu()), bits(t_cpu)), "KV written"

    # ---- caches, host memory, streams ----

    def test_plane_table_is_uploaded_once_per_layout(self, gpu: GpuKernels) -> None:
        kv_cpu, _ = nhd_case()
        kv = self._to_gpu(kv_cpu)
        layout = detect_layout(kv, _nhd_hints())
        out = self._chunk(gpu, layout.chunk_format.shape(8), torch.float16, "device")
        slots = torch.arange(8, dtype=torch.int64).cuda()
        gpu.gather(layout, kv, slots, out)
        before = gpu.cache_stats()
        for _ in range(5):
            gpu.gather(layout, kv, slots, out)
        after = gpu.cache_stats()
        assert after["plane_table_uploads"] == before["plane_table_uploads"]
        assert after["plane_table_hits"] == before["plane_table_hits"] + 5
        gpu.synchronize()

    @pytest.mark.parametrize("method", ["pinned", "registered"])
    def test_page_locked_host_memory(self, gpu: GpuKernels, method: str) -> None:
        ext = self.ext()
        gc.collect()
        live = ext.live_host_allocations()
        buf = gpu.alloc_host(1 << 20, pinned=True, method=method)
        assert buf.is_pinned(), f"{method} memory is not page-locked"
        buf.fill_(9)
        dev = buf.cuda(non_blocking=True)
        torch.cuda.synchronize()
        assert int(dev.sum()) == 9 << 20
        del buf, dev
        gc.collect()
        assert ext.live_host_allocations() == live

    def test_streams_and_events(self, gpu: GpuKernels) -> None:
        stream = gpu.new_stream(torch.device("cuda"))
        assert isinstance(stream, int) and stream != 0
        kv_cpu, layout_cpu = nhd_case()
        kv = self._to_gpu(kv_cpu)
        layout = detect_layout(kv, _nhd_hints())
        slots = torch.arange(8, dtype=torch.int64)
        out = poison_(self._chunk(gpu, layout.chunk_format.shape(8), torch.float16, "staged"))
        torch.cuda.synchronize()  # the KV copies above ran on torch's stream
        gpu.gather(layout, kv, slots, out, stream=stream, host_path="staged")
        event = gpu.record_event(stream)
        gpu.synchronize(event)
        expected = poison_(torch.empty_like(out))
        reference_backend().gather(layout_cpu, kv_cpu, slots, expected)
        assert torch.equal(bits(out), bits(expected))
        gpu.synchronize(stream)
        gpu.destroy_stream(stream)


def _nhd_hints() -> Any:
    from lmcache_core.layout_registry import LayoutHints

    return LayoutHints(kind="vllm_flash_nhd", num_kv_heads=2, head_size=8, block_size=16, num_layers=2)
