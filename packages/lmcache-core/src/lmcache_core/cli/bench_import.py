"""``lmcache-core bench import``: front-end of :mod:`lmcache_core.bench.imports`."""

from __future__ import annotations

import argparse
import json
import sys

from lmcache_core.cli.args import positive_int
from lmcache_core.cli.errors import CLIError
from lmcache_core.cli.table import format_table

NAME = "bench import"
HELP = "milliseconds of `import lmcache_core` (and other modules) in fresh interpreters"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--module", action="append", default=None,
        help="module to import (repeatable; default lmcache_core and lmcache_core.integrations.vllm)",
    )  # fmt: skip
    parser.add_argument(
        "--runs", type=positive_int, default=10, help="fresh interpreters per module (default 10)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of a table")


def run(args: argparse.Namespace) -> int:
    from lmcache_core.bench.imports import measure

    modules = args.module or ["lmcache_core", "lmcache_core.integrations.vllm"]
    try:
        rows = [measure(m, args.runs) for m in modules]
    except ValueError as e:
        raise CLIError(f"--{e}") from None
    if args.json:
        print(json.dumps({"python": sys.version.split()[0], "rows": rows}, indent=2))
        return 0
    table = [
        (r["module"], f"{r['ms']['median']:.2f}", f"{r['ms']['min']:.2f}", f"{r['ms']['max']:.2f}",
         r["runs"], ", ".join(r["heavy_modules"]) or "none")
        for r in rows
    ]  # fmt: skip
    print(format_table(("import", "median ms", "min ms", "max ms", "runs", "heavy modules loaded"), table))
    return 0
