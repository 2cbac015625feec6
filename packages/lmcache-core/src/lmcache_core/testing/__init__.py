"""Backend conformance suite, shipped as a pytest plugin.

Every backend package runs the same suite against itself. In one of its test modules::

    pytest_plugins = ["lmcache_core.testing"]

    from lmcache_core.testing import ConformanceSuite


    class TestArmConformance(ConformanceSuite):
        backend_name = "arm"  # entry-point name, passed to lmcache_core.selection.get_backend
        device = "cpu"  # torch device the engine's KV tensors live on

Override ``make_backend()`` to build the :class:`~lmcache_core.backend.Backend` directly instead.
Host chunks come from the backend's ``alloc_host``; set ``chunk_device`` to put them on a device.

What it checks, for every layout kind of :data:`~lmcache_core.layout_registry.LAYOUT_KINDS` (plus
vLLM's NHD shape over HND memory), in fp16, bf16, fp32 and both fp8 formats, with random bits
(NaN payloads included) and poisoned outputs:

* ``gather`` equals the reference bit for bit, leaves skipped rows poisoned and the KV untouched;
* ``scatter`` equals the reference over the whole destination KV (stray writes show) and writes
  nothing outside the live tokens' slots;
* gather -> scatter -> gather reproduces the chunk (on a stream from ``new_stream``);
* a two-group model (:class:`~lmcache_core.layout.KVCacheSpec`) works per group;
* zero-token chunks move nothing; ``alloc_host``, streams, events and ``synchronize`` work.

When the backend's probe (:func:`lmcache_core.discovery.discover_backends`) says it cannot run on
this host, every test is skipped with the probe's reason, or fails with it when the environment
variable ``LMCACHE_REQUIRE_BACKEND`` names the backend (comma-separated names; the CI workflow's
vendor jobs set it, see :mod:`lmcache_core.testing.require`). Layout/dtype pairs outside the
backend's Capabilities are skipped, since the core sends them to the reference.

Options (pass ``-p lmcache_core.testing`` to use them on the command line):
``--lmcache-conformance-seed`` (default 0) and ``--lmcache-conformance-cases`` (cases per layout,
default 6). The seed is printed in the report header (when loaded with ``-p``) and in the
terminal summary, and every failure message gives the command line that reruns it.

Public names: :class:`ConformanceSuite`, :func:`assert_same_bits`, and the case builders
:class:`Case`, :func:`make_cases`, :data:`LAYOUT_VARIANTS` (for a backend's own extra tests).
Importing this package is cheap; the suite imports torch when first used.

PYTEST_DONT_REWRITE: test modules import this package before pytest registers it as a plugin; the
marker keeps pytest from warning that it is too late to rewrite its asserts (it has none).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# The pytest hooks live in one module, registered once however this package is loaded.
pytest_plugins = ["lmcache_core.testing.plugin"]

_LAZY = {
    "ConformanceSuite": "lmcache_core.testing.conformance",
    "assert_same_bits": "lmcache_core.testing.conformance",
    "Case": "lmcache_core.testing.cases",
    "LAYOUT_VARIANTS": "lmcache_core.testing.cases",
    "make_cases": "lmcache_core.testing.cases",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:
    from lmcache_core.testing.cases import LAYOUT_VARIANTS as LAYOUT_VARIANTS
    from lmcache_core.testing.cases import Case as Case
    from lmcache_core.testing.cases import make_cases as make_cases
    from lmcache_core.testing.conformance import ConformanceSuite as ConformanceSuite
    from lmcache_core.testing.conformance import assert_same_bits as assert_same_bits


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lmcache_core.testing' has no attribute {name!r}")
