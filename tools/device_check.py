"""``make device-check``: the one prepared check for a machine with one NVIDIA GPU.

Steps, each under its own time limit (all together under 8 minutes on an H200):

1. build      ``make -C packages/lmcache-cuda install``: lmcache-gpu (the shared CUDA/HIP source and
              Python) editable, then its source compiled by nvcc against the venv's CUDA torch
2. kernels    the GPU kernel tests (``lmcache_gpu.testing.KernelTests`` as lmcache-cuda's
              ``test_cuda_kernels.py``) and the conformance suite (``LMCACHE_REQUIRE_BACKEND=cuda``:
              a "no device" skip fails)
3. ordering   the ordering tests (``lmcache_gpu.testing.OrderingTests``: store after an enqueued
              forward, loads, negative control)
3b. ipc       the IPC tests (``lmcache_gpu.testing.IpcTests``): KV exported by this process, mapped
              by a second one that gathers and scatters ordered by IPC events, negative control;
              and the cache server's GPU path (a ``lmcache-core serve`` process with
              ``gpu_backend`` and this process as its worker: ``IpcServerTests``)
4. no-wait    the store ordering test again with ``LMCACHE_TEST_SKIP_STREAM_WAIT=1``: it must
              FAIL; if it passes, the test cannot see the race and the check fails
5. memcheck   compute-sanitizer memcheck over a subset of the kernel and ordering tests
6. contexts   a process that registers KV on the GPU, stores, loads and runs L2 and lookup
              threads holds exactly one context (``nvidia-smi --query-compute-apps``)
7. bench      ``lmcache-core bench kernels --backend cuda --device cuda``

Writes one Markdown report (``--report``, default ``build/device-check/report.md``) with each
step's command, time, result and output tail; exits 1 when any step failed. ``--dry-run`` prints
and reports the plan without running anything (how the script is tested without a GPU).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = str(ROOT / ".venv" / "bin" / "python")
TOTAL_BUDGET_S = 480
SKIP_WAIT_ENV = "LMCACHE_TEST_SKIP_STREAM_WAIT"
CUDA_TESTS = "packages/lmcache-cuda/tests"

#: The context probe: registers KV on cuda:0 with an fs L2 (writer and prefetch threads), stores,
#: looks up from another thread (no device set there), loads, then prints its pid and waits.
CONTEXT_PROBE = """
import os, sys, tempfile, threading, torch
from lmcache_core import CacheEngine, CacheEngineConfig
from lmcache_core.layout_registry import allocate_example
kv, hints = allocate_example("vllm_flash_nhd", num_layers=2, num_blocks=8, block_size=16,
                             num_kv_heads=4, head_size=64, dtype=torch.float16)
kv = [t.to("cuda:0").normal_() for t in kv]
l2 = tempfile.mkdtemp()
eng = CacheEngine(CacheEngineConfig(chunk_size=16, l1_bytes=1 << 24, backend="cuda", l2_urls=(f"fs://{l2}",)),
                  layout_hints=hints)
