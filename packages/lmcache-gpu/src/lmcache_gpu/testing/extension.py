"""Extension test bodies (no GPU needed): the build, native checks, pointer table, plan, wrapper, plugin, CLI.

A vendor's ``test_extension.py`` subclasses :class:`ExtensionTests` with its names,
``runtime_library`` (``"libcudart.so"`` / ``"libamdhip64.so"``) and its own
``test_device_code_is_in_the_binary`` (how device code is stored is the vendor's format). Checked
here: the extension imports without a GPU and says what it was compiled for; native checks (bad
slots, sizes, the plane table, overflowing plane extents) raise ValueError before anything is
touched; the pointer table; the vector-width plan; host memory through DLPack; the Python
wrapper's checks; the plugin loading as ``"compiled, no device"`` or refusing with every reason;
the bench CLI refusing cleanly. Imported only by tests.
"""

from __future__ import annotations

import gc
import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from lmcache_core.backend import Backend, import_plugin
from lmcache_core.layout import KVLayout
from lmcache_core.layout_registry import LAYOUT_KINDS, allocate_example, detect_layout
from lmcache_core.native_args import native_layout
from lmcache_core.testing.cases import bits, poison_, poison_value
from lmcache_core.testing.require import REQUIRE_BACKEND_ENV
from lmcache_gpu.kernels import GpuKernels
from lmcache_gpu.plugin import GpuPlugin
from lmcache_gpu.probing import GpuScan
from lmcache_gpu.testing._package import PackageUnderTest, gpu_skip_reason, layout_dtype, nhd_case


