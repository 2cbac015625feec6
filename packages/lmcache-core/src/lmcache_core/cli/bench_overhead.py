"""``lmcache-core bench overhead``: front-end of :mod:`lmcache_core.bench.overhead`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from lmcache_core.bench.overhead import CLOCKS, DEFAULT_CALLS, DEFAULT_RUNS
from lmcache_core.cli.args import positive_int
from lmcache_core.cli.errors import CLIError
from lmcache_core.cli.table import format_table

NAME = "bench overhead"
HELP = "microseconds Backend.gather/scatter add to a kernel call (argument checks and dispatch)"

_CLOCK_NAMES = {"thread_us": "thread cpu", "wall_us": "wall"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend", metavar="NAME", action="append", default=None,
        help="an installed backend to measure beside the reference (repeatable), e.g. arm",
    )  # fmt: skip
    parser.add_argument(
        "--calls", type=positive_int, default=DEFAULT_CALLS,
        help=f"back-to-back calls per timed run (default {DEFAULT_CALLS})",
    )  # fmt: skip
    parser.add_argument(
        "--runs", type=positive_int, default=DEFAULT_RUNS,
        help=f"timed runs per figure; the median is reported (default {DEFAULT_RUNS})",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")


def _backends(names: list[str]) -> list[Any]:
    from lmcache_core.backend import reference_backend
    from lmcache_core.selection import select_backend

    backends = [reference_backend()]
    for name in dict.fromkeys(names):
        if name == "reference":
            continue
        try:
            backends.append(select_backend("cpu", name).backend)
        except (ValueError, RuntimeError) as e:
            raise CLIError(f"--backend {name!r}: {e}") from None
    return backends


def render(doc: dict[str, Any]) -> str:
    """The report as text: a header, one line per (backend, op, clock), the notes."""
    layout = doc["layout"]
    lines = [
        f"lmcache-core bench overhead: {doc['calls']} calls per run, median of {doc['runs']} runs, "
        f"torch threads {doc['torch_threads']}",
        f"layout {layout['kind']}: {layout['num_layers']} layers, {layout['num_blocks']} blocks of "
        f"{layout['block_size']}, {layout['num_kv_heads']} heads x {layout['head_size']}, {layout['dtype']}; "
        f"{layout['num_tokens']}-token chunk",
        f"host: {doc['host_line']}",
        f"python {doc['python']}, torch {doc['torch']}, lmcache-core {doc['lmcache_core']}, {doc['date']}",
        "",
    ]
    rows = [
        (r["backend"], r["kernel"], r["op"], _CLOCK_NAMES[clock],
         f"{r[clock]['call']:.2f}", f"{r[clock]['hook']:.2f}", f"{r[clock]['overhead']:.2f}")
        for r in doc["rows"]
        for clock in CLOCKS
    ]  # fmt: skip
    headers = ("backend", "kernels", "op", "clock", "us per call", "hook alone us", "overhead us")
    lines.append(format_table(headers, rows))
    lines += [
        "",
        "note: hook alone = the kernels' hook function called directly with the same arguments; "
        "overhead = per call - hook alone (Backend's argument checks and dispatch)",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from lmcache_core.bench.overhead import measure

    doc = measure(_backends(args.backend or []), calls=args.calls, runs=args.runs)
    print(json.dumps(doc, indent=2) if args.json else render(doc))
    return 0
