"""Repeated timing of one operation and its summary (median, min, max)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Stats:
    """Throughput of repeated runs in GB/s (1e9 bytes per second): median, min, max, count."""

    median: float
    min: float
    max: float
    runs: int

    @classmethod
    def of(cls, values: list[float]) -> Stats:
        if not values:
            raise ValueError("values: expected at least one measurement, given none")
        return cls(statistics.median(values), min(values), max(values), len(values))

    def to_json(self) -> dict[str, Any]:
        return {"median": self.median, "min": self.min, "max": self.max, "runs": self.runs}

    def describe(self) -> str:
        """``"12.3 (11.9-12.8)"``: median, then min-max."""
        return f"{self.median:.2f} ({self.min:.2f}-{self.max:.2f})"


def measure_gbps(
    run: Callable[[int], object],
    sync: Callable[[], None],
    nbytes: int,
    repeats: int,
    warmup: int = 1,
    on_repeat: Callable[[int], None] | None = None,
) -> Stats:
    """Time ``run(i)`` for ``i`` in ``[0, warmup + repeats)``; the first ``warmup`` are not counted.

    Each timed run is bracketed by ``sync()`` so asynchronous device work is included.
    Throughput is ``nbytes`` (bytes moved per run, each counted once) over the run's seconds.
    """
    if repeats < 1:
        raise ValueError(f"repeats: expected >= 1, given {repeats}")
    values: list[float] = []
    for i in range(warmup + repeats):
        if on_repeat is not None:
            on_repeat(i)
        sync()
        t0 = time.perf_counter()
        run(i)
        sync()
        dt = time.perf_counter() - t0
        if i >= warmup:
            values.append(nbytes / max(dt, 1e-9) / 1e9)
    return Stats.of(values)
