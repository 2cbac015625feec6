"""Child process of test_process.py: registers, takes a store lease on ``argv[2]`` chunks, writes
half of the first slot, prints ``prepared <leased bytes>`` and hangs mid-store until killed."""

from __future__ import annotations

import sys
import time

import numpy as np

from lmcache_core.layout import ChunkFormat
from lmcache_core.server.client import CacheClient

endpoint, chunks = sys.argv[1], int(sys.argv[2])
client = CacheClient(endpoint, name="store-and-hang")
client.register("victim", model_id="m", formats=[ChunkFormat.uniform(2, 2, 32, "float32", 4)])
lease = client.prepare_store(np.arange(10_000, 10_000 + 16 * chunks, dtype=np.uint32))
view = client.view(lease.slots[0])
view[: view.numel() // 2].fill_(0xAB)
print("prepared", sum(s.nbytes for s in lease.slots), flush=True)
while True:
    time.sleep(1)
