#!/usr/bin/env python3
"""Build each package, run its tests, and print the per-vendor matrix (the end of `make test`).

One row per package: whether it built here, whether its conformance suite ran or was skipped
(and why), and its pass/fail/skip counts. Exit status 1 when any build that should work here
failed, any test failed, pytest collected no tests (exit 5) or stopped early, or a test driver
printed no "N passed, M failed" line.

Usage: python tools/test_matrix.py [--only NAME ...] [-- extra pytest args]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPORTS = ROOT / "reports"


@dataclass(frozen=True)
class Package:
    """A row of the matrix: how to build it (None: pure Python, installed with the venv) and test it."""

    name: str
    tests: tuple[str, ...]
    build: tuple[str, ...] | None = None
    check: tuple[str, ...] | None = None  # a non-pytest test command printing "N passed, M failed"


PACKAGES = (
    Package("lmcache-core (reference)", ("packages/lmcache-core/tests", "tests")),
    Package(
        "lmcache-arm",
        ("packages/lmcache-arm/tests",),
        build=("make", "-C", "packages/lmcache-arm", "install"),
    ),
    # rocm first: it installs hipcc, which lmcache-gpu's compat-header tests also use
    Package(
        "lmcache-rocm (lmcache-gpu's source as HIP, gfx90a)",
        ("packages/lmcache-rocm/tests",),
        build=("make", "-C", "packages/lmcache-rocm", "install"),
    ),
    Package(
        "lmcache-cuda (lmcache-gpu's source as CUDA: sm_80, sm_90 + PTX)",
        ("packages/lmcache-cuda/tests",),
        build=("make", "-C", "packages/lmcache-cuda", "install"),
    ),
    Package(
        "lmcache-gpu (the shared CUDA/HIP source: both compilers, kernel emulated on the CPU)",
        ("packages/lmcache-gpu/tests",),
        build=("make", "-C", "packages/lmcache-gpu", "install"),
    ),
    Package(
        "lmcache-ascend (torch-ops path: conformance on CPU tensors; AscendC kernel logic: host emulation; "
        "probe: temporary host root; unverified on Ascend hardware)",
        ("packages/lmcache-ascend/tests",),
        build=("make", "-C", "packages/lmcache-ascend", "install"),
    ),
    Package("lmcache-tpu (ran on JAX CPU; TPU unverified)", ("packages/lmcache-tpu/tests",)),
    Package(
        "lmcache-arm-aarch64 (cross-built, run under qemu)",
        (),
        build=("make", "-C", "packages/lmcache-arm", "deps-cross"),
        check=("make", "-s", "-C", "packages/lmcache-arm", "cross-test"),
    ),
)


@dataclass
class Row:
    name: str
    built: str = "n/a (pure Python)"
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    conformance: str = "not run"
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def _parse_junit(path: Path, row: Row) -> None:
    conf_run = conf_skip = 0
    skip_reasons: set[str] = set()
    for case in ET.parse(path).getroot().iter("testcase"):
        is_conf = "onformance" in case.get("classname", "") + case.get("name", "")
        if case.find("failure") is not None or case.find("error") is not None:
            row.failed += 1
        elif (sk := case.find("skipped")) is not None:
            row.skipped += 1
            if is_conf:
                conf_skip += 1
                skip_reasons.add((sk.get("message") or "").strip()[:120])
        else:
            row.passed += 1
            conf_run += is_conf
    if conf_run:
        row.conformance = f"ran ({conf_run} cases)"
    elif conf_skip:
        row.conformance = f"skipped: {'; '.join(sorted(skip_reasons))}"


def run_package(pkg: Package, pytest_args: list[str]) -> Row:
    row = Row(pkg.name)
    slug = _slug(pkg.name)
    started = time.monotonic()
    if pkg.build is not None:
        log = REPORTS / f"build-{slug}.log"
        print(f"== build {pkg.name}: {' '.join(pkg.build)} (log: {log.relative_to(ROOT)})", flush=True)
        with log.open("w") as f:
            rc = subprocess.call(pkg.build, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
        if rc != 0:
            row.built = f"FAILED (rc {rc}, see {log.relative_to(ROOT)})"
            row.failed += 1
            print(log.read_text()[-4000:], flush=True)
            row.seconds = time.monotonic() - started
            return row
        row.built = "yes"
    if pkg.check is not None:
        _run_check(pkg, row)
        row.seconds = time.monotonic() - started
        return row
    paths = [p for p in pkg.tests if (ROOT / p).exists()]
    if not paths:  # a row that runs nothing fails, as pytest's exit 5 does
        row.failed += 1
        row.notes.append(f"no test folder found: {', '.join(pkg.tests) or 'none given'}")
        row.seconds = time.monotonic() - started
        return row
    xml = REPORTS / f"junit-{slug}.xml"
    xml.unlink(missing_ok=True)  # a report left by an earlier run must not be read as this one's
    cmd = [sys.executable, "-m", "pytest", *paths, f"--junitxml={xml}", *pytest_args]
    print(f"== test {pkg.name}: {' '.join(cmd[1:])}", flush=True)
    rc = subprocess.call(cmd, cwd=ROOT)
    if xml.exists():
        _parse_junit(xml, row)
    judge_pytest_exit(rc, row)
    row.seconds = time.monotonic() - started
    return row


#: pytest's exit statuses (``pytest.ExitCode``) other than 0, as the matrix notes them.
PYTEST_EXIT = {
    1: "tests failed",
    2: "interrupted",
    3: "internal error",
    4: "usage error",
    5: "no tests collected",
}


def judge_pytest_exit(rc: int, row: Row) -> None:
    """Fail ``row`` for any non-zero pytest exit its JUnit counts do not already show as failures.

    Exit 5 (no tests collected) is a failure: a row that ran nothing must not read as green. Exit 1
    with failures counted from the report adds nothing; any other status adds one failure and a
    note, whatever the report counted (the run stopped early).
    """
    if rc == 0 or (rc == 1 and row.failed):
        return
    row.failed += 1
    row.notes.append(f"pytest exited {rc} ({PYTEST_EXIT.get(rc, 'unexpected status')})")


#: The summary line a test driver must print last: "N passed, M failed".
CHECK_SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed", re.MULTILINE)


def judge_check(command: str, stdout: str, rc: int, row: Row) -> None:
    """Count a test driver's run from its last "N passed, M failed" line, and its exit status.

    No such line is a failure (the driver crashed or printed something else), as is a non-zero
    exit with no failure counted.
    """
    found = CHECK_SUMMARY.findall(stdout)
    if not found:
        row.failed += 1
        row.notes.append(f"{command} printed no 'N passed, M failed' line (exit {rc})")
        return
    row.passed, row.failed = int(found[-1][0]), int(found[-1][1])
    row.conformance = "driver vs scalar reference, every layout"
    if rc != 0 and row.failed == 0:
        row.failed = 1
        row.notes.append(f"{command} exited {rc}")


def _run_check(pkg: Package, row: Row) -> None:
    """Run a test driver that ends with a line "N passed, M failed"; count from that line."""
    assert pkg.check is not None
    print(f"== check {pkg.name}: {' '.join(pkg.check)}", flush=True)
    proc = subprocess.run(pkg.check, cwd=ROOT, capture_output=True, text=True)
    print(proc.stdout[-3000:] + proc.stderr[-3000:], flush=True)
    judge_check(" ".join(pkg.check), proc.stdout, proc.returncode, row)


def print_matrix(rows: list[Row]) -> None:
    headers = ("package", "built", "conformance", "passed", "failed", "skipped", "time")
    table = [
        (r.name, r.built, r.conformance, str(r.passed), str(r.failed), str(r.skipped), f"{r.seconds:.0f}s")
        for r in rows
    ]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    print("\nPer-vendor matrix (this host: " + os.uname().machine + ", no accelerator unless stated)")
    print(line)
    print("-" * len(line))
    for t in table:
        print("  ".join(c.ljust(w) for c, w in zip(t, widths, strict=True)))
    for r in rows:
        for n in r.notes:
            print(f"note: {r.name}: {n}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], help="package name to run (repeatable)")
    args, pytest_args = parser.parse_known_args()
    pytest_args = [a for a in pytest_args if a != "--"]
    REPORTS.mkdir(exist_ok=True)
    chosen = [p for p in PACKAGES if not args.only or p.name.split()[0] in args.only]
    rows = [run_package(p, pytest_args) for p in chosen]
    print_matrix(rows)
    passed = sum(r.passed for r in rows)
    failed = sum(r.failed for r in rows)
    skipped = sum(r.skipped for r in rows)
    print(f"\n{passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
