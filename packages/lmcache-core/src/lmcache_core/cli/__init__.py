"""The ``lmcache-core`` command line: ``info``, ``bench kernels``, and more subcommands.

Front-ends only: each subcommand parses its options, calls the library (the measuring lives in
:mod:`lmcache_core.bench`) and renders the result as tables or JSON. Each is one module here
exposing ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``, listed in
:data:`lmcache_core.cli.main.COMMANDS`; :mod:`~lmcache_core.cli.args` holds the argument types and
flags they share, :mod:`~lmcache_core.cli.progress` the progress line, :mod:`~lmcache_core.cli.table`
the tables. Subcommand modules import torch inside ``run`` only, so ``lmcache-core --help`` stays
fast.
"""
