"""A step's stores gathered off the engine thread, on the CPUs the engine leaves spare.

On a CPU host the gather of a step's new chunks into L1 is host work. Run in vLLM's
``wait_for_save`` it delays the step's sampled tokens (vLLM samples after ``wait_for_save``)
by the copy: ~14 ms for a 1,024-token prompt of 16 KiB per token. vLLM CPU binds the engine
thread and its OpenMP threads to some CPUs and reserves the others for its API server and
scheduler (``VLLM_CPU_OMP_THREADS_BIND``, ``VLLM_CPU_NUM_OF_RESERVED_CPU``); :class:`StoreThread`
runs the stores there, so the tokens go out while the chunks are copied.

Safety: the next step's loads and forward may write blocks that this step's stores read (a
preempted request's blocks are freed at once and may be handed to another request), so the
worker calls :meth:`StoreThread.join` at the start of every step, before its loads; only
sampling, output and scheduling overlap the copy.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

logger = logging.getLogger(__name__)

#: Where Linux lists each NUMA node's CPUs (``node0/cpulist``: ``0-15,32-47``).
NODES_DIR = Path("/sys/devices/system/node")

#: ``store_overlap`` values: ``auto`` (a store thread when the engine thread leaves CPUs spare),
#: ``on`` (a store thread in any case; pinned to spare CPUs when there are any), ``off``.
STORE_OVERLAP = ("auto", "on", "off")


def check_store_overlap(value: object) -> str:
    """``value`` if it is one of :data:`STORE_OVERLAP`, else a ValueError naming the setting."""
    if value not in STORE_OVERLAP:
        raise ValueError(f"store_overlap: expected one of {list(STORE_OVERLAP)}, given {value!r}")
    return str(value)


def bound_cpus(bind: str | None) -> set[int]:
    """Every core id in a ``VLLM_CPU_OMP_THREADS_BIND`` value (``0-6``, ``0,2,4``, one list per
    rank separated by ``|``); empty for ``auto``, ``nobind``, ``all``, none or unparsable text."""
    out: set[int] = set()
    for part in (bind or "").replace("|", ",").split(","):
        lo, sep, hi = part.strip().partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            return set()
        out.update(range(int(lo), int(hi if sep else lo) + 1))
    return out


def node_cpus(cpus: set[int], nodes_dir: Path = NODES_DIR) -> set[int] | None:
    """The CPUs of every NUMA node that holds one of ``cpus`` (Linux sysfs ``node*/cpulist``);
    None where the nodes cannot be read."""
    out: set[int] = set()
    try:
        for node in nodes_dir.glob("node[0-9]*"):
            members = bound_cpus((node / "cpulist").read_text().strip())
            if members & cpus:
                out |= members
    except OSError:
        return None
    return out or None


def spare_cpus(nodes_dir: Path = NODES_DIR) -> set[int]:
    """CPUs outside the calling thread's affinity and outside every rank's explicit
    ``VLLM_CPU_OMP_THREADS_BIND``, on the calling thread's NUMA nodes (empty where unknown).

    vLLM CPU has bound the engine thread to its OpenMP CPUs by the time the KV is registered;
    with automatic binding each rank takes one NUMA node and the node's last CPUs are reserved,
    so the thread's own nodes keep other ranks' CPUs out (and the copy near the KV's memory).
    The kernel still applies the process's cpuset when a thread asks for them (:func:`pin_to`)."""
    if not hasattr(os, "sched_getaffinity"):
        return set()
    mine = set(os.sched_getaffinity(0))
    near = node_cpus(mine, nodes_dir)
    candidates = near if near is not None else set(range(os.cpu_count() or 1))
    return candidates - mine - bound_cpus(os.environ.get("VLLM_CPU_OMP_THREADS_BIND"))


def pin_to(cpus: Iterable[int]) -> bool:
    """Bind the calling thread to ``cpus``; False (and unchanged) where the system refuses."""
    cpus = set(cpus)
    if not cpus or not hasattr(os, "sched_setaffinity"):
        return False
    try:
        os.sched_setaffinity(0, cpus)
    except OSError as e:  # e.g. none of them in this process's cpuset
        logger.info("lmcache-core store thread: not pinned to CPUs %s: %s", sorted(cpus), e)
        return False
    return True


class StoreThread:
    """One thread running submitted store batches in order, pinned to ``cpus`` (if any).

    ``submit(fn)`` queues ``fn()``; ``join()`` waits until everything submitted has run;
    ``busy`` says whether something submitted has not finished. ``fn`` must not raise (the
    worker's store logs and swallows its own errors); an exception is logged and dropped.
    """

    def __init__(self, cpus: Iterable[int] = ()) -> None:
        self.cpus = sorted(set(cpus))
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._idle = threading.Event()
        self._idle.set()
        self._pending = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="lmcache-store", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        pin_to(self.cpus)
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job()
            except Exception:
                logger.exception("lmcache-core store thread: a store batch failed")
            with self._lock:
                self._pending -= 1
                if self._pending == 0:
                    self._idle.set()

    def submit(self, job: Callable[[], None]) -> None:
        if not self._thread.is_alive():
            raise RuntimeError("store thread: closed")
        with self._lock:
            self._pending += 1
            self._idle.clear()
        self._jobs.put(job)

    @property
    def busy(self) -> bool:
        return not self._idle.is_set()

    def join(self) -> None:
        """Wait until every submitted batch has run."""
        self._idle.wait()

    def close(self, timeout_s: float = 60.0) -> None:
        """Run what is queued, then stop the thread (bounded by ``timeout_s``)."""
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join(timeout_s)
