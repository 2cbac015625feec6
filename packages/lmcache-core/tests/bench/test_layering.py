"""Who may import whom: the bench library has no argparse and no CLI, no product module imports
the conformance suite, only the CLI imports the CLI, and ``import lmcache_core`` leaves bench out.

Read from the sources of every package (AST, so docstrings and comments do not count).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[4]
PACKAGES = REPO / "packages"
BENCH = PACKAGES / "lmcache-core" / "src" / "lmcache_core" / "bench"
CLI = PACKAGES / "lmcache-core" / "src" / "lmcache_core" / "cli"


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (``from a import b`` gives ``a`` and ``a.b``)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


def _under(names: set[str], package: str) -> list[str]:
    return sorted(n for n in names if n == package or n.startswith(package + "."))


def _is_test_support(path: Path) -> bool:
    """Modules that exist for tests: a ``testing`` package, or a module named ``*_testing``."""
    return "testing" in path.parts or path.stem.endswith("_testing")


def _product_modules() -> list[Path]:
    return [p for p in sorted(PACKAGES.glob("*/src/**/*.py")) if not _is_test_support(p)]


def test_bench_has_no_argparse_no_cli_and_prints_nothing() -> None:
    modules = sorted(BENCH.glob("*.py"))
    assert {p.stem for p in modules} >= {"host", "timing", "pool", "memcpy_roof", "kernels", "l2", "e2e"}
    for path in modules:
        names = _imports(path)
        assert _under(names, "argparse") == [] and _under(names, "lmcache_core.cli") == [], path
        source = path.read_text()
        if 'if __name__ == "__main__":' in source:
            continue  # a worker process (python -m): its stdout is a line protocol, not a display
        calls = [
            n.lineno
            for n in ast.walk(ast.parse(source))
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "print"
        ]
        assert calls == [], f"{path}: print() on lines {calls}"


def test_no_product_module_imports_the_conformance_suite() -> None:
    modules = _product_modules()
    assert len(modules) > 50
    offenders = {str(p.relative_to(REPO)): _under(_imports(p), "lmcache_core.testing") for p in modules}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_only_the_cli_imports_the_cli() -> None:
    sources = [
        p for p in sorted(PACKAGES.glob("*/**/*.py")) if CLI not in p.parents and "tests" not in p.parts
    ]
    offenders = {str(p.relative_to(REPO)): _under(_imports(p), "lmcache_core.cli") for p in sources}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_import_lmcache_core_leaves_bench_and_cli_out() -> None:
    code = "import sys, lmcache_core; print(sorted(m for m in sys.modules if m.startswith(('lmcache_core.bench', 'lmcache_core.cli'))))"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert proc.stdout.strip() == "[]"
