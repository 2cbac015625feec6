"""Per-call overhead of :meth:`Backend.gather` / :meth:`Backend.scatter`: argument checks and dispatch.

What the core adds to a kernel call is :func:`lmcache_core.validation.check_transfer` and the
choice of the kernel's owner. This bench times, on a tiny layout where the copy itself is cheap
(:data:`EXAMPLE`: ``vllm_flash_nhd``, 2 layers, 8 blocks of 16 tokens, 2 heads x 8 channels,
float32, one :data:`NUM_TOKENS`-token chunk):

* ``call``: ``backend.gather(layout, kv, slots, out)`` (``scatter`` alike), the public door;
* ``hook``: the same arguments given straight to the hook function of the backend whose kernels
  move the layout (the backend itself, or the reference it falls back to) - what the door calls
  once its checks pass;

and reports ``overhead = call - hook``. Each case is ``calls`` back-to-back calls, timed as a
whole; the cases take turns inside each of ``runs`` rounds (load on a shared machine moves them
alike), and each figure is the median over the rounds of microseconds per call. Two clocks read
the same loops: thread CPU time (:func:`time.thread_time`, this thread only: what other processes
do hardly moves it) and wall time (:func:`time.perf_counter`). torch runs on one thread while it
is measured, so the thread clock sees all the work. The KV tensors and slot mapping are the same
objects on every call, as an engine passes them, so the layout checks take their cached path.

Use::

    doc = measure([reference_backend()], calls=2000, runs=5)
    doc["rows"][0]["thread_us"]  # {"call": ..., "hook": ..., "overhead": ...}
"""

from __future__ import annotations

import datetime
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from lmcache_core.bench.host import host_info

if TYPE_CHECKING:
    from lmcache_core.backend import Backend

#: The tiny layout (keyword arguments of :func:`lmcache_core.layout_registry.allocate_example`;
#: ``dtype`` is the torch dtype's name).
EXAMPLE: dict[str, Any] = {
    "kind": "vllm_flash_nhd", "num_layers": 2, "num_blocks": 8, "block_size": 16, "num_kv_heads": 2,
    "head_size": 8, "dtype": "float32",
}  # fmt: skip
#: Tokens of the chunk moved by every call (one block).
NUM_TOKENS = 16
DEFAULT_CALLS = 2000
DEFAULT_RUNS = 5
OPS = ("gather", "scatter")
CLOCKS = {"thread_us": time.thread_time, "wall_us": time.perf_counter}


def _cases(backend: Backend) -> tuple[str, dict[str, Callable[[], object]]]:
    """(name of the kernels' owner, the four timed callables: op and ``op hook``)."""
    import torch

    from lmcache_core.layout_registry import allocate_example, detect_layout

    example = {**EXAMPLE, "dtype": getattr(torch, EXAMPLE["dtype"])}
    kv, hints = allocate_example(**example)
    layout = detect_layout(kv, hints)
    chunk = torch.zeros(layout.chunk_format.shape(NUM_TOKENS), dtype=example["dtype"])
    slots = torch.arange(NUM_TOKENS, dtype=torch.int64)
    # the owner's hook functions as Backend calls them after its checks (one implementation each)
    owner = backend._kernel_owner(layout)
    gather_hook, scatter_hook = owner._impls["lmcache_gather"], owner._impls["lmcache_scatter"]
    cases: dict[str, Callable[[], object]] = {
        "gather": lambda: backend.gather(layout, kv, slots, chunk),
        "gather hook": lambda: gather_hook(
            layout=layout, kv_caches=kv, slot_mapping=slots, out=chunk, skip_prefix=0, stream=0
        ),
        "scatter": lambda: backend.scatter(layout, kv, slots, chunk),
        "scatter hook": lambda: scatter_hook(
            layout=layout, kv_caches=kv, slot_mapping=slots, src=chunk, skip_prefix=0, stream=0
        ),
    }
    return owner.name, cases


def _time(fn: Callable[[], object], calls: int) -> dict[str, float]:
    """Microseconds per call of ``calls`` back-to-back calls of ``fn``, per clock."""
    fn()  # warm: first-call caches (the layout checks) are not what is measured
    starts = {name: clock() for name, clock in CLOCKS.items()}
    for _ in range(calls):
        fn()
    return {name: (clock() - starts[name]) / calls * 1e6 for name, clock in CLOCKS.items()}


def measure_backend(backend: Backend, calls: int, runs: int) -> list[dict[str, Any]]:
    """One row per op of :data:`OPS` for ``backend``: per clock, the median ``call`` and ``hook``
    microseconds per call and ``overhead = call - hook``."""
    kernel, cases = _cases(backend)
    samples: dict[str, list[dict[str, float]]] = {case: [] for case in cases}
    for _ in range(runs):
        for case, fn in cases.items():
            samples[case].append(_time(fn, calls))
    rows = []
    for op in OPS:
        row: dict[str, Any] = {"backend": backend.name, "kernel": kernel, "op": op}
        for clock in CLOCKS:
            call = statistics.median(s[clock] for s in samples[op])
            hook = statistics.median(s[clock] for s in samples[f"{op} hook"])
            row[clock] = {"call": call, "hook": hook, "overhead": call - hook}
        rows.append(row)
    return rows


def measure(
    backends: Sequence[Backend], calls: int = DEFAULT_CALLS, runs: int = DEFAULT_RUNS
) -> dict[str, Any]:
    """The report: every backend's rows (:func:`measure_backend`) and what they were measured on.
    torch's intra-op threads are set to 1 while measuring and restored after."""
    import torch

    from lmcache_core import __version__

    if calls < 1:
        raise ValueError(f"calls: expected >= 1, given {calls}")
    if runs < 1:
        raise ValueError(f"runs: expected >= 1, given {runs}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = [row for b in backends for row in measure_backend(b, calls, runs)]
    finally:
        torch.set_num_threads(threads)
    return {
        "layout": {**EXAMPLE, "num_tokens": NUM_TOKENS},
        "calls": calls,
        "runs": runs,
        "statistic": "median over runs of microseconds per call",
        "torch_threads": 1,
        "host_line": host_info().describe(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lmcache_core": __version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "rows": rows,
    }
