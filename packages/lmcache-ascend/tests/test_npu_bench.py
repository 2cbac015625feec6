"""On an NPU: ``lmcache-core bench kernels --backend ascend --device npu`` runs, is bit-exact with
the reference, and prints its figures next to the copy roof (a device<->host copy of the same
bytes). Elsewhere the NPU case is skipped with the reason; the CLI's own refusal is checked here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lmcache_ascend import UNVERIFIED

CLI = [sys.executable, "-m", "lmcache_core.cli.main"]


def _bench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "bench", "kernels", "--backend", "ascend", "--quick", "--no-progress", *args],
        capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})},
    )  # fmt: skip


@pytest.mark.usefixtures("ascend_npu_backend")
def test_npu_bench_kernels_next_to_the_copy_roof() -> None:
    run = _bench("--device", "npu", "--json")
    assert run.returncode == 0, run.stderr[-4000:]
    doc = json.loads(run.stdout)
    assert doc["backend"] == "ascend" and doc["device"] == "npu"
    assert doc["results"] and all(r["verified"] for r in doc["results"])
    assert all(r["ratio_kernel_memcpy"] > 0 for r in doc["results"])  # next to the device<->host copy


def test_without_an_npu_the_bench_says_it_cannot_run_and_why() -> None:
    if os.path.exists("/dev/davinci_manager"):
        pytest.skip("an Ascend host: test_npu_bench_kernels_next_to_the_copy_roof is the one that counts")
    run = _bench("--device", "npu")
    assert run.returncode != 0
    assert "asks for backend 'ascend', which is not available here: missing: torch_npu" in run.stderr, (
        run.stderr
    )
    assert UNVERIFIED in run.stderr
