"""The cache server: one process per node owning L1 (in shared memory) and the L2 tiers, shared by
every engine and tensor-parallel rank on the node (``lmcache-core serve``).

Modules, one job each:

``protocol``  msgspec Structs of every request and reply, msgpack framing, the protocol version
``shm``       shared-memory segments owned by the server: an arena of slots, stale-segment cleanup
``config``    :class:`~lmcache_core.server.config.ServerConfig` from flags, ``LMCACHE_*`` and TOML
``auth``      CurveZMQ keys derived from a shared key file (required off 127.0.0.1)
``service``   the cache itself: sessions, leases, quotas, L1 and L2, independent of the transport
``server``    the ZMQ ROUTER loop around the service, signals, clean shutdown
``http``      ``/healthz`` ``/readyz`` ``/metrics`` ``/status`` on a small stdlib HTTP server
``client``    :class:`~lmcache_core.server.client.CacheClient`: the DEALER side, reconnects with back-off
``remote``    :class:`~lmcache_core.server.remote.RemoteCacheEngine`: CacheEngine's calls over a client

Nothing in this package imports pickle, and no message carries KV bytes: they move through slots
of the server's shared memory, which the worker's backend gathers into and scatters from.
"""
