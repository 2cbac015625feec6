"""torch_npu is imported only when the backend loads; when that fails the backend is skipped with
the exception's text (automatic selection), or the explicit request fails loudly with it."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from lmcache_ascend.probe import PLUGIN
from lmcache_core import selection
from lmcache_core.discovery import DiscoveredBackend
from lmcache_core.plugin_api import BackendProbe, Priority


def _found_as_on_an_npu_host() -> list[DiscoveredBackend]:
    """What discovery reports on a host whose probe passes (device nodes, CANN, torch_npu found)."""
    probe = BackendProbe(True, "as on an NPU host", Priority.ACCELERATOR, ("npu",), PLUGIN)
    return [DiscoveredBackend("ascend", "lmcache_ascend.probe:probe", "lmcache-ascend", probe)]


def _torch_npu_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch_npu") is not None


@pytest.fixture
def npu_host(monkeypatch: pytest.MonkeyPatch) -> None:
    if _torch_npu_importable():
        pytest.skip("torch_npu is installed here: the import does not fail")
    monkeypatch.setattr(selection, "discover_backends", _found_as_on_an_npu_host)


@pytest.mark.usefixtures("npu_host")
def test_a_failing_torch_npu_import_skips_the_backend_with_its_text(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="lmcache_core.selection"):
        chosen = selection.select_backend("npu")
    assert chosen.backend.name == "reference"
    assert (
        "backend 'ascend' failed to load, skipped: ModuleNotFoundError: No module named 'torch_npu'"
        in caplog.text
    )


@pytest.mark.usefixtures("npu_host")
def test_asking_for_it_by_name_fails_loudly_with_the_text() -> None:
    with pytest.raises(
        RuntimeError,
        match="backend 'ascend' failed to load: ModuleNotFoundError: No module named 'torch_npu'",
    ):
        selection.select_backend("npu", "ascend")


def test_normal_selection_leaves_cpu_kv_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    from lmcache_ascend.probe import CPU_SWITCH

    monkeypatch.delenv(CPU_SWITCH, raising=False)
    assert selection.select_backend("cpu").backend.name != "ascend"


def test_the_hooks_module_imports_no_torch_npu() -> None:
    code = (
        "import sys, lmcache_ascend.hooks, lmcache_ascend.host, lmcache_ascend.torch_ops, lmcache_ascend.device; "
        "print('torch_npu' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "False", out.stderr
