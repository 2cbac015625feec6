"""``lmcache_rocm._C`` without a GPU: the build, native checks, pointer table, plan, host memory, wrapper, plugin, CLI.

Needs the built extension and its runtime library (HIP), not a GPU: everything here is checked
before a runtime call, or asserts how the runtime fails when there is no device. The shared bodies
are :class:`lmcache_gpu.testing.ExtensionTests`; how HIP stores device code (a code object per
gfx target in the offload bundle) is checked here.
"""

from __future__ import annotations

from lmcache_gpu.testing import ExtensionTests


class TestRocmExtension(ExtensionTests):
    package = "lmcache_rocm"
    backend = "rocm"
    runtime = "HIP"
    runtime_library = "libamdhip64.so"

    def test_device_code_is_in_the_binary(self) -> None:
        """A code object for every gfx target of the build (the offload bundle names each)."""
        data = self.so_path().read_bytes()
        for arch in self.module("_build_info").ARCHS:
            assert f"amdgcn-amd-amdhsa--{arch}".encode() in data, (
                f"no {arch} code object in {self.so_path().name}"
            )
