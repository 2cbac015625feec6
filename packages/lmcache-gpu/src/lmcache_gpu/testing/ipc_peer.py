"""The other process of the IPC tests: maps the test's KV and copies it, ordered by IPC events.

Run as ``python -m lmcache_gpu.testing.ipc_peer <package>``. Reads one JSON object per line on
stdin and answers one per line on stdout (handles as hex text; no pickle):

* ``{"op": "open", "tensors": [...], "event": hex, "example": {...}}``: map the tensors (fields of
  :class:`~lmcache_gpu.ipc.ExportedTensor`), open the test's event, make an event of its own;
  answers ``{"event": hex, "mappings": n}``;
* ``{"op": "gather", "wait": bool, "num_tokens": n}``: on a new stream, wait for the test's event
  (unless ``wait`` is false: the negative control), gather ``num_tokens`` tokens into page-locked
  host memory, synchronize; answers ``{"chunk": hex, "values": [...]}``;
* ``{"op": "scatter", "value": v, "num_tokens": n, "sleep_cycles": c}``: on torch's current stream,
  spin ``c`` cycles, scatter a chunk filled with ``v``, record its own event; answers at once,
  without waiting for the device;
* ``{"op": "close"}``: drop the tensors; answers ``{"mappings": n}``; ``{"op": "exit"}``.

Imported only by tests.
"""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any

import torch

from lmcache_core.layout_registry import allocate_example, detect_layout
from lmcache_gpu.ipc import ExportedTensor


def main(package: str) -> None:
    kernels: Any = importlib.import_module(f"{package}.kernels").KERNELS
    ipc = kernels.ipc()
    state: dict[str, Any] = {}
    for line in sys.stdin:
        msg = json.loads(line)
        op = msg["op"]
        if op == "open":
            tensors = [
                ipc.open_tensor(
                    ExportedTensor(
                        bytes.fromhex(t["handle"]), t["offset"], t["device"], t["dtype"],
                        tuple(t["shape"]), tuple(t["strides"]),
                    )
                )
                for t in msg["tensors"]
            ]  # fmt: skip
            _, hints = allocate_example(
                **{**msg["example"], "dtype": getattr(torch, msg["example"]["dtype"])}
            )
            state.update(
                kv=tensors,
                layout=detect_layout(tensors, hints),
                theirs=ipc.open_event(bytes.fromhex(msg["event"]), tensors[0].device.index),
                mine=ipc.create_event(tensors[0].device.index),
            )
            reply: dict[str, Any] = {
                "event": ipc.export_event(state["mine"]).hex(),
                "mappings": ipc.open_mappings(),
            }
        elif op == "gather":
            kv, layout, n = state["kv"], state["layout"], msg["num_tokens"]
            stream = kernels.new_stream(kv[0].device)
            if msg["wait"]:
                ipc.wait(state["theirs"], stream)
            chunk = kernels.alloc_host(layout.chunk_format.nbytes(n)).view(kv[0].dtype)
            kernels.gather(layout, kv, torch.arange(n, dtype=torch.int64), chunk, stream=stream)
            kernels.synchronize(stream)
            kernels.destroy_stream(stream)
            values = sorted({float(v) for v in chunk.float().unique()})
            reply = {"chunk": chunk.view(torch.uint8).numpy().tobytes().hex(), "values": values}
        elif op == "scatter":
            kv, layout, n = state["kv"], state["layout"], msg["num_tokens"]
            chunk = kernels.alloc_host(layout.chunk_format.nbytes(n)).view(kv[0].dtype).fill_(msg["value"])
            state["chunk"] = chunk  # alive until the copy is done (the test waits for the event)
            with torch.cuda.device(kv[0].device):
                torch.cuda._sleep(msg["sleep_cycles"])
                kernels.scatter(layout, kv, torch.arange(n, dtype=torch.int64), chunk)
                ipc.record(state["mine"])
            reply = {"recorded": True}
        elif op == "close":
            torch.cuda.synchronize()
            state.clear()
            reply = {"mappings": ipc.open_mappings()}
        else:
            return
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