tokens, slots = list(range(64)), torch.arange(64, dtype=torch.int64)
eng.store(tokens, kv, slots)
t = threading.Thread(target=lambda: eng.lookup(tokens)); t.start(); t.join()
eng.wait_stores(); eng.flush(10)
assert eng.retrieve(tokens, kv, slots).tokens == 64
print(os.getpid(), flush=True)
sys.stdin.readline()
eng.close()
"""


@dataclass
class Step:
    """One step: its name, command, time limit, and whether it must fail (the negative control)."""

    name: str
    cmd: list[str]
    timeout_s: int
    env: dict[str, str] = field(default_factory=dict)
    expect_failure: bool = False
    # filled when run
    status: str = "not run"
    seconds: float = 0.0
    returncode: int | None = None
    tail: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("passed", "failed as required")


def plan(python: str = PY) -> list[Step]:
    """The steps in order (see the module docstring)."""
    pytest = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs"]
    require = {"LMCACHE_REQUIRE_BACKEND": "cuda"}
    store_test = f"{CUDA_TESTS}/test_cuda_ordering.py::TestCudaOrdering::test_store_right_after_the_forward_is_enqueued_reads_what_it_wrote"
    return [
        Step("build", ["make", "-C", "packages/lmcache-cuda", "install", f"PYTHON={python}"], 135),
        Step(
            "kernels",
            [*pytest, f"{CUDA_TESTS}/test_cuda_kernels.py", f"{CUDA_TESTS}/test_conformance.py"],
            100,
            require,
        ),
        Step("ordering", [*pytest, f"{CUDA_TESTS}/test_cuda_ordering.py"], 40, require),
        Step("ipc", [*pytest, f"{CUDA_TESTS}/test_cuda_ipc.py"], 30, require),
        Step("no-wait", [*pytest, store_test], 30, {**require, SKIP_WAIT_ENV: "1"}, expect_failure=True),
        Step(
            "memcheck",
            [
                "compute-sanitizer",
                "--tool",
                "memcheck",
                "--error-exitcode",
                "1",
                "--print-limit",
                "20",
                *pytest,
                "-x",
                f"{CUDA_TESTS}/test_cuda_kernels.py",
                f"{CUDA_TESTS}/test_cuda_ordering.py",
                "-k",
                "bitwise and vllm or many_chunks or bad_slot or ordering or store or load",
            ],
            80,
            require,
        ),
        Step("contexts", [python, "-c", CONTEXT_PROBE], 30),
        Step(
            "bench",
            [
                str(Path(python).parent / "lmcache-core"),
                "bench",
                "kernels",
                "--backend",
                "cuda",
                "--device",
                "cuda",
            ],
            35,
        ),
    ]


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _contexts_of(pid: int) -> tuple[int, str]:
    """Compute contexts ``pid`` holds, from nvidia-smi (one row per process and GPU)."""
    out = subprocess.run(
        ["nvidia-smi", "--query-compute-apps=pid,gpu_uuid,used_memory", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    rows = [r for r in out.stdout.splitlines() if r.split(",")[0].strip() == str(pid)]
    return len(rows), out.stdout + out.stderr


def run_contexts(step: Step, deadline: float) -> None:
    env = {**os.environ, **step.env}
    proc = subprocess.Popen(
        step.cmd,
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        line = proc.stdout.readline().strip()
        if not line.isdigit():
            proc.kill()
            step.returncode, step.status = proc.wait(), "failed"
            step.tail = line + "\n" + proc.stdout.read()
            return
        count, smi = _contexts_of(int(line))
        proc.stdin.write("\n")
        proc.stdin.flush()
        step.returncode = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        step.tail = f"pid {line}: {count} context(s)\n{smi}"
        step.status = "passed" if count == 1 and step.returncode == 0 else "failed"
    except subprocess.TimeoutExpired:
        proc.kill()
        step.status = "timed out"


def run_step(step: Step, budget_left: float) -> None:
    """Run ``step`` within its own limit and what is left of the total budget."""
    limit = min(step.timeout_s, budget_left)
    if limit < 5:
        step.status = "skipped (out of time)"
        return
    t0 = time.monotonic()
    if step.name == "contexts":
        run_contexts(step, t0 + limit)
    else:
        try:
            done = subprocess.run(
                step.cmd,
                cwd=ROOT,
                env={**os.environ, **step.env},
                capture_output=True,
                text=True,
                timeout=limit,
            )
            step.returncode = done.returncode
            step.tail = _tail(done.stdout + done.stderr)
            failed = done.returncode != 0
            if step.expect_failure:
                step.status = "failed as required" if failed else "passed but must fail"
            else:
                step.status = "failed" if failed else "passed"
        except FileNotFoundError as e:
            step.status, step.tail = "failed", f"not found: {e.filename}"
        except subprocess.TimeoutExpired as e:
            step.status = "timed out"
            out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            step.tail = _tail(out)
    step.seconds = time.monotonic() - t0


def render(steps: Sequence[Step], dry_run: bool, started: str, total_s: float) -> str:
    """The Markdown report."""
    verdict = "DRY RUN" if dry_run else ("PASSED" if all(s.ok for s in steps) else "FAILED")
    lines = [
        f"# lmcache device check: {verdict}",
        "",
        f"Started {started}; {total_s:.0f} s of a {TOTAL_BUDGET_S} s budget.",
        "",
        "| step | result | seconds | limit s |",
        "|---|---|---|---|",
    ]
    lines += [f"| {s.name} | {s.status} | {s.seconds:.1f} | {s.timeout_s} |" for s in steps]
    for s in steps:
        env = " ".join(f"{k}={v}" for k, v in s.env.items())
        shown = s.cmd if s.name != "contexts" else [*s.cmd[:2], "<CONTEXT_PROBE>"]
        lines += ["", f"## {s.name}", "", "```", f"{env + ' ' if env else ''}{shlex.join(shown)}"]
        if s.tail:
            lines += ["", s.tail]
        lines.append("```")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report", type=Path, default=ROOT / "build" / "device-check" / "report.md")
    ap.add_argument("--python", default=PY, help="interpreter with CUDA torch and lmcache-core installed")
    ap.add_argument("--dry-run", action="store_true", help="write the plan to the report, run nothing")
    ap.add_argument("--only", nargs="*", default=None, help="run only these steps (by name)")
    args = ap.parse_args(argv)
    steps = plan(args.python)
    if args.only:
        unknown = sorted(set(args.only) - {s.name for s in steps})
        if unknown:
            ap.error(f"--only: expected step names {[s.name for s in steps]}, given {unknown}")
        steps = [s for s in steps if s.name in args.only]
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    t0 = time.monotonic()
    for s in steps:
        if args.dry_run:
            continue
        run_step(s, TOTAL_BUDGET_S - (time.monotonic() - t0))
        print(f"device-check {s.name}: {s.status} ({s.seconds:.1f} s)", flush=True)
        if s.name == "build" and not s.ok:
            break  # nothing else can run
    report = render(steps, args.dry_run, started, time.monotonic() - t0)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(report, encoding="utf-8")
    print(f"device-check report: {args.report}")
    return 0 if args.dry_run or all(s.ok for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
