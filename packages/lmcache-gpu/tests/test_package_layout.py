"""lmcache-gpu's layout: the source ships as package data, shared names are vendor-neutral, each
native file has one job, and nothing in the product imports the test bases.

Needs only the installed package (and, for the no-links check, the monorepo checkout).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import lmcache_gpu

PACKAGE = Path(lmcache_gpu.__file__).resolve().parent
CSRC = Path(lmcache_gpu.get_source())
VENDORS = ("cuda", "rocm", "nvidia", "amd", "hip")


def _code(path: Path) -> str:
    """The C++ text without comments and string literals."""
    text = re.sub(r'R"\((.*?)\)"', '""', path.read_text(), flags=re.S)
    text = re.sub(r"/\*.*?\*/|//[^\n]*", "", text, flags=re.S)
    return re.sub(r'"(?:\\.|[^"\\])*"', '""', text)


def test_the_source_and_cmake_package_are_found_through_functions() -> None:
    names = {p.name for p in CSRC.iterdir()}
    assert {
        "kv_transfer.cuh",
        "launcher.cu",
        "runtime.cu",
        "binding.cpp",
        "plan.cpp",
        "gpu_compat.h",
    } <= names
    config = Path(lmcache_gpu.get_cmake_dir()) / "lmcache_gpuConfig.cmake"
    text = config.read_text()
    for name in ("lmcache_gpu_add_extension", "lmcache_write_build_info", "lmcache_find_core_include"):
        assert f"function({name}" in text
    for source in re.findall(r"\$\{LMCACHE_GPU_SOURCE_DIR\}/([\w.]+)", text):
        assert (CSRC / source).is_file(), source


def test_no_shared_file_names_a_vendor() -> None:
    named = [
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*")
        if "__pycache__" not in p.parts and any(v in p.name.lower() for v in VENDORS)
    ]
    assert named == []


def test_the_binding_exports_only() -> None:
    """No checks, branches or helpers in binding.cpp: conversions, m.def calls and the error translator."""
    code = _code(CSRC / "binding.cpp").replace("if (p) std::rethrow_exception(p);", "")
    assert re.findall(r"\b(?:if|for|while|switch|throw)\b", code) == [], "logic in the binding"


def test_the_launcher_and_the_runtime_services_are_separate_files() -> None:
    launcher, runtime = _code(CSRC / "launcher.cu"), _code(CSRC / "runtime.cu")
    services = re.findall(r"^\s*[\w:*<> ]+?\b(\w+)\(", _code(CSRC / "runtime.h"), flags=re.M)
    assert {"device_info", "host_alloc", "stream_create", "event_record", "device_synchronize"} <= set(
        services
    )
    for name in services:
        assert not re.search(rf"\b{name}\([^;{{]*\)\s*\{{", launcher), (
            f"runtime service {name} defined in launcher.cu"
        )
        assert re.search(rf"\b{name}\([^;{{]*\)\s*\{{", runtime), f"runtime service {name} not in runtime.cu"
    assert "<<<" not in runtime and "kv_transfer" not in runtime, "a kernel launch in runtime.cu"
    assert "<<<" in launcher


def test_no_product_module_imports_the_test_bases() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if "testing" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [
                f"{path.name}: {n}" for n in names if n.startswith(("lmcache_gpu.testing", "pytest"))
            ]
    assert offenders == []


def test_no_symbolic_links_in_the_packages() -> None:
    packages = PACKAGE.parents[2]
    if packages.name != "packages":
        pytest.skip(f"{PACKAGE} is not in a monorepo checkout")
    links = [
        str(p.relative_to(packages))
        for p in packages.rglob("*")
        if p.is_symlink() and "build" not in p.relative_to(packages).parts
    ]
    assert links == []
