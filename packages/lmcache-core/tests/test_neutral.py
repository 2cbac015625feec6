"""The neutrality lint (tools/check_neutral.py) passes on the core and catches vendor APIs."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "tools" / "check_neutral.py"
CORE = REPO / "packages" / "lmcache-core" / "src" / "lmcache_core"

pytestmark = pytest.mark.skipif(not SCRIPT.exists(), reason=f"{SCRIPT} not in this checkout")

VIOLATIONS = '''"""Mentioning torch.cuda or jax in a docstring is fine."""
import importlib

import torch  # so is torch.cuda in a comment


def pick():
    if torch.cuda.is_available():
        return getattr(torch, "npu")
    mod = importlib.import_module("torch_npu")
    import jax.numpy
    return torch.version.hip, torch.xpu, torch.mps, mod, jax


def fine(t):
    return t.device.type == "cuda" and torch.accelerator.is_available()
'''


def _lint() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_neutral", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_neutral"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def _run(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, paths)], capture_output=True, text=True, timeout=120
    )


def test_the_core_is_neutral() -> None:
    proc = _run()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "check_neutral: ok" in proc.stdout


def test_vendor_apis_are_reported_with_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(VIOLATIONS)
    proc = _run(tmp_path)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    reported = {(line.split(":")[1], line.split(":")[2].strip()) for line in lines}
    assert reported == {
        ("8", "torch.cuda"),
        ("9", "getattr(torch, 'npu')"),
        ("10", "vendor module name in a string"),
        ("11", "jax"),
        ("12", "hip"),
        ("12", "torch.xpu"),
        ("12", "torch.mps"),
        ("12", "jax"),
    }
    assert all(line.startswith(str(bad)) for line in lines)
    assert "check_neutral: 8 vendor API use(s)" in proc.stderr


def test_native_sources_are_checked_and_the_allow_list_is_exact(tmp_path: Path) -> None:
    lint = _lint()
    header = tmp_path / "include" / "lmcache_core" / "kv_index.h"
    header.parent.mkdir(parents=True)
    header.write_text(
        "// cudaMemcpy in a comment is fine\n"
        "#if defined(__CUDACC__) || defined(__HIPCC__)\n"  # the allowed compat-macro test
        "#define LMC_HOST_DEVICE __host__ __device__\n"
        "#endif\n"
        "static void copy(void* d, const void* s, int n) { cudaMemcpy(d, s, n, 0); }\n"
        "#include <hip/hip_runtime.h>\n"
    )
    found = lint.scan([tmp_path], package_root=tmp_path)
    assert [(f.line, f.pattern) for f in found] == [(5, "cuda runtime"), (6, "hip runtime")]
    # the same allowed line in any other file is reported
    other = tmp_path / "other.h"
    other.write_text("#if defined(__CUDACC__) || defined(__HIPCC__)\n#endif\n")
    assert {(f.path.name, f.line) for f in lint.scan([other], package_root=tmp_path)} == {("other.h", 1)}


def test_every_allow_list_entry_names_an_existing_file_and_a_reason() -> None:
    lint = _lint()
    for entry in lint.ALLOWED:
        assert (CORE / entry.path).is_file(), entry
        patterns = {*lint.NATIVE, *lint.PY_CODE, "vendor module name in a string"}
        assert entry.reason and entry.pattern in patterns
        assert entry.text in (CORE / entry.path).read_text(), entry


def test_missing_root_is_a_usage_error(tmp_path: Path) -> None:
    proc = _run(tmp_path / "nope")
    assert proc.returncode == 2 and "roots: expected existing files or directories" in proc.stderr
