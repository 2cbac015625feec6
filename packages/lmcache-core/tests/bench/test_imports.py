"""lmcache_core.bench.imports: which modules count as heavy, and a failing import named."""

from __future__ import annotations

import pytest

from lmcache_core.bench import imports


def test_heavy_modules_and_a_failing_import() -> None:
    names = ["json", "torch.cuda", "lmcache_core.layout", "lmcache_arm", "pluggy", "lmcache_core.hookspecs"]
    assert imports.heavy_modules([*names, "torch"]) == [
        "lmcache_arm",
        "lmcache_core.hookspecs",
        "pluggy",
        "torch",
    ]
    with pytest.raises(
        ValueError, match=r"(?s)module: the import of 'lmcache_no_such_module' failed: .*ModuleNotFound"
    ):
        imports.time_import("lmcache_no_such_module")


def test_measure_reports_ordered_figures_and_no_heavy_module() -> None:
    row = imports.measure("lmcache_core", 2)
    assert (row["module"], row["runs"], row["heavy_modules"]) == ("lmcache_core", 2, [])
    assert 0 < row["ms"]["min"] <= row["ms"]["median"] <= row["ms"]["max"]
