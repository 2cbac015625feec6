"""Entry point of the ``lmcache-core`` command (console script ``lmcache_core.cli.main:main``).

Subcommands are listed in :data:`COMMANDS`: a name of one or two words (``"info"``,
``"bench kernels"``) mapped to the module implementing it. To add one, write a module with
``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int`` and add one line here;
two-word names are grouped under their first word (``lmcache-core bench kernels``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Any

from lmcache_core.cli.errors import CLIError

#: Subcommand name -> module path.
COMMANDS: dict[str, str] = {
    "info": "lmcache_core.cli.info",
    "bench kernels": "lmcache_core.cli.bench_kernels",
    "bench l2": "lmcache_core.cli.bench_l2",
    "bench e2e": "lmcache_core.cli.bench_e2e",
    "bench serde": "lmcache_core.cli.bench_serde",
    "bench serve": "lmcache_core.cli.bench_serve",
    "bench import": "lmcache_core.cli.bench_import",
    "bench overhead": "lmcache_core.cli.bench_overhead",
    "demo": "lmcache_core.cli.demo",
    "serve": "lmcache_core.cli.serve",
    "status": "lmcache_core.cli.status",
    "bench server": "lmcache_core.cli.bench_server",
}

#: Help of the first word of two-word subcommands.
GROUP_HELP = {"bench": "benchmarks"}


def build_parser(commands: dict[str, str] | None = None) -> argparse.ArgumentParser:
    """The argument parser with every subcommand of ``commands`` (default :data:`COMMANDS`)."""
    from lmcache_core import __version__

    commands = COMMANDS if commands is None else commands
    parser = argparse.ArgumentParser(
        prog="lmcache-core", description="lmcache-core: hardware-neutral KV-cache layer tools"
    )
    parser.add_argument("--version", action="version", version=f"lmcache-core {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more (-v: info, -vv: debug) on stderr"
    )
    top = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    groups: dict[str, Any] = {}
    for name, module_path in commands.items():
        words = name.split()
        if len(words) not in (1, 2):
            raise ValueError(f"COMMANDS: expected names of one or two words, given {name!r}")
        module = importlib.import_module(module_path)
        if len(words) == 1:
            sub = top.add_parser(words[0], help=module.HELP, description=module.HELP)
        else:
            group, leaf = words
            if group not in groups:
                leaves = sorted(n.split()[1] for n in commands if n.split()[0] == group and " " in n)
                group_parser = top.add_parser(
                    group,
                    help=f"{GROUP_HELP.get(group, group)}: {', '.join(leaves)}",
                    description=GROUP_HELP.get(group, group),
                )
                groups[group] = group_parser.add_subparsers(
                    dest=f"{group}_command", metavar="COMMAND", required=True
                )
            sub = groups[group].add_parser(leaf, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run, command_name=name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns the exit status (2 for a usage error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=max(logging.DEBUG, logging.WARNING - 10 * args.verbose),
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        status: int = args.run(args)
    except CLIError as e:
        print(f"lmcache-core {args.command_name}: error: {e}", file=sys.stderr)
        return 2
    return status


if __name__ == "__main__":
    sys.exit(main())
