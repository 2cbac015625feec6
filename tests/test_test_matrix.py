"""tools/test_matrix.py cannot report green for a row that ran nothing or whose driver said nothing.

The judging functions are checked on each exit status, and ``run_package`` end to end on real
pytest and driver processes (reports written to a temporary folder).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def matrix() -> ModuleType:
    spec = importlib.util.spec_from_file_location("test_matrix_tool", ROOT / "tools" / "test_matrix.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("rc", "counted_failures", "failed", "note"),
    [
        (0, 0, 0, None),
        (1, 3, 3, None),  # failures already counted from the JUnit report
        (1, 0, 1, "pytest exited 1 (tests failed)"),  # no report
        (2, 0, 1, "pytest exited 2 (interrupted)"),
        (2, 2, 3, "pytest exited 2 (interrupted)"),  # stopped early: one more, whatever was counted
        (3, 0, 1, "pytest exited 3 (internal error)"),
        (4, 0, 1, "pytest exited 4 (usage error)"),
        (5, 0, 1, "pytest exited 5 (no tests collected)"),
        (-9, 0, 1, "pytest exited -9 (unexpected status)"),
    ],
)
def test_every_non_zero_pytest_exit_fails_the_row(
    matrix: ModuleType, rc: int, counted_failures: int, failed: int, note: str | None
) -> None:
    row = matrix.Row("pkg", failed=counted_failures)
    matrix.judge_pytest_exit(rc, row)
    assert row.failed == failed
    assert row.notes == ([note] if note else [])


@pytest.mark.parametrize(
    ("stdout", "rc", "counts", "note"),
    [
        ("case 1 ok\n12 passed, 0 failed\n", 0, (12, 0), None),
        ("10 passed, 2 failed\n", 1, (10, 2), None),
        ("3 passed, 0 failed\n", 2, (3, 1), "drv exited 2"),  # exit status says what the line did not
        ("1 passed, 1 failed\n7 passed, 0 failed\n", 0, (7, 0), None),  # the last line counts
        ("", 0, (0, 1), "drv printed no 'N passed, M failed' line (exit 0)"),
        ("Segmentation fault\n", 139, (0, 1), "drv printed no 'N passed, M failed' line (exit 139)"),
        ("all 5 passed\n", 0, (0, 1), "drv printed no 'N passed, M failed' line (exit 0)"),
    ],
)
def test_a_driver_without_its_summary_line_fails_the_row(
    matrix: ModuleType, stdout: str, rc: int, counts: tuple[int, int], note: str | None
) -> None:
    row = matrix.Row("pkg")
    matrix.judge_check("drv", stdout, rc, row)
    assert (row.passed, row.failed) == counts
    assert row.notes == ([note] if note else [])


def test_run_package_fails_a_row_that_collects_no_tests(
    matrix: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(matrix, "REPORTS", tmp_path / "reports")
    (tmp_path / "reports").mkdir()
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "test_nothing.py").write_text("VALUE = 1\n")
    row = matrix.run_package(matrix.Package("empty row", (str(empty),)), ["-p", "no:cacheprovider"])
    assert (row.passed, row.failed, row.skipped) == (0, 1, 0)
    assert row.notes == ["pytest exited 5 (no tests collected)"]

    (empty / "test_one.py").write_text("def test_one():\n    assert 1 + 1 == 2\n")
    row = matrix.run_package(matrix.Package("empty row", (str(empty),)), ["-p", "no:cacheprovider"])
    assert (row.passed, row.failed, row.notes) == (1, 0, [])


def test_run_package_fails_a_row_whose_test_folders_are_missing(matrix: ModuleType, tmp_path: Path) -> None:
    row = matrix.run_package(matrix.Package("gone", (str(tmp_path / "missing"),)), [])
    assert (row.passed, row.failed) == (0, 1)
    assert row.notes == [f"no test folder found: {tmp_path / 'missing'}"]


def test_run_package_fails_a_driver_that_prints_no_summary(matrix: ModuleType) -> None:
    silent = matrix.Package("silent", (), check=(sys.executable, "-c", "print('started')"))
    row = matrix.run_package(silent, [])
    assert (row.passed, row.failed) == (0, 1)
    assert row.notes == [
        f"{sys.executable} -c print('started') printed no 'N passed, M failed' line (exit 0)"
    ]
    counted = matrix.Package("counted", (), check=(sys.executable, "-c", "print('4 passed, 0 failed')"))
    row = matrix.run_package(counted, [])
    assert (row.passed, row.failed, row.notes) == (4, 0, [])
