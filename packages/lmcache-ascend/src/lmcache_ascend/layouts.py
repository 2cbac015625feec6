"""Which registry layouts are the NPU engines' (vllm-ascend, sglang on NPU).

Imports only :mod:`lmcache_core.testing.cases`' variant description when asked for the test
variants; the names themselves are plain data.
"""

from __future__ import annotations

#: Registry kinds NPU engines hand over: vllm-ascend's per-layer ``(K, V)`` (2 MiB-aligned variant
#: with a KV connector), its MLA ``(nope, rope)`` and DSA ``(nope, rope, indexer)`` tuples, and
#: SGLang NPU's layer-concatenated ``[K, V]`` (MLA variant). The AscendC kernels and the torch-ops
#: path index any registry layout; these are the ones every test runs in every dtype.
NPU_LAYOUTS: tuple[str, ...] = ("vllm_ascend", "vllm_ascend_mla", "sglang_npu")
