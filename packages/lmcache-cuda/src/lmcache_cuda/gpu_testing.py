"""Test bodies shared by lmcache-cuda and lmcache-rocm (lmcache-rocm carries this file as a symlink).

Each package's tests subclass these with its names, as backends subclass the core's
``ConformanceSuite``:

* :class:`ProbeTests` (CPU): the probe's answers, its cost (no torch import), the driver scans;
* :class:`ExtensionTests` (CPU): the extension imports without a GPU, what it was compiled for, its
  native checks (bad slots, sizes, plane table) raising ValueError before anything is touched, the
  pointer table, the vector-width plan, host memory through DLPack, the Python wrapper's checks,
  the plugin loading as ``"compiled, no device"``, and the bench CLI refusing cleanly;
* :class:`KernelTests` (GPU): the kernels bit for bit against the reference for every layout and
  dtype, through every host path, multi-chunk launches, bad slots writing nothing, the plane-table
  cache, host memory and streams. Skipped, with the probe's reason, where no usable GPU is.

Subclasses set ``package`` (``"lmcache_cuda"``), ``backend`` (``"cuda"``) and ``runtime``
(``"CUDA"`` / ``"HIP"``). May assume: pytest and torch import. Imported only by tests.
"""

from __future__ import annotations

import gc
import importlib
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from lmcache_core.backend import Backend, import_plugin, reference_backend
from lmcache_core.layout import KVLayout
from lmcache_core.layout_registry import LAYOUT_KINDS, allocate_example, detect_layout
from lmcache_core.plugin_api import BackendProbe, Priority
from lmcache_core.testing.cases import Case, bits, make_cases, poison_, poison_value, random_bits_
from lmcache_core.testing.require import REQUIRE_BACKEND_ENV, backend_cannot_run

from .gpu_kernels import HOST_PATHS, ChunkJob, GpuKernels
from .gpu_probe import TorchBuild


class _Package:
    package: ClassVar[str] = ""
    backend: ClassVar[str] = ""
    runtime: ClassVar[str] = ""

    @classmethod
    def module(cls, name: str) -> Any:
        return importlib.import_module(f"{cls.package}.{name}")

    @classmethod
    def ext(cls) -> Any:
        return cls.module("_C")

    @classmethod
    def kernels(cls) -> GpuKernels:
        return cls.module("kernels").KERNELS  # type: ignore[no-any-return]

    @classmethod
    def device_count(cls) -> int:
        return int(cls.ext().device_count()[0])


def _nhd_case(num_tokens: int = 8, dtype: torch.dtype = torch.float16) -> tuple[list[torch.Tensor], KVLayout]:
    """CPU vLLM NHD tensors (2 layers, 4 blocks of 16, 2 heads of 8) full of random bits, and the layout."""
    tensors, hints = allocate_example(
        "vllm_flash_nhd", num_layers=2, num_blocks=4, block_size=16, num_kv_heads=2, head_size=8, dtype=dtype
    )
    gen = torch.Generator().manual_seed(num_tokens)
    for t in tensors:
        random_bits_(t, gen)
    return tensors, detect_layout(tensors, hints)


# ---- probe ---------------------------------------------------------------------------------------


