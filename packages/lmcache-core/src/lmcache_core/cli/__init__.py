"""The ``lmcache-core`` command line: ``info``, ``bench kernels``, and more subcommands.

Each subcommand is one module here exposing ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``, listed in :data:`lmcache_core.cli.main.COMMANDS`. Subcommand modules import
torch inside ``run`` only, so ``lmcache-core --help`` stays fast.
"""
