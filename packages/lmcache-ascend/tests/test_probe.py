"""The probe: torch_npu found (never imported), NPU device nodes, CANN; each missing piece by name.

A temporary directory is laid out as an Ascend host: ``dev/davinci0``, ``dev/davinci1``,
``dev/davinci_manager`` (plain files standing for the device nodes), the CANN toolkit at
``usr/local/Ascend/ascend-toolkit/latest`` and a ``torch_npu`` package directory on a search path
(its ``__init__.py`` raises, so an import would fail the test).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lmcache_ascend import UNVERIFIED
from lmcache_ascend.probe import CANN_DEFAULT, CPU_SWITCH, HOST_PLUGIN, PLUGIN, probe
from lmcache_core.plugin_api import Priority


def _host(
    root: Path, *, nodes: bool = True, manager: bool = True, cann: bool = True, npu: bool = True
) -> Path:
    """Lay out an Ascend host under ``root``; returns the torch_npu search path."""
    (root / "dev").mkdir(parents=True)
    if nodes:
        for name in ("davinci0", "davinci1"):
            (root / "dev" / name).touch()
    (root / "dev" / "davinci_other").touch()  # not a device node: no digit suffix
    if manager:
        (root / "dev" / "davinci_manager").touch()
    if cann:
        (root / CANN_DEFAULT / "lib64").mkdir(parents=True)
    site = root / "site-packages"
    if npu:
        (site / "torch_npu").mkdir(parents=True)
        (site / "torch_npu" / "__init__.py").write_text(
            "raise RuntimeError('the probe imported torch_npu')\n"
        )
    else:
        site.mkdir()
    return site


def test_a_complete_host_is_available(tmp_path: Path) -> None:
    site = _host(tmp_path)
    found = probe(root=tmp_path, search_path=[str(site)], environ={})
    assert found.available, found.reason
    assert (found.plugin, found.device_types, found.priority) == (PLUGIN, ("npu",), Priority.ACCELERATOR)
    assert "2 NPU device node(s) (davinci0, davinci1)" in found.reason
    assert str(site / "torch_npu") in found.reason and str(tmp_path / CANN_DEFAULT) in found.reason
    assert found.reason.endswith(UNVERIFIED)


def test_ascend_home_path_wins_over_the_standard_path(tmp_path: Path) -> None:
    site = _host(tmp_path, cann=False)
    elsewhere = tmp_path / "opt" / "cann"
    elsewhere.mkdir(parents=True)
    found = probe(root=tmp_path, search_path=[str(site)], environ={"ASCEND_HOME_PATH": str(elsewhere)})
    assert found.available and f"CANN at {elsewhere}" in found.reason
    gone = probe(root=tmp_path, search_path=[str(site)], environ={"ASCEND_HOME_PATH": str(tmp_path / "nope")})
    assert not gone.available and f"CANN toolkit (ASCEND_HOME_PATH={tmp_path / 'nope'}" in gone.reason


@pytest.mark.parametrize(
    ("piece", "named"),
    [
        ("npu", "torch_npu (not installed"),
        ("nodes", "NPU device nodes ("),
        ("manager", "davinci_manager (absent"),
        ("cann", "CANN toolkit (ASCEND_HOME_PATH unset and"),
    ],
)
def test_each_missing_piece_is_named(tmp_path: Path, piece: str, named: str) -> None:
    site = _host(tmp_path, **{piece: False})
    found = probe(root=tmp_path, search_path=[str(site)], environ={})
    assert not found.available and found.plugin is None
    assert found.reason.startswith("missing: ") and named in found.reason, found.reason
    assert found.reason.count(";") == 1  # exactly one piece missing, then the status


def test_an_empty_root_names_every_piece(tmp_path: Path) -> None:
    found = probe(root=tmp_path, search_path=[str(tmp_path)], environ={})
    for named in ("torch_npu", "davinci[0-9]*", "davinci_manager", "CANN toolkit"):
        assert named in found.reason, found.reason


def test_the_cpu_switch_serves_cpu_through_the_torch_ops_plugin(tmp_path: Path) -> None:
    found = probe(root=tmp_path, search_path=[], environ={CPU_SWITCH: "1"})
    assert (found.available, found.device_types, found.plugin) == (True, ("cpu",), HOST_PLUGIN)
    assert UNVERIFIED in found.reason


def test_probe_and_package_import_neither_torch_nor_torch_npu() -> None:
    code = (
        "import sys; from lmcache_ascend.probe import probe; probe(); import lmcache_ascend.kernel_args; "
        "print(sorted(m for m in ('torch', 'torch_npu') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