class ProbeTests(_Package):
    """The probe's answers for each situation, and what it costs."""

    def probe(self) -> BackendProbe:
        return self.module("probe").probe()  # type: ignore[no-any-return]

    def test_answers_with_the_accelerator_priority_and_device_type(self) -> None:
        answer = self.probe()
        assert isinstance(answer, BackendProbe)
        assert answer.priority == Priority.ACCELERATOR
        assert answer.device_types == ("cuda",)
        assert (answer.plugin is not None) == answer.available

    def test_compiled_no_device_when_the_driver_shows_no_gpu(self, monkeypatch: pytest.MonkeyPatch) -> None:
        gp = self.module("gpu_probe")
        scan = "nvidia_gpus" if self.runtime == "CUDA" else "amd_gpus"
        monkeypatch.setattr(gp, scan, lambda: gp.GpuScan((), "test: no GPU"))
        answer = self.probe()
        assert not answer.available
        assert answer.reason.startswith("compiled, no device: compiled for "), answer.reason
        info = gp.build_info(self.package)
        assert info is not None and all(
            a in answer.reason for a in info.archs if not a.startswith("compute_")
        )
        assert "test: no GPU" in answer.reason

    def test_available_with_a_gpu_and_a_matching_torch(self, monkeypatch: pytest.MonkeyPatch) -> None:
        gp = self.module("gpu_probe")
        info = gp.build_info(self.package)
        assert info is not None
        if self.runtime == "CUDA":
            monkeypatch.setattr(gp, "nvidia_gpus", lambda: gp.GpuScan(("NVIDIA H100 80GB HBM3",)))
            monkeypatch.setattr(gp, "torch_build", lambda: TorchBuild("2.8.0+cu128", "12.8", None, "test"))
        else:
            monkeypatch.setattr(gp, "amd_gpus", lambda: gp.GpuScan((info.archs[0],)))
            monkeypatch.setattr(gp, "torch_build", lambda: TorchBuild("2.8.0+rocm6.4", None, "6.4.4", "test"))
        answer = self.probe()
        assert answer.available, answer.reason
        assert answer.plugin == f"{self.package}.plugin:plugin"

    def test_tells_rocm_torch_from_cuda_torch_by_torch_version_hip(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Both builds report device type "cuda"; only torch.version.hip tells them apart."""
        gp = self.module("gpu_probe")
        info = gp.build_info(self.package)
        assert info is not None
        monkeypatch.setattr(gp, "nvidia_gpus", lambda: gp.GpuScan(("NVIDIA H100 80GB HBM3",)))
        monkeypatch.setattr(gp, "amd_gpus", lambda: gp.GpuScan((info.archs[0],)))
        rocm = TorchBuild("2.8.0+rocm6.4", None, "6.4.4", "test")
        cuda = TorchBuild("2.8.0+cu128", "12.8", None, "test")
        monkeypatch.setattr(gp, "torch_build", lambda: rocm if self.runtime == "CUDA" else cuda)
        answer = self.probe()
        assert not answer.available
        assert ("ROCm build" if self.runtime == "CUDA" else "not a ROCm build") in answer.reason, (
            answer.reason
        )
        assert "torch.version.hip" in answer.reason

    def test_not_built_names_the_extension_and_the_remedy(self) -> None:
        gp = self.module("gpu_probe")
        answer = gp.not_built(
            "lmcache_no_such_package_for_tests", self.backend, f"packages/lmcache-{self.backend}"
        )
        assert answer is not None and not answer.available
        assert "lmcache_no_such_package_for_tests._C" in answer.reason and "make -C" in answer.reason
        assert gp.not_built(self.package, self.backend, "x") is None  # built here

    def test_probe_does_not_import_torch(self) -> None:
        code = (
            "import sys\n"
            f"from {self.package}.probe import probe\n"
            "answer = probe()\n"
            "print(type(answer).__name__, 'torch' in sys.modules, any(m.endswith('._C') for m in sys.modules))\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        kind, torch_loaded, ext_loaded = out.split()
        assert kind == "BackendProbe"
        assert torch_loaded == "False", "the probe imported torch"
        assert ext_loaded == "False", "the probe loaded a compiled extension"

    def test_torch_build_read_as_text_matches_torch_version(self) -> None:
        code = (
            "import sys, json\n"
            f"from {self.package}.gpu_probe import torch_build\n"
            "b = torch_build()\n"
            "print(json.dumps([b.version, b.cuda, b.hip, 'torch' in sys.modules]))\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        import json

        version, cuda, hip, imported = json.loads(out)
        assert imported is False
        assert (version, cuda, hip) == (torch.__version__, torch.version.cuda, torch.version.hip)
        loaded = self.module("gpu_probe").torch_build()  # torch is imported in this process
        assert (loaded.version, loaded.cuda, loaded.hip) == (version, cuda, hip)

    def test_nvidia_scan_reads_the_driver_entries(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        gp = self.module("gpu_probe")
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        proc, dev = tmp_path / "gpus", tmp_path / "dev"
        dev.mkdir()
        assert gp.nvidia_gpus(tmp_path / "missing", dev).names == ()
        (dev / "nvidia0").write_text("")
        (dev / "nvidiactl").write_text("")
        assert gp.nvidia_gpus(tmp_path / "missing", dev).names == ("NVIDIA GPU",)
        for bus, model in (
            ("0000:01:00.0", "NVIDIA H100 80GB HBM3"),
            ("0000:02:00.0", "NVIDIA A100-SXM4-80GB"),
        ):
            (proc / bus).mkdir(parents=True)
            (proc / bus / "information").write_text(f"Model: \t\t {model}\nIRQ:   42\n")
        assert gp.nvidia_gpus(proc, dev).names == ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB")
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
        hidden = gp.nvidia_gpus(proc, dev)
        assert hidden.names == () and "CUDA_VISIBLE_DEVICES" in hidden.why_none

    def test_amd_scan_reads_the_kfd_topology(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        gp = self.module("gpu_probe")
        for name in ("HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"):
            monkeypatch.delenv(name, raising=False)
        kfd, nodes = tmp_path / "kfd", tmp_path / "nodes"
        assert "missing" in gp.amd_gpus(kfd, nodes).why_none
        kfd.write_text("")
        for i, (simds, target) in enumerate(((0, 0), (440, 90010), (304, 90402))):  # CPU node, MI250X, MI300X
            (nodes / str(i)).mkdir(parents=True)
            (nodes / str(i) / "properties").write_text(
                f"cpu_cores_count 8\nsimd_count {simds}\ngfx_target_version {target}\n"
            )
        assert gp.amd_gpus(kfd, nodes).names == ("gfx90a", "gfx942")
        monkeypatch.setenv("ROCR_VISIBLE_DEVICES", "-1")
        assert gp.amd_gpus(kfd, nodes).names == ()

    @pytest.mark.parametrize(
        ("version", "name"), [(90010, "gfx90a"), (90402, "gfx942"), (90008, "gfx908"), (110000, "gfx1100")]
    )
    def test_gfx_names(self, version: int, name: str) -> None:
        assert self.module("gpu_probe").gfx_name(version) == name


# ---- extension, native checks, wrapper (no GPU needed) ------------------------------------------


def _fatbin_entries(so: Path) -> set[tuple[str, int]]:
    """(kind, arch) of each CUDA fatbin entry in the ``.nv_fatbin`` section: ("elf", 80), ("ptx", 90).

    Fatbin layout (as nvcc 11-13 write it): a 16-byte header (magic 0xBA55ED50, version, header
    size, payload size), then entries, each with its kind (1 PTX, 2 ELF) at offset 0, its header
    size at 4, its payload size at 8 and its sm number at 28.
    """
    data = so.read_bytes()
    header = subprocess.run(
        ["readelf", "-S", "-W", str(so)], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"\.nv_fatbin\s+\w+\s+[0-9a-f]+\s+([0-9a-f]+)\s+([0-9a-f]+)", header)
    assert match, "no .nv_fatbin section: no device code"
    start, size = int(match.group(1), 16), int(match.group(2), 16)
    blob, pos, found = data[start : start + size], 0, set()
    while pos + 16 <= len(blob):
        magic, _, header_size, payload = struct.unpack_from("<IHHQ", blob, pos)
        if magic != 0xBA55ED50:
            break
        entry, end = pos + header_size, pos + header_size + payload
        while entry < end:
            kind, _, entry_header, entry_payload = struct.unpack_from("<HHIQ", blob, entry)
            (arch,) = struct.unpack_from("<I", blob, entry + 28)
            found.add(({1: "ptx", 2: "elf"}.get(kind, str(kind)), arch))
            entry += entry_header + entry_payload
        pos = end
    return found


class ExtensionTests(_Package):
    """What can be checked without a GPU: the build, native checks, pointer table, plan, wrapper."""

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
        runtime_lib = "libcudart.so" if self.runtime == "CUDA" else "libamdhip64.so"
        assert any(n.startswith(runtime_lib) for n in needed), needed
        assert not any("torch" in n or n.startswith("libc10") for n in needed), needed

    def test_device_code_is_in_the_binary(self) -> None:
        archs = self.module("_build_info").ARCHS
        if shutil.which("readelf") is None:
            pytest.skip("readelf not found")
        so = self.so_path()
        if self.runtime == "CUDA":
            want = {("ptx" if a.startswith("compute_") else "elf", int(re.sub(r"\D", "", a))) for a in archs}
            assert _fatbin_entries(so) == want
        else:
            data = so.read_bytes()
            for arch in archs:
                assert f"amdgcn-amd-amdhsa--{arch}".encode() in data, f"no {arch} code object in {so.name}"

    def test_device_count_without_a_gpu_reports_the_runtime_error(self) -> None:
        count, error = self.ext().device_count()
        if count:
            pytest.skip(f"{count} GPU(s) present")
        assert "GetDeviceCount" in error and self.runtime in error

    # ---- native checks: ValueError before any byte is written ----

    def _native(
        self, layout: KVLayout, kv: list[torch.Tensor], jobs: list[tuple[Any, ...]], **over: Any
    ) -> Any:
        p = dict(self.kernels()._prepare(layout, kv))
        p.update(over)
        return self.ext().transfer(
            True,
            over.pop("device", 0),
            p["tensor_address"],
            p["tensor_nbytes"],
            p["plane_tensor"],
            p["plane_offset"],
            p["dims"],
            p["strides"],
            p["element_size"],
            jobs,
            over.pop("host_path", 0),
            0,
        )

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
        kv, layout = _nhd_case()
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
        kv, layout = _nhd_case()
        good, bad = torch.arange(4, dtype=torch.int64), torch.tensor([0, 1, 2**40], dtype=torch.int64)
        chunks = [
            poison_(torch.empty(layout.chunk_format.shape(n), dtype=layout_dtype(layout))) for n in (4, 3)
        ]
        with pytest.raises(ValueError, match=r"jobs\[1\]\.slot_mapping\[2\]: .*given 1099511627776"):
            self._native(layout, kv, [self._job(good, chunks[0]), self._job(bad, chunks[1])])

    def test_wrong_chunk_size_and_skip_prefix_raise(self) -> None:
        kv, layout = _nhd_case()
        slots = torch.arange(8, dtype=torch.int64)
        chunk = poison_(torch.empty(layout.chunk_format.shape(8), dtype=layout_dtype(layout)))
        size = chunk.numel() * chunk.element_size()
        with pytest.raises(ValueError, match=rf"chunk: expected {size} bytes .* given {size - 2}"):
            self._native(layout, kv, [self._job(slots, chunk, nbytes=size - 2)])
        with pytest.raises(ValueError, match=r"skip_prefix: expected 0 <= skip_prefix <= 8, given 9"):
            self._native(layout, kv, [self._job(slots, chunk, skip=9)])

    def test_plane_table_and_extents_are_checked(self) -> None:
        kv, layout = _nhd_case()
        slots = torch.arange(8, dtype=torch.int64)
        chunk = poison_(torch.empty(layout.chunk_format.shape(8), dtype=layout_dtype(layout)))
        job = [self._job(slots, chunk)]
        p = self.kernels()._prepare(layout, kv)
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
        with pytest.raises(ValueError, match=r"element_size: expected 1, 2, 4 or 8 bytes, given 3"):
            self._native(layout, kv, job, element_size=3)

    def test_valid_arguments_reach_the_runtime_and_fail_there_without_a_gpu(self) -> None:
        """Skipped slots are not checked (the contract); with no GPU the first runtime call fails."""
        if self.device_count():
            pytest.skip("a GPU is present: these host pointers must not reach a kernel")
        kv, layout = _nhd_case()
        slots = torch.tensor([2**40, -7, 5, -1, 9], dtype=torch.int64)  # garbage in the skipped prefix
        chunk = poison_(torch.empty(layout.chunk_format.shape(5), dtype=layout_dtype(layout)))
        with pytest.raises(RuntimeError, match=rf"{self.runtime} (GetDevice|SetDevice) failed"):
            self._native(layout, kv, [self._job(slots, chunk, skip=2)])

    def test_nothing_to_move_needs_no_device(self) -> None:
        kv, layout = _nhd_case()
        slots = torch.tensor([3, 4], dtype=torch.int64)
        chunk = poison_(torch.empty(layout.chunk_format.shape(2), dtype=layout_dtype(layout)))
        assert self._native(layout, kv, [self._job(slots, chunk, skip=2)]) == ["nothing to move"]

    # ---- pointer table and plan ----

    @pytest.mark.parametrize("kind", sorted(LAYOUT_KINDS))
    def test_pointer_table_matches_the_reference_planes(self, kind: str) -> None:
        from lmcache_core.backends.reference import plane_view

        mla, sglang = LAYOUT_KINDS[kind].mla, kind == "sglang"
        tensors, hints = allocate_example(
            kind,
            num_layers=3,
            num_blocks=5,
            block_size=1 if sglang else 4,
            num_kv_heads=1 if mla else 2,
            head_size=24,
            dtype=torch.bfloat16,
        )
        layout = detect_layout(tensors, hints)
        table = self.kernels().plane_addresses(layout, tensors)
        want = tuple(
            plane_view(layout, tensors, p).data_ptr() for p in range(layout.num_kv * layout.num_layers)
        )
        assert table == want

    @pytest.mark.parametrize(
        ("dims", "strides", "es", "plane_shift", "chunk_shift", "want"),
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
        plan = self.ext().plan(planes, [base * 4 + chunk_shift], dims, strides, es)
        keys = ("vector_bytes", "row_bytes", "run_bytes", "vecs_per_row", "vecs_per_run", "group_threads")
        assert tuple(plan[k] for k in keys) == want

    def test_plan_through_the_wrapper_on_torch_tensors(self) -> None:
        kv, layout = _nhd_case()
        chunk = torch.empty(layout.chunk_format.shape(8), dtype=layout_dtype(layout))
        plan = self.kernels().plan(layout, kv, [chunk])
        row = layout.hidden * layout.element_size  # 2 heads x 8 fp16 = 32 bytes
        assert plan["row_bytes"] == row and row % plan["vector_bytes"] == 0
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
        kv, layout = _nhd_case()
        out = torch.empty(layout.chunk_format.shape(8), dtype=layout_dtype(layout))
        slots = torch.arange(8, dtype=torch.int64)
        with pytest.raises(
            ValueError, match=rf"kv_caches\[0\]: expected a tensor on a {self.backend} GPU .* given cpu"
        ):
            self.kernels().gather(layout, kv, slots, out, validate=False)

    def test_wrapper_argument_checks(self) -> None:
        k = self.kernels()
        kv, layout = _nhd_case()
        out = torch.empty(layout.chunk_format.shape(8), dtype=layout_dtype(layout))
        slots = torch.arange(8, dtype=torch.int64)
        strided = torch.empty((2, 2, 16, 16), dtype=out.dtype)[:, :, :8]
        with pytest.raises(ValueError, match=r"out: expected a contiguous tensor"):
            k.gather(layout, kv, slots, strided, validate=False)
        with pytest.raises(
            TypeError, match=r"slot_mapping: expected a 1-D int64 tensor, given 1-D torch.int32"
        ):
            k.gather(layout, kv, slots.int(), out, validate=False)
        with pytest.raises(
            TypeError, match=r"src: expected 2-byte elements \(float16\), given torch.float32"
        ):
            k.scatter(layout, kv, slots, out.float(), validate=False)
        with pytest.raises(TypeError, match=r"skip_prefix: expected int, given float"):
            k.gather(layout, kv, slots, out, 1.0, validate=False)  # type: ignore[arg-type]
        with pytest.raises(
            ValueError, match=r"host_path: expected one of \['mapped', 'staged'\], given 'dma'"
        ):
            k.gather(layout, kv, slots, out, host_path="dma", validate=False)
        with pytest.raises(ValueError, match=r"stream: expected a non-negative integer handle, given -1"):
            k.gather(layout, kv, slots, out, stream=-1, validate=False)
        with pytest.raises(ValueError, match=r"out: expected shape"):  # the core's checks with validate=True
            k.gather(layout, kv, slots, out[:, :1], validate=True)
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

    def test_plugin_refuses_to_load_when_the_driver_shows_gpus_the_runtime_cannot_use(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """E.g. a driver older than the toolkit the extension was built with: fail loading, say how to fix."""
        if self.device_count():
            pytest.skip("the runtime sees a GPU here")
        gpu_plugin = self.module("gpu_plugin")
        gp = self.module("gpu_probe")
        scan = "nvidia_gpus" if self.runtime == "CUDA" else "amd_gpus"
        monkeypatch.setattr(gpu_plugin, scan, lambda: gp.GpuScan(("test GPU",)))
        with pytest.raises(
            ImportError, match=r"the driver shows 1 GPU\(s\) \(test GPU\), but the .* runtime"
        ):
            Backend(self.backend, self.module("plugin").plugin)

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


def layout_dtype(layout: KVLayout) -> torch.dtype:
    return getattr(torch, layout.dtype)  # type: ignore[no-any-return]


# ---- kernels on a GPU --------------------------------------------------------------------------


def gpu_skip_reason(package: str, backend: str) -> str | None:
    """Why the GPU tests cannot run here (the probe's reason), or None."""
    probe = importlib.import_module(f"{package}.probe").probe()
    if not probe.available:
        return f"backend {backend!r} cannot run on this host: {probe.reason}"
    if not torch.cuda.is_available():
        return "torch.cuda.is_available() is False"
    return None


#: Conformance-style cases (every layout variant, every dtype, odd head sizes, holes, skips).
GPU_CASES = make_cases(seed=6, count=6)
#: How the chunk is reached: the two host paths, and the chunk in device memory.
CHUNK_PLACES = (*HOST_PATHS, "device")


class KernelTests(_Package):
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
        out = poison_(self._chunk(gpu, case.chunk_shape(), case.dtype, place))
        path = gpu.gather(
            layout,
            kv,
            slots.cuda() if slots_on_gpu else slots,
            out,
            case.skip_prefix,
            host_path=None if place == "device" else place,
        )
        gpu.synchronize()
        expected = poison_(torch.empty(case.chunk_shape(), dtype=case.dtype))
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
        src = self._chunk(gpu, case.chunk_shape(), case.dtype, place).copy_(src_cpu)
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
        kv_cpu, layout = _nhd_case(num_tokens=40, dtype=torch.bfloat16)
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
        kv_cpu, _ = _nhd_case()
        kv = self._to_gpu(kv_cpu)
        layout = detect_layout(kv, _nhd_hints())
        slots = torch.arange(8, dtype=torch.int64)
        slots[5] = layout.num_slots + 3
        chunk = poison_(self._chunk(gpu, layout.chunk_format.shape(8), torch.float16, "mapped"))
        before = chunk.clone()
        move = gpu.gather if op == "gather" else gpu.scatter
        with pytest.raises(ValueError, match=r"slot_mapping\[5\]: expected -1 <= slot < 64 .*given 67"):
            move(layout, kv, slots.cuda() if slots_on_gpu else slots, chunk, validate=False)
        gpu.synchronize()
        assert torch.equal(bits(chunk), bits(before)), "chunk written"
        for t, t_cpu in zip(kv, kv_cpu, strict=True):
            assert torch.equal(bits(t.cpu()), bits(t_cpu)), "KV written"

    # ---- caches, host memory, streams ----

    def test_plane_table_is_uploaded_once_per_layout(self, gpu: GpuKernels) -> None:
        kv_cpu, _ = _nhd_case()
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
        kv_cpu, layout_cpu = _nhd_case()
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
