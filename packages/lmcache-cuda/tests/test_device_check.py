"""tools/device_check.py (``make device-check``) without a GPU: its plan, budget, report and the
rule that the no-wait step must fail."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "tools" / "device_check.py"


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["device_check"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_the_plan_fits_the_budget_and_covers_every_required_check() -> None:
    dc = _module()
    steps = dc.plan("/venv/bin/python")
    assert [s.name for s in steps] == [
        "build",
        "kernels",
        "ordering",
        "ipc",
        "no-wait",
        "memcheck",
        "contexts",
        "bench",
    ]
    assert sum(s.timeout_s for s in steps) <= dc.TOTAL_BUDGET_S == 480
    by = {s.name: s for s in steps}
    assert by["no-wait"].expect_failure and by["no-wait"].env[dc.SKIP_WAIT_ENV] == "1"
    assert all(s.env.get("LMCACHE_REQUIRE_BACKEND") == "cuda" for s in (by["kernels"], by["ordering"]))
    assert by["memcheck"].cmd[:3] == ["compute-sanitizer", "--tool", "memcheck"]
    assert by["bench"].cmd[1:] == ["bench", "kernels", "--backend", "cuda", "--device", "cuda"]
    assert "test_cuda_ordering.py" in " ".join(by["ordering"].cmd)
    assert (
        "test_cuda_ipc.py" in " ".join(by["ipc"].cmd) and by["ipc"].env["LMCACHE_REQUIRE_BACKEND"] == "cuda"
    )
    for step in steps:  # every test path the plan names exists (they moved once with lmcache-gpu)
        for arg in step.cmd:
            if arg.startswith("packages/"):
                assert (ROOT / arg.split("::")[0]).exists(), f"{step.name}: {arg} missing"


def test_the_build_step_installs_the_shared_gpu_package_first() -> None:
    """``make -C packages/lmcache-cuda install`` needs lmcache-gpu: its install target installs it."""
    makefile = (ROOT / "packages" / "lmcache-cuda" / "Makefile").read_text()
    assert "\ninstall: deps gpu\n" in makefile
    assert "$(MAKE) -C $(ROOT)/packages/lmcache-gpu install" in makefile


def test_dry_run_writes_the_plan_and_runs_nothing(tmp_path: Path) -> None:
    report = tmp_path / "r.md"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--report", str(report)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    text = report.read_text()
    assert text.startswith("# lmcache device check: DRY RUN")
    assert "| no-wait | not run | 0.0 | 30 |" in text
    assert "LMCACHE_TEST_SKIP_STREAM_WAIT=1" in text and "<CONTEXT_PROBE>" in text


def test_a_negative_control_that_passes_fails_the_check(tmp_path: Path) -> None:
    dc = _module()
    passes = dc.Step("no-wait", [sys.executable, "-c", "pass"], 30, expect_failure=True)
    fails = dc.Step("no-wait", [sys.executable, "-c", "raise SystemExit(1)"], 30, expect_failure=True)
    slow = dc.Step("kernels", [sys.executable, "-c", "import time; time.sleep(30)"], 30)
    for s in (passes, fails):
        dc.run_step(s, 60)
    dc.run_step(slow, 6)  # the total budget left caps the step's own limit
    assert (passes.status, passes.ok) == ("passed but must fail", False)
    assert (fails.status, fails.ok) == ("failed as required", True)
    assert slow.status == "timed out" and slow.seconds < 20
    text = dc.render([passes, fails, slow], False, "now", 1.0)
    assert text.startswith("# lmcache device check: FAILED")


def test_unknown_step_names_are_refused() -> None:
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--only", "build", "warp"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 2 and "--only: expected step names" in run.stderr and "'warp'" in run.stderr
