"""The probe finds JAX and a TPU without importing JAX; info reports what it found."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lmcache_tpu import plugin, probe


def test_probe_imports_no_jax() -> None:
    code = (
        "import sys; from lmcache_tpu.probe import probe; p = probe(); "
        "print(p.available, p.array_types, 'jax' in sys.modules, 'libtpu' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "('jax',)", "False", "False"]


def test_tpu_needs_libtpu_and_a_device_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nodes = (str(tmp_path / "accel*"),)
    assert probe.tpu_here(nodes) == (
        False,
        "no TPU here (libtpu not installed; no /dev/accel* or /dev/vfio/<n> node)",
    )
    (tmp_path / "accel0").touch()
    found, why = probe.tpu_here(nodes)
    assert not found and why == "no TPU here (libtpu not installed)"
    (tmp_path / "libtpu").mkdir()
    (tmp_path / "libtpu" / "__init__.py").touch()
    monkeypatch.syspath_prepend(str(tmp_path))
    assert probe.tpu_here(nodes) == (True, f"TPU: libtpu + {tmp_path / 'accel0'}")


def test_status_names_jax_platform_and_tpu() -> None:
    import jax

    text, extra = plugin.status()
    assert text.startswith(f"JAX {jax.__version__} on cpu (4 devices); no TPU here")
    assert "Pallas DMA kernel off" in text and extra["tpu"] == "no"
