"""Integrations of lmcache-core with inference engines.

* :mod:`lmcache_core.integrations.vllm`: a vLLM v1 KV connector (``KVConnectorBase_V1``).

Importing this package imports no engine: each integration imports its engine only when used.
"""
