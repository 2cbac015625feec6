"""``lmcache-core info``, run as a subprocess against the backends really installed.

Parts that need the test plugins of tests/plugins/ (the dummy, its broken and failing siblings)
skip when those are not installed.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from typing import Any

import pytest
import torch

import lmcache_core
from lmcache_core.testing.require import missing_dependency

_TEST_ENV = (
    "LMCACHE_BACKEND",
    "LMCACHE_TEST_DUMMY",
    "LMCACHE_TEST_DUMMY_TWIN",
    "LMCACHE_TEST_DUMMY_BADAPI",
    "LMCACHE_TEST_DUMMY_NOIMPORT",
)


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.fixture
def _test_plugins() -> None:
    """Skip without the test plugins; fail under CI=true, where `make test` installs them."""
    if not (_installed("lmcache-dummy-backend") and _installed("lmcache-broken-probe")):
        missing_dependency("test plugins", "see tests/plugins/README.md")


needs_test_plugins = pytest.mark.usefixtures("_test_plugins")


def _info(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in _TEST_ENV}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "lmcache_core.cli.main", "info", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=full_env,
    )


def _json(**env: str) -> tuple[int, dict[str, Any]]:
    proc = _info("--json", **env)
    return proc.returncode, json.loads(proc.stdout)


def _by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {b["name"]: b for b in report["backends"]}


def test_json_report_describes_versions_host_backends_and_selection() -> None:
    status, report = _json()
    assert status == 0
    assert report["lmcache_core"] == lmcache_core.__version__
    assert report["torch"] == torch.__version__
    host = report["host"]
    assert host["cpu_model"] and host["logical_cpus"] >= 1
    assert host["mem_total_bytes"] is None or host["mem_total_bytes"] > 0
    ref = _by_name(report)["reference"]
    assert ref["available"] and ref["distribution"] == "lmcache-core" and ref["priority"] == 0
    assert ref["device_types"] == ["*"]
    assert ref["capabilities"]["status"] == "ok (pure PyTorch)"
    assert ref["capabilities"]["layouts"] == "all"
    selected = report["selected"]
    assert selected["error"] is None and selected["why"]
    assert selected["device"] == "cpu" or report["accelerator"]["available"]
    # the selected one is an available backend serving that device and torch tensors (the report
    # selects for torch KV), with the top priority among them
    chosen = _by_name(report)[selected["backend"]]
    assert chosen["available"]
    rivals = [
        b["priority"]
        for b in report["backends"]
        if b["available"]
        and b["load_error"] is None
        and ("*" in b["device_types"] or selected["device"] in b["device_types"])
        and "torch" in b["array_types"]
    ]
    assert chosen["priority"] == max(rivals)


def test_text_report() -> None:
    proc = _info()
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"lmcache-core {lmcache_core.__version__}, torch {torch.__version__}" in out
    assert "host: " in out and "LMCACHE_BACKEND: (unset)" in out
    assert "reference: pure PyTorch, runs on every torch device" in out
    assert "capabilities: ok (pure PyTorch)" in out
    assert "selected for '" in out


@needs_test_plugins
def test_broken_probe_is_reported_not_fatal() -> None:
    status, report = _json()
    assert status == 0
    broken = _by_name(report)["broken_probe"]
    assert not broken["available"] and broken["priority"] is None
    assert broken["distribution"] == "lmcache-broken-probe"
    assert "simulated probe crash" in broken["probe_error"]
    dummy = _by_name(report)["dummy"]
    assert not dummy["available"] and "LMCACHE_TEST_DUMMY=1" in dummy["reason"]
    assert dummy["capabilities"] is None
    text = _info().stdout
    assert "broken_probe: probe failed: RuntimeError: simulated probe crash" in text


@needs_test_plugins
def test_enabled_dummy_is_selected_with_its_capabilities() -> None:
    status, report = _json(LMCACHE_TEST_DUMMY="1")
    assert status == 0
    assert report["selected"]["backend"] == "dummy"
    assert "1000" in report["selected"]["why"]
    caps = _by_name(report)["dummy"]["capabilities"]
    assert caps["layouts"] == ["vllm_flash_nhd"] and caps["dtypes"] == "all"
    assert caps["status"] == "test-only: per-token loop, host memory"


@needs_test_plugins
def test_a_plugin_that_fails_to_load_is_shown_with_its_reason() -> None:
    status, report = _json(LMCACHE_TEST_DUMMY_BADAPI="1", LMCACHE_TEST_DUMMY_NOIMPORT="1")
    assert status == 0
    backends = _by_name(report)
    assert "(99, 0)" in backends["dummy_badapi"]["load_error"]
    assert "libdummy.so" in backends["dummy_noimport"]["load_error"]
    assert report["selected"]["backend"] not in ("dummy_badapi", "dummy_noimport")


@needs_test_plugins
def test_an_unusable_override_is_reported_with_exit_status_1() -> None:
    proc = _info("--device", "cpu", LMCACHE_BACKEND="broken_probe")
    assert proc.returncode == 1
    assert "LMCACHE_BACKEND: broken_probe" in proc.stdout
    assert "selected for 'cpu': none: RuntimeError" in proc.stdout
    assert "simulated probe crash" in proc.stdout


def test_every_layout_is_listed_with_its_named_axes_and_plane_kinds() -> None:
    from lmcache_core.cli.info import _layouts, render
    from lmcache_core.layout_registry import LAYOUT_KINDS

    layouts = _layouts()
    assert [e["name"] for e in layouts] == list(LAYOUT_KINDS)
    by_name = {e["name"]: e for e in layouts}
    assert by_name["vllm_ascend_mla"]["plane_kinds"] == [
        "nope (1 x 64), rope (1 x 64)",
        "dsa: nope (1 x 64), rope (1 x 64), indexer (1 x 128)",
    ]
    assert by_name["tpu_inference"]["detected"].startswith("when named")
    report = {
        "lmcache_core": "0", "torch": "0", "python": "0", "host_line": "h", "accelerator": {"available": False},
        "env": {"LMCACHE_BACKEND": None}, "entry_point_group": "g", "backends": [],
        "selected": {"device": "cpu", "error": "none"}, "layouts": layouts,
    }  # fmt: skip
    text = render(report)
    for name, entry in LAYOUT_KINDS.items():
        assert f"  {name}: {entry.axes}" in text
