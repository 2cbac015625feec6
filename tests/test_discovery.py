"""Discovery through real installed entry points, proved with the test plugins under tests/plugins/.

The plugins are installed editable into the venv (see tests/plugins/README.md). Their probes are
cheap and gated by environment variables, so these tests set the variables they need and clear
the rest.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from lmcache_core.discovery import DiscoveredBackend, discover_backends
from lmcache_core.testing.require import import_module

lmcache_broken_probe = import_module(
    "lmcache_broken_probe.probe", "see tests/plugins/README.md", module_level=True
)  # skips the module, or fails it under CI=true
BROKEN_MESSAGE = lmcache_broken_probe.MESSAGE


def _by_name() -> dict[str, DiscoveredBackend]:
    return {d.name: d for d in discover_backends()}


def test_every_test_plugin_is_found_with_its_distribution() -> None:
    found = _by_name()
    expected = {
        "reference": ("lmcache-core", "lmcache_core.backends.reference_probe:probe"),
        "dummy": ("lmcache-dummy-backend", "lmcache_dummy_backend.probe:probe"),
        "dummy_badapi": ("lmcache-dummy-backend", "lmcache_dummy_backend.probe:probe_badapi"),
        "dummy_noimport": ("lmcache-dummy-backend", "lmcache_dummy_backend.probe:probe_noimport"),
        "dummy_twin": ("lmcache-dummy-twin", "lmcache_dummy_twin.probe:probe"),
        "broken_probe": ("lmcache-broken-probe", "lmcache_broken_probe.probe:probe"),
    }
    for name, (dist, target) in expected.items():
        assert name in found, f"{name} not discovered; found {sorted(found)}"
        assert (found[name].distribution, found[name].target) == (dist, target)
    names = [d.name for d in discover_backends()]
    assert names == sorted(names)


def test_disabled_dummies_are_unavailable_and_say_which_variable_enables_them() -> None:
    found = _by_name()
    for name, var in (
        ("dummy", "LMCACHE_TEST_DUMMY"),
        ("dummy_twin", "LMCACHE_TEST_DUMMY_TWIN"),
        ("dummy_badapi", "LMCACHE_TEST_DUMMY_BADAPI"),
        ("dummy_noimport", "LMCACHE_TEST_DUMMY_NOIMPORT"),
    ):
        d = found[name]
        assert d.probe is not None and d.error is None
        assert not d.available
        assert f"{var}=1" in d.reason
        assert d.probe.plugin is None


def test_enabled_dummy_is_available_for_cpu_above_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMCACHE_TEST_DUMMY", "1")
    found = _by_name()
    dummy, reference = found["dummy"], found["reference"]
    assert dummy.available and dummy.probe is not None and reference.probe is not None
    assert dummy.probe.priority > reference.probe.priority
    assert dummy.probe.device_types == ("cpu",)
    assert dummy.probe.serves("cpu") and not dummy.probe.serves("cuda")
    assert dummy.probe.plugin == "lmcache_dummy_backend.plugin"
    assert "LMCACHE_TEST_DUMMY=1" in dummy.reason
    assert not found["dummy_twin"].available  # its own variable is still unset


def test_broken_probe_is_logged_with_its_reason_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="lmcache_core.discovery"):
        found = _by_name()
    broken = found["broken_probe"]
    assert broken.probe is None and not broken.available
    assert broken.error == f"RuntimeError: {BROKEN_MESSAGE}"
    assert broken.reason == f"probe failed: RuntimeError: {BROKEN_MESSAGE}"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("broken_probe" in m and BROKEN_MESSAGE in m for m in warnings), warnings
    # the broken plugin does not hide the others
    assert found["reference"].available


def test_probing_imports_neither_torch_nor_any_plugin_module() -> None:
    """Running every probe stays cheap: only probe modules are imported, never kernels or torch."""
    code = (
        "import json, sys\n"
        "from lmcache_core.discovery import discover_backends\n"
        "found = {d.name: d.available for d in discover_backends()}\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'pluggy')\n"
        "               or m.startswith(('lmcache_dummy_backend.plugin', 'lmcache_dummy_twin.plugin'))\n"
        "               or m == 'lmcache_core.backends.reference')\n"
        "print(json.dumps({'found': found, 'heavy': heavy}))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
    env["LMCACHE_TEST_DUMMY"] = "1"
    env["LMCACHE_TEST_DUMMY_TWIN"] = "1"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["found"]["dummy"] is True and result["found"]["dummy_twin"] is True
    assert result["heavy"] == []
    assert BROKEN_MESSAGE in proc.stderr  # the warning reaches stderr through logging's last resort
