"""The ``arm`` backend's probe, registration and hooks (needs the installed package; no device)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from lmcache_arm import _C, plugin
from lmcache_arm.probe import isa_path, probe
from lmcache_core.layout_registry import LAYOUT_KINDS
from lmcache_core.plugin_api import BACKEND_ENV, Priority
from lmcache_core.selection import select_backend
from lmcache_core.testing import make_cases


def test_probe_finds_the_extension_and_serves_host_memory() -> None:
    p = probe()
    assert p.available, p.reason
    assert (p.priority, p.device_types, p.plugin) == (Priority.NATIVE_HOST, ("cpu",), "lmcache_arm.plugin")
    assert isa_path() in p.reason


def test_probe_imports_neither_torch_nor_the_extension() -> None:
    code = (
        "import sys\n"
        "from lmcache_arm.probe import probe\n"
        "p = probe()\n"
        "print(p.available, 'torch' in sys.modules, 'lmcache_arm._C' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "False", "False"]


@pytest.mark.parametrize(
    ("machine", "path"),
    [("aarch64", "NEON native"), ("arm64", "NEON native"), ("x86_64", "NEON via SIMDe on x86_64")],
)
def test_isa_path_names(machine: str, path: str) -> None:
    assert isa_path(machine) == path


def test_compiled_isa_matches_the_probe() -> None:
    assert _C.isa() == isa_path()


def test_selected_automatically_for_host_kv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    selection = select_backend("cpu")
    assert selection.backend.name == "arm", selection.why
    cases = make_cases(seed=3, count=1)
    for kind in LAYOUT_KINDS:
        _, layout = next(c for c in cases if c.kind == kind).random_kv()
        assert selection.backend.kernel_name(layout) == "arm", kind


def test_capabilities_cover_every_layout_and_element_size() -> None:
    caps = plugin.lmcache_capabilities()
    assert caps.layouts == frozenset(LAYOUT_KINDS)
    sizes = {getattr(torch, name).itemsize for name in caps.dtypes}
    assert sizes == {1, 2, 4, 8}
    for name in ("float16", "bfloat16", "float32", "float8_e4m3fn", "float8_e5m2"):
        assert caps.covers("vllm_cpu", name)
    assert not caps.pinned_host
    assert _C.isa() in caps.status and "page-locking" in caps.status


def test_alloc_host_gives_plain_host_bytes() -> None:
    for pinned in (True, False):
        buf = plugin.lmcache_alloc_host(nbytes=1000, pinned=pinned)
        assert (buf.dtype, tuple(buf.shape), buf.device.type, buf.is_pinned()) == (
            torch.uint8,
            (1000,),
            "cpu",
            False,
        )


def test_api_version_is_accepted_by_the_core() -> None:
    from lmcache_core.plugin_api import check_api_version

    check_api_version("arm", plugin.lmcache_api_version())


def test_probe_without_the_extension_says_how_to_build_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    import lmcache_arm.probe as probe_module

    real = importlib.util.find_spec
    monkeypatch.setattr(
        probe_module.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "lmcache_arm._C" else real(name, *a),
    )
    p = probe_module.probe()
    assert (p.available, p.plugin, p.device_types) == (False, None, ("cpu",))
    assert "pip install --no-build-isolation" in p.reason