class ExtensionTests(PackageUnderTest):
    """What can be checked without a GPU: the build, native checks, pointer table, plan, wrapper."""

    #: the GPU runtime's shared library the extension must link dynamically, e.g. "libcudart.so"
    runtime_library: ClassVar[str] = ""

    # ---- the build ----

    def so_path(self) -> Path:
        return Path(self.ext().__file__)

    def test_extension_imports_and_says_what_it_was_built_for(self) -> None:
        info = self.ext().build_info()
        generated = self.module("_build_info")
        assert info["backend"] == self.backend and info["runtime"] == self.runtime
        assert tuple(info["archs"].split(";")) == generated.ARCHS
        assert info["max_jobs_per_launch"] == 32

    def test_links_the_gpu_runtime_dynamically_and_not_libtorch(self) -> None:
        if shutil.which("readelf") is None:
            pytest.skip("readelf not found")
        dyn = subprocess.run(
            ["readelf", "-d", str(self.so_path())], capture_output=True, text=True, check=True
        )
        needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dyn.stdout)
        assert any(n.startswith(self.runtime_library) for n in needed), needed
        assert not any("torch" in n or n.startswith("libc10") for n in needed), needed

    def test_device_count_without_a_gpu_reports_the_runtime_error(self) -> None:
        count, error = self.ext().device_count()
        if count:
            pytest.skip(f"{count} GPU(s) present")
        assert "GetDeviceCount" in error and self.runtime in error

    # ---- native checks: ValueError before any byte is written ----

    def _native(
        self, layout: KVLayout, kv: list[torch.Tensor], jobs: list[tuple[Any, ...]], **over: Any
    ) -> Any:
        device, host_path = over.pop("device", 0), over.pop("host_path", 0)
        p = {**_binding_args(layout, kv), **over}
        return self.ext().transfer(True, device, jobs=jobs, host_path=host_path, stream=0, **p)

    @staticmethod
    def _job(
        slots: torch.Tensor, chunk: torch.Tensor, skip: int = 0, nbytes: int | None = None
    ) -> tuple[Any, ...]:
        size = chunk.numel() * chunk.element_size() if nbytes is None else nbytes
        return (0, slots.data_ptr(), slots.numel(), skip, chunk.data_ptr(), size, False)

    def _check_untouched(
        self, kv: list[torch.Tensor], before: list[torch.Tensor], chunk: torch.Tensor
    ) -> None:
        for t, b in zip(kv, before, strict=True):
            assert torch.equal(bits(t), bits(b)), "KV changed"
        assert bool((bits(chunk) == poison_value(chunk.element_size())).all()), "chunk changed"

    def test_bad_slot_raises_naming_index_and_value_and_writes_nothing(self) -> None:
        kv, layout = nhd_case()
        before = [t.clone() for t in kv]
        slots = torch.arange(8, dtype=torch.int64)
        slots[3] = layout.num_slots  # one past the end
        chunk = poison_(torch.empty(layout.chunk_format.shape(8), dtype=layout_dtype(layout)))
        with pytest.raises(ValueError, match=r"slot_mapping\[3\]: expected -1 <= slot < 64 .*given 64"):
            self._native(layout, kv, [self._job(slots, chunk)])
        slots[3] = -2
        with pytest.raises(ValueError, match=r"slot_mapping\[3\]: .*given -2"):
            self._native(layout, kv, [self._job(slots, chunk)])
        self._check_untouched(kv, before, chunk)

    def test_bad_slot_of_the_second_chunk_is_named(self) -> None:
        kv, layout = nhd_case()
        good, bad = torch.arange(4, dtype=torch.int64), torch.tensor([0, 1, 2**40], dtype=torch.int64)
        chunks = [
            poison_(torch.empty(layout.chunk_format.shape(n), dtype=layout_dtype(layout))) for n in (4, 3)
        ]
        with pytest.raises(ValueError, match=r"jobs\[1\]\.slot_mapping\[2\]: .*given 1099511627776"):
            self._native(layout, kv, [self._job(good, chunks[0]), self._job(bad, chunks[1])])

    def test_wrong_chunk_size_and_skip_prefix_raise(self) -> None:
        kv, layout = nhd_case()
        slots = torch.arange(8, dtype=torch.int64)
        chunk = poison_(torch.empty(layout.chunk_format.shape(8), dtype=layout_dtype(layout)))
        size = chunk.numel() * chunk.element_size()
        with pytest.raises(ValueError, match=rf"chunk: expected {size} bytes .* given {size - 2}"):
            self._native(layout, kv, [self._job(slots, chunk, nbytes=size - 2)])
        with pytest.raises(ValueError, match=r"skip_prefix: expected 0 <= skip_prefix <= 8, given 9"):
            self._native(layout, kv, [self._job(slots, chunk, skip=9)])

    def test_plane_table_and_extents_are_checked(self) -> None:
        kv, layout = nhd_case()
        slots = torch.arange(8, dtype=torch.int64)
        chunk = poison_(torch.empty(layout.chunk_format.shape(8), dtype=layout_dtype(layout)))
        job = [self._job(slots, chunk)]
        p = _binding_args(layout, kv)
        with pytest.raises(ValueError, match=r"plane_tensor/plane_offset: expected 4 entries"):
            self._native(
                layout, kv, job, plane_tensor=p["plane_tensor"][:3], plane_offset=p["plane_offset"][:3]
            )
        short = [n - 2 for n in p["tensor_nbytes"]]
        with pytest.raises(
            ValueError,
            match=r"plane_offset\[2\]: plane spans elements \[1024, 1024 \+ 1024\) of kv_caches\[0\], expected to fit",
        ):
            self._native(layout, kv, job, tensor_nbytes=short)
        with pytest.raises(
            ValueError, match=r"plane_tensor\[0\]: expected a tensor index in \[0, 2\), given 5"
        ):
            self._native(layout, kv, job, plane_tensor=[5, *p["plane_tensor"][1:]])
        bad_kind = list(p["kinds"][1])
        bad_kind[2] = 3  # element_size
        with pytest.raises(
            ValueError, match=r"kinds\[1\]\.element_size: expected 1, 2, 4 or 8 bytes, given 3"
        ):
            self._native(layout, kv, job, kinds=[p["kinds"][0], bad_kind])
        split = list(p["kinds"][0])
        split[5:12] = [2, 2, 3, 1, 8, 16, 0]  # token levels (2, 3): product 6, block_size 4
        with pytest.raises(
            ValueError,
            match=r"kinds\[0\]\.token: expected sizes that multiply to block_size \d+, given a product of 6",
        ):
            self._native(layout, kv, job, kinds=[split, p["kinds"][1]])

    def test_valid_arguments_reach_the_runtime_and_fail_there_without_a_gpu(self) -> None:
        """Skipped slots are not checked (the contract); with no GPU the first runtime call fails."""
        if self.device_count():
            pytest.skip("a GPU is present: these host pointers must not reach a kernel")
        kv, layout = nhd_case()
        slots = torch.tensor([2**40, -7, 5, -1, 9], dtype=torch.int64)  # garbage in the skipped prefix
        chunk = poison_(torch.empty(layout.chunk_format.shape(5), dtype=layout_dtype(layout)))
        with pytest.raises(RuntimeError, match=rf"{self.runtime} (GetDevice|SetDevice) failed"):
            self._native(layout, kv, [self._job(slots, chunk, skip=2)])

    def test_nothing_to_move_needs_no_device(self) -> None:
        kv, layout = nhd_case()
        slots = torch.tensor([3, 4], dtype=torch.int64)
        chunk = poison_(torch.empty(layout.chunk_format.shape(2), dtype=layout_dtype(layout)))
        assert self._native(layout, kv, [self._job(slots, chunk, skip=2)]) == ["nothing to move"]

    # ---- pointer table and plan ----

    @pytest.mark.parametrize("kind", sorted(LAYOUT_KINDS))
    def test_pointer_table_matches_the_reference_planes(self, kind: str) -> None:
        from lmcache_core.backends.reference import plane_view
        from lmcache_core.testing.cases import make_cases

        case = next(c for c in make_cases(seed=5, count=1) if c.kind == kind)
        tensors, layout = case.random_kv()  # the flat tensor list (tuples per layer flattened)
        table = self.kernels().plane_addresses(layout, tensors)
        want = tuple(
            plane_view(layout, tensors, p).data_ptr() for p in range(len(layout.kinds) * layout.num_layers)
        )
        assert table == want

    @pytest.mark.parametrize(
        ("dims", "strides", "es", "plane_shift", "chunk_shift", "want"),  # dims, strides: the flat 1.x form
        [
            # vLLM NHD bf16, 8 heads x 128: whole 2 KiB rows, 16-byte vectors, a warp per row
            ((2, 32, 64, 16, 8, 128), (16384, 1024, 128, 1), 2, 0, 0, (16, 2048, 2048, 128, 128, 32)),
            # the chunk 2 bytes off 16-byte alignment: fall back to 2-byte accesses
            ((2, 32, 64, 16, 8, 128), (16384, 1024, 128, 1), 2, 0, 2, (2, 2048, 2048, 1024, 1024, 32)),
            # a plane 8 bytes off: 8-byte accesses
            ((2, 32, 64, 16, 8, 128), (16384, 1024, 128, 1), 2, 8, 0, (8, 2048, 2048, 256, 256, 32)),
            # HND: heads are not adjacent, runs of one head (256 bytes)
            ((2, 32, 64, 16, 8, 128), (16384, 128, 2048, 1), 2, 0, 0, (16, 2048, 256, 128, 16, 32)),
            # strided channels: element by element
            ((2, 2, 4, 4, 2, 8), (128, 32, 16, 2), 2, 0, 0, (2, 32, 2, 16, 1, 16)),
            # a 16-byte row (1 head x 8 fp16): one thread per row
            ((1, 4, 8, 16, 1, 8), (128, 8, 8, 1), 2, 0, 0, (16, 16, 16, 1, 1, 1)),
            # fp8, 3 heads x 8: 24-byte rows in 8-byte pieces, 4 threads per row
            ((2, 2, 8, 16, 3, 8), (384, 24, 8, 1), 1, 0, 0, (8, 24, 24, 3, 3, 4)),
        ],
    )
    def test_plan_picks_the_widest_aligned_access(
        self,
        dims: tuple[int, ...],
        strides: tuple[int, ...],
        es: int,
        plane_shift: int,
        chunk_shift: int,
        want: tuple[int, ...],
    ) -> None:
        base = 1 << 20
        planes = [base + p * (1 << 16) + plane_shift for p in range(dims[0] * dims[1])]
        kv, layers, blocks, block_size, heads, head_size = dims
        bs, ts, hs, cs = strides
        kind = (heads, head_size, es, bs, hs, 1, block_size, 1, 1, ts, 0, 0, 1, head_size, 1, 1, cs, 0, 0)
        plan = self.ext().plan(
            planes, [base * 4 + chunk_shift], (kv, layers, blocks, block_size), [kind] * kv
        )
        per_kind = ("row_bytes", "run_bytes", "vecs_per_row", "vecs_per_run")
        assert all(plan[k] == [plan[k][0]] * kv for k in per_kind)  # equal kinds, equal plans
        got = (plan["vector_bytes"], *(plan[k][0] for k in per_kind), plan["group_threads"])
        assert got == want

    @pytest.mark.parametrize(
        ("kinds", "want"),
        [
            # vLLM CPU vec fp32 (16 tokens, 2 heads x 8): K transposed, 4-byte element runs; V rows of 32 bytes
            (
                [
                    (2, 8, 4, 512, 256, 1, 16, 1, 1, 1, 0, 0, 1, 8, 1, 1, 16, 0, 0),
                    (2, 8, 4, 512, 256, 1, 16, 1, 1, 8, 0, 0, 1, 8, 1, 1, 1, 0, 0),
                ],
                (4, [64, 64], [4, 32], [16, 16], [1, 8], 16),
            ),
            # amx bf16: K channel pairs (4-byte runs), V token pairs: 4-byte accesses for both
            (
                [
                    (2, 32, 2, 2048, 1024, 2, 16, 1, 1, 2, 512, 0, 2, 2, 16, 1, 1, 32, 0),
                    (2, 32, 2, 2048, 1024, 2, 2, 8, 1, 1, 32, 0, 2, 16, 2, 1, 2, 256, 0),
                ],
                (2, [128, 128], [4, 2], [64, 64], [2, 1], 32),
            ),
            # Ascend MLA: nope 512 and rope 64 bf16 in their own tensors, whole rows, 16-byte accesses
            (
                [
                    (1, 512, 2, 8192, 0, 1, 16, 1, 1, 512, 0, 0, 1, 512, 1, 1, 1, 0, 0),
                    (1, 64, 2, 1024, 0, 1, 16, 1, 1, 64, 0, 0, 1, 64, 1, 1, 1, 0, 0),
                ],
                (16, [1024, 128], [1024, 128], [64, 8], [64, 8], 32),
            ),
        ],
        ids=["vllm_cpu_vec", "amx", "ascend_mla"],
    )
    def test_plan_per_plane_kind(self, kinds: list[tuple[int, ...]], want: tuple[Any, ...]) -> None:
        base = 1 << 20
        dims = (len(kinds), 2, 4, 16)
        planes = [base + p * (1 << 16) for p in range(dims[0] * dims[1])]
        plan = self.ext().plan(planes, [base * 4], dims, kinds)
        keys = ("vector_bytes", "row_bytes", "run_bytes", "vecs_per_row", "vecs_per_run", "group_threads")
        assert tuple(plan[k] for k in keys) == want

    def test_plan_through_the_wrapper_on_torch_tensors(self) -> None:
        kv, layout = nhd_case()
        chunk = torch.empty(layout.chunk_format.shape(8), dtype=layout_dtype(layout))
        plan = self.kernels().plan(layout, kv, [chunk])
        row = layout.hidden * layout.element_size  # 2 heads x 8 fp16 = 32 bytes
        assert plan["row_bytes"] == [row, row] and row % plan["vector_bytes"] == 0
        assert chunk.data_ptr() % plan["vector_bytes"] == 0
        odd = torch.empty(chunk.numel() + 1, dtype=chunk.dtype)[1:].view(chunk.shape)
        assert self.kernels().plan(layout, kv, [odd])["vector_bytes"] == 2

    # ---- host memory ----

    def test_pageable_host_memory_through_dlpack_frees_itself(self) -> None:
        ext = self.ext()
        gc.collect()
        live = ext.live_host_allocations()
        buf = self.kernels().alloc_host(10000, pinned=False)
        assert (buf.dtype, tuple(buf.shape), buf.device.type) == (torch.uint8, (10000,), "cpu")
        assert buf.data_ptr() % 4096 == 0
        buf.fill_(3)
        view = buf[100:200]
        assert int(buf.sum()) == 30000 and ext.live_host_allocations() == live + 1
        del buf
        gc.collect()
        assert ext.live_host_allocations() == live + 1, "freed while a view is alive"
        del view
        gc.collect()
        assert ext.live_host_allocations() == live
        capsule = ext.alloc_host(64, "pageable")  # never handed to torch: the capsule frees it
        assert ext.live_host_allocations() == live + 1
        del capsule
        gc.collect()
        assert ext.live_host_allocations() == live
        assert tuple(self.kernels().alloc_host(0).shape) == (0,)

    def test_host_allocation_arguments(self) -> None:
        k = self.kernels()
        with pytest.raises(ValueError, match="nbytes: expected a non-negative int, given -1"):
            k.alloc_host(-1)
        with pytest.raises(
            ValueError, match=r"method: expected one of \['pinned', 'registered'\], given 'mmap'"
        ):
            k.alloc_host(16, method="mmap")
        with pytest.raises(ValueError, match="kind: expected one of 'pinned', 'registered', 'pageable'"):
            self.ext().alloc_host(16, "huge")

    def test_pinned_host_memory_without_a_gpu_fails_with_the_runtime_reason(self) -> None:
        if self.device_count():
            pytest.skip("a GPU is present (KernelTests allocate page-locked memory)")
        live = self.ext().live_host_allocations()
        with pytest.raises(RuntimeError, match=rf"{self.runtime} HostAlloc failed"):
            self.kernels().alloc_host(4096, pinned=True, method="pinned")
        with pytest.raises(RuntimeError, match=rf"{self.runtime} HostRegister failed"):
            self.kernels().alloc_host(4096, pinned=True, method="registered")
        assert self.ext().live_host_allocations() == live

    # ---- the Python wrapper's checks ----

    def test_wrapper_rejects_kv_outside_a_gpu(self) -> None:
        kv, layout = nhd_case()
        out = torch.empty(layout.chunk_format.shape(8), dtype=layout_dtype(layout))
        slots = torch.arange(8, dtype=torch.int64)
        with pytest.raises(
            ValueError, match=rf"kv_caches\[0\]: expected a tensor on a {self.backend} GPU .* given cpu"
        ):
            self.kernels().gather(layout, kv, slots, out)

    def test_wrapper_argument_checks(self) -> None:
        k = self.kernels()
        kv, layout = nhd_case()
        out = torch.empty(layout.chunk_format.shape(8), dtype=layout_dtype(layout))
        slots = torch.arange(8, dtype=torch.int64)
        strided = torch.empty((2, 2, 16, 16), dtype=out.dtype)[:, :, :8]
        with pytest.raises(ValueError, match=r"out: expected a contiguous tensor"):
            k.gather(layout, kv, slots, strided)
        with pytest.raises(
            TypeError, match=r"slot_mapping: expected a 1-D int64 tensor, given 1-D torch.int32"
        ):
            k.gather(layout, kv, slots.int(), out)
        with pytest.raises(TypeError, match=r"skip_prefix: expected int, given float"):
            k.gather(layout, kv, slots, out, 1.0)  # type: ignore[arg-type]
        with pytest.raises(
            ValueError, match=r"host_path: expected one of \['mapped', 'staged'\], given 'dma'"
        ):
            k.gather(layout, kv, slots, out, host_path="dma")
        with pytest.raises(ValueError, match=r"stream: expected a non-negative integer handle, given -1"):
            k.gather(layout, kv, slots, out, stream=-1)
        with pytest.raises(TypeError, match="validate"):  # user-facing checks are Backend's, once
            k.gather(layout, kv, slots, out, validate=True)  # type: ignore[call-arg]
        with pytest.raises(TypeError, match=r"handle: expected None, a GpuEvent"):
            k.synchronize("event")

    def test_host_path_settings(self, monkeypatch: pytest.MonkeyPatch) -> None:
        ext = self.ext()
        env = f"LMCACHE_{self.backend.upper()}_GATHER_PATH"
        monkeypatch.setenv(env, "zero-copy")
        with pytest.raises(
            ValueError, match=rf"{env}: expected one of \['mapped', 'staged'\], given 'zero-copy'"
        ):
            GpuKernels(ext, self.backend).host_paths()
        monkeypatch.setenv(env, "staged")
        k = GpuKernels(ext, self.backend)
        assert k.host_paths() == {"gather": "staged", "scatter": "staged"}
        k.set_host_path(gather="mapped", scatter="mapped")
        assert k.host_paths() == {"gather": "mapped", "scatter": "mapped"}
        with pytest.raises(ValueError, match=r"scatter: expected one of \['mapped', 'staged'\], given 'x'"):
            k.set_host_path(scatter="x")
        monkeypatch.setenv(f"LMCACHE_{self.backend.upper()}_HOST_ALLOC", "registered")
        assert GpuKernels(ext, self.backend).host_alloc_method() == "registered"

    # ---- plugin and CLI ----

    def test_plugin_loads_and_says_compiled_no_device(self) -> None:
        backend = Backend(self.backend, import_plugin(f"{self.package}.plugin:plugin"))
        caps = backend.capabilities
        assert caps.layouts == frozenset(LAYOUT_KINDS) and caps.pinned_host
        assert {"float16", "bfloat16", "float32", "float8_e4m3fn"} <= caps.dtypes
        if self.device_count():
            assert not caps.status.startswith("compiled, no device"), caps.status
        else:
            assert caps.status.startswith("compiled, no device: compiled for "), caps.status
            assert caps.extra["devices"] == "0"

    def test_plugin_refuses_to_load_when_the_driver_shows_gpus_the_runtime_cannot_use(self) -> None:
        """E.g. a driver older than the toolkit the extension was built with: fail loading, say how to fix."""
        if self.device_count():
            pytest.skip("the runtime sees a GPU here")
        plugin = GpuPlugin(self.kernels(), driver_scan=lambda: GpuScan(("test GPU",)))
        with pytest.raises(
            ImportError, match=r"the driver shows 1 GPU\(s\) \(test GPU\), but the .* runtime"
        ):
            Backend(self.backend, plugin)

    def test_plugin_names_every_gpu_without_code_in_one_message(self) -> None:
        """Loading refuses once, naming each GPU the build has no code for (devices as the runtime would list them)."""
        archs = self.module("_build_info").ARCHS
        foreign = "gfx1100" if archs[0].startswith("sm_") or archs[0].startswith("compute_") else "sm_75"
        devices = [
            {"name": "served", "arch": archs[0]},
            {"name": "first stranger", "arch": foreign},
            {"name": "second stranger", "arch": foreign},
        ]

        class ThreeGpus(GpuKernels):
            def device_count(self) -> tuple[int, str]:
                return len(devices), ""

            def device_info(self, device: int = 0) -> dict[str, Any]:
                return devices[device]

        plugin = GpuPlugin(ThreeGpus(self.ext(), self.backend), driver_scan=lambda: GpuScan(()))
        with pytest.raises(ImportError) as raised:
            plugin.status()
        message = str(raised.value)
        assert f"GPU 1 (first stranger, {foreign}), GPU 2 (second stranger, {foreign})" in message, message
        assert "GPU 0" not in message and f"CMAKE_{self.runtime}_ARCHITECTURES=native" in message

    def test_bench_cli_refuses_cleanly_without_a_gpu(self) -> None:
        if self.module("probe").probe().available:
            pytest.skip("the backend is available here")
        cli = Path(sys.executable).with_name("lmcache-core")
        if not cli.exists():
            pytest.skip(f"{cli} not installed")
        run = subprocess.run(
            [
                str(cli),
                "bench",
                "kernels",
                "--backend",
                self.backend,
                "--device",
                "cuda",
                "--quick",
                "--no-progress",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 2, run.stdout + run.stderr
        assert f"--backend {self.backend!r}" in run.stderr and "not available here" in run.stderr
        assert "compiled, no device" in run.stderr and "Traceback" not in run.stderr

    # ---- hostile layouts: overflowing plane extents (the planner's kv_index.h helpers) ----

    @staticmethod
    def _native_args(dtype: torch.dtype) -> tuple[list[torch.Tensor], dict[str, Any]]:
        """vLLM NHD KV (2 layers, 4 blocks of 4, 2 heads of 8) and the native call's keyword arguments."""
        kv, hints = allocate_example(
            "vllm_flash_nhd",
            num_layers=2,
            num_blocks=4,
            block_size=4,
            num_kv_heads=2,
            head_size=8,
            dtype=dtype,
        )
        layout = detect_layout(kv, hints)
        return kv, {**_binding_args(layout, kv), "tensor_nbytes": [t.numel() * t.element_size() for t in kv]}

    @staticmethod
    def _hostile(p: dict[str, Any], variant: str) -> dict[str, Any]:
        """A hand-edited layout whose plane extent or ``offset + extent`` wraps 64 bits."""
        planes = len(p["plane_offset"])

        def block_stride(stride: int) -> list[list[int]]:  # field 3 of each kind (kv_kind_unpack order)
            return [[*k[:3], stride, *k[4:]] for k in p["kinds"]]

        if variant == "wrapped-end":  # every plane 64 elements before its tensor once offset * size wraps
            return {
                **p,
                "plane_offset": [2**63 - 64] * planes,
                "kinds": block_stride((2**62 + 2**10) // 3 + 1),
            }
        if variant == "offset-plus-extent-wraps":
            return {**p, "plane_offset": [*p["plane_offset"][:-1], 2**63 - 2]}
        return {**p, "kinds": block_stride(2**62)}  # the extent itself overflows

    @pytest.mark.parametrize("dtype", [torch.float16, torch.float8_e4m3fn], ids=str)
    @pytest.mark.parametrize("variant", ["wrapped-end", "offset-plus-extent-wraps", "extent-overflows"])
    def test_pointer_table_refuses_overflowing_planes(self, dtype: torch.dtype, variant: str) -> None:
        _, p = self._native_args(dtype)
        assert len(self.ext().plane_addresses(**p)) == 4  # the unedited layout passes
        with pytest.raises(
            ValueError, match=r"^(plane_offset\[\d+\]: plane spans elements|geometry: plane extent)"
        ):
            self.ext().plane_addresses(**self._hostile(p, variant))

    @pytest.mark.parametrize("dtype", [torch.float16, torch.float8_e4m3fn], ids=str)
    def test_transfer_refuses_overflowing_planes_before_any_runtime_call(self, dtype: torch.dtype) -> None:
        """``transfer`` fails in check_layout (ValueError), not at the runtime (RuntimeError without a GPU)."""
        kv, p = self._native_args(dtype)
        before = [t.clone() for t in kv]
        slots = torch.tensor([0, 1], dtype=torch.int64)
        chunk = torch.zeros(2, 2, 2, 16, dtype=dtype)
        job = (0, slots.data_ptr(), 2, 0, chunk.data_ptr(), chunk.numel() * chunk.element_size(), False)
        bad = self._hostile(p, "wrapped-end")
        with pytest.raises(
            ValueError, match=r"^plane_offset\[0\]: plane spans elements \[9223372036854775744, "
        ):
            self.ext().transfer(True, 0, jobs=[job], host_path=0, stream=0, **bad)
        for t, b in zip(kv, before, strict=True):
            assert torch.equal(bits(t), bits(b))

    def test_require_backend_turns_the_no_device_skips_into_failures(self) -> None:
        """A GPU runner whose probe wrongly says "no device" must fail, not pass as skips."""
        if gpu_skip_reason(self.package, self.backend) is None:
            pytest.skip("the backend runs here: no skip to turn into a failure")
        tests = Path(importlib.import_module(self.package).__file__ or "").parents[2] / "tests"
        kernel_tests = sorted(tests.glob("test_*kernels.py"))
        if not (tests / "test_conformance.py").exists() or len(kernel_tests) != 1:
            pytest.skip(f"{tests}: not a source checkout with test_conformance.py and one test_*kernels.py")
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfs",
               str(tests / "test_conformance.py"), str(kernel_tests[0]),
               "-k", "test_device_hooks or test_streams_and_events"]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k != REQUIRE_BACKEND_ENV}
        plain = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tests.parent)
        assert plain.returncode == 0 and "2 skipped" in plain.stdout, plain.stdout + plain.stderr
        env[REQUIRE_BACKEND_ENV] = self.backend
        required = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tests.parent)
        out = required.stdout + required.stderr
        summary = required.stdout.strip().splitlines()[-1]
        assert required.returncode == 1 and "2 errors" in summary and "skipped" not in summary, out
        assert f"backend {self.backend!r} cannot run on this host: " in out, out
        assert f"{REQUIRE_BACKEND_ENV}={self.backend} requires backend {self.backend!r}" in out, out


def _binding_args(layout: KVLayout, kv: list[torch.Tensor]) -> dict[str, Any]:
    """The layout part of the extension's keyword arguments (the core's native_layout), as lists."""
    p = native_layout(layout, kv)
    return {
        "tensor_address": list(p.tensor_address),
        "tensor_nbytes": list(p.tensor_nbytes),
        "plane_tensor": list(p.plane_tensor),
        "plane_offset": list(p.plane_offset),
        "dims": p.dims,
        "kinds": [list(k) for k in p.kinds],
    }
