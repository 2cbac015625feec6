"""The measuring library behind ``lmcache-core bench``: plain functions and records, no argparse.

=================  ==========================================================================
module             one job
=================  ==========================================================================
``host``           what the machine is: CPU model, cores, memory, last-level cache
``timing``         repeated timing of one operation and its median, min, max
``pool``           benchmark shapes and the paged KV pool they run on; slot mappings
``memcpy_roof``    the same bytes moved by plain ``memcpy``: the roof a kernel is held to
``kernels``        gather / scatter GB/s of a backend, the reference and the roof, bit-checked
``l2``             store / lookup / load of one L2 adapter, next to a raw peer on the same bytes
``e2e``            TTFT with a cache hit against no hit, on a real vLLM engine
``tiny_llama``     the small random-weight Llama the e2e bench and the demo run (no download)
``progress``       the progress callbacks a bench calls; the terminal display is the CLI's
=================  ==========================================================================

Bad arguments raise :class:`ValueError` whose message starts with the keyword argument's name
(``"repeats: expected an integer >= 1, given 0"``); the CLI turns that into ``--repeats: ...``.
Nothing here prints: results come back as records with ``to_json()``, progress goes through a
:class:`~lmcache_core.bench.progress.ProgressSink`.

``import lmcache_core`` does not import this package, and importing this package imports
nothing; each module imports torch (or numpy, vLLM, transformers) inside the calls that need it.
"""
