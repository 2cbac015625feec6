"""tpu-inference integration: lmcache-core's L1 and L2 behind tpu-inference's host offload.

* :mod:`lmcache_tpu.tpu_inference.host_backend`: :class:`LMCacheCPUBackend`, a drop-in for
  ``tpu_inference.offload.cpu_backend.LocalCPUBackend`` (same methods and signatures) that keeps
  chunks in lmcache-core's L1 and L2 under lmcache-core keys; and the pure functions the connector
  calls (:func:`bind_requests`, :func:`adopt_l2_hits`, :func:`load_error_blocks`). Imports neither
  JAX nor tpu-inference.
* :mod:`lmcache_tpu.tpu_inference.connector`: ``TPUOffloadConnector``, a subclass of
  tpu-inference's own class under the same name (the TPU platform accepts connectors by name
  only), loaded through ``kv_connector_module_path``. Imports tpu-inference.
"""
