"""Store, lookup and load throughput and latency of one L2 adapter, next to a raw peer.

No engine is involved: the bench talks to the adapter the way the write-behind and prefetch
threads do (batches submitted with ``submit_*``, at most ``in_flight`` batches outstanding).
Each round uses ``num_keys`` fresh keys of ``object_size`` bytes (random payload, the key index
written into its first bytes): it stores them, looks them up, loads them into preallocated
buffers, optionally checks every byte (``verify``), then deletes them. ``warmup_rounds`` run
first and are not counted. Figures are medians over ``rounds`` (min-max beside them); MB/s is
payload bytes (1e6) per second of the phase's wall time; ops/s is keys per second; latency is per
key (its batch's time from submit to completion), p50 and p99 over every key of every counted
round.

In the same run it measures the peer a user would compare with, on the same bytes:

* ``fs://``: raw sequential write (+ fsync when the adapter fsyncs) and read of the same number
  of files of the same size in the same directory with plain ``os.write`` / ``os.readv``;
* ``redis://``: a plain redis-py client, pipelined SET then pipelined GET of the same values;
* ``s3://``: plain boto3 ``put_object`` / ``get_object`` in a loop.

``cold`` (fs) writes back and drops the page cache of the files (``posix_fadvise DONTNEED``)
before each load and each peer read, so both read from the device.
"""

from __future__ import annotations

import datetime
import math
import os
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any

from lmcache_core.bench.progress import NoProgress, ProgressSink

MB = 1e6


class L2BenchError(RuntimeError):
    """The adapter or its peer gave back other bytes than were stored."""


# ---- measurement helpers ----------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass
class Phase:
    """One operation over the rounds: seconds per counted round and per-key latencies."""

    name: str
    seconds: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    failures: int = 0

    def mbps(self, nbytes: int) -> list[float]:
        return [nbytes / s / MB for s in self.seconds]

    def opss(self, nkeys: int) -> list[float]:
        return [nkeys / s for s in self.seconds]

    def summary(self, nbytes: int, nkeys: int) -> dict[str, Any]:
        mb, ops = self.mbps(nbytes), self.opss(nkeys)
        return {
            "mb_per_s": {"median": statistics.median(mb), "min": min(mb), "max": max(mb)},
            "ops_per_s": {"median": statistics.median(ops), "min": min(ops), "max": max(ops)},
            "latency_ms": {
                "p50": percentile(self.latencies, 50) * 1e3,
                "p99": percentile(self.latencies, 99) * 1e3,
            },
            "rounds": len(self.seconds),
            "failures": self.failures,
        }


def run_batches(
    submit: Callable[[list[Any]], Future[list[Any]]],
    items: list[Any],
    batch: int,
    in_flight: int,
    on_done: Callable[[list[Any], list[Any]], None],
) -> tuple[float, list[float]]:
    """Submit ``items`` in batches, at most ``in_flight`` outstanding; ``(wall seconds, per-key
    latencies)``. ``on_done(batch_items, results)`` sees every batch's results."""
    batches = [items[i : i + batch] for i in range(0, len(items), batch)]
    pending: dict[Future[list[Any]], tuple[list[Any], float]] = {}
    latencies: list[float] = []
    t0 = time.perf_counter()
    nxt = 0
    while nxt < len(batches) or pending:
        while nxt < len(batches) and len(pending) < in_flight:
            pending[submit(batches[nxt])] = (batches[nxt], time.perf_counter())
            nxt += 1
        done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
        now = time.perf_counter()
        for fut in done:
            part, started = pending.pop(fut)
            latencies.extend([now - started] * len(part))
            on_done(part, fut.result())
    return time.perf_counter() - t0, latencies


def make_payloads(num: int, size: int, seed: int) -> list[Any]:
    """``num`` distinct uint8 arrays of ``size`` bytes: one random block, key index in front."""
    import numpy as np

    base = np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)
    out = []
    for i in range(num):
        p = base.copy()
        tag = np.frombuffer(i.to_bytes(8, "little"), dtype=np.uint8)[: min(8, size)]
        p[: tag.size] ^= tag
        out.append(p)
    return out


def drop_cache(paths: Sequence[str]) -> None:
    """Write back and drop the page cache of ``paths`` (fsync, then POSIX_FADV_DONTNEED)."""
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


# ---- peers ------------------------------------------------------------------------------------


def fs_peer(
    root: str, payloads: Sequence[Any], fsync: bool, cold: bool, rounds: int
) -> dict[str, list[float]]:
    """Raw sequential write and read MB/s of the same files in ``root`` with plain syscalls."""
    import numpy as np

    from lmcache_core.storage.fs_adapter import read_into, write_all

    d = os.path.join(root, f".bench-peer-{uuid.uuid4().hex[:8]}")
    os.makedirs(d)
    nbytes = sum(p.nbytes for p in payloads)
    out: dict[str, list[float]] = {"write": [], "read": []}
    bufs = [np.empty_like(p) for p in payloads]
    try:
        for r in range(rounds + 1):  # the first is warm-up
            paths = [os.path.join(d, f"{r}-{i}") for i in range(len(payloads))]
            t0 = time.perf_counter()
            for path, p in zip(paths, payloads, strict=True):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                write_all(fd, (p,))
                if fsync:
                    os.fsync(fd)
                os.close(fd)
            tw = time.perf_counter() - t0
            if cold:
                drop_cache(paths)
            t0 = time.perf_counter()
            for path, b in zip(paths, bufs, strict=True):
                fd = os.open(path, os.O_RDONLY)
                read_into(fd, b, 0)
                os.close(fd)
            tr = time.perf_counter() - t0
            for path in paths:
                os.unlink(path)
            if r:
                out["write"].append(nbytes / tw / MB)
                out["read"].append(nbytes / tr / MB)
    finally:
        for name in os.listdir(d):
            os.unlink(os.path.join(d, name))
        os.rmdir(d)
    return out


def redis_peer(adapter: Any, payloads: Sequence[Any], batch: int, rounds: int) -> dict[str, list[float]]:
    """Plain redis-py: pipelined SET, then pipelined GET, of the same bytes."""
    client = adapter.client
    nbytes = sum(p.nbytes for p in payloads)
    out: dict[str, list[float]] = {"write": [], "read": []}
    values = [p.tobytes() for p in payloads]
    for r in range(rounds + 1):
        names = [f"{adapter.prefix}bench-peer-{uuid.uuid4().hex[:8]}-{i}" for i in range(len(values))]
        t0 = time.perf_counter()
        for i in range(0, len(names), batch):
            pipe = client.pipeline(transaction=False)
            for n, v in zip(names[i : i + batch], values[i : i + batch], strict=True):
                pipe.set(n, v)
            pipe.execute()
        tw = time.perf_counter() - t0
        t0 = time.perf_counter()
        got = 0
        for i in range(0, len(names), batch):
            pipe = client.pipeline(transaction=False)
            for n in names[i : i + batch]:
                pipe.get(n)
            got += sum(len(v) for v in pipe.execute())
        tr = time.perf_counter() - t0
        client.delete(*names) if not hasattr(client, "nodes_manager") else [client.delete(n) for n in names]
        if got != nbytes:
            raise L2BenchError(f"redis peer read {got} bytes, expected {nbytes}")
        if r:
            out["write"].append(nbytes / tw / MB)
            out["read"].append(nbytes / tr / MB)
    return out


def s3_peer(adapter: Any, payloads: Sequence[Any], rounds: int) -> dict[str, list[float]]:
    """Plain boto3: put_object then get_object in a loop, same bytes."""
    client, bucket = adapter.client, adapter.bucket
    nbytes = sum(p.nbytes for p in payloads)
    out: dict[str, list[float]] = {"write": [], "read": []}
    values = [p.tobytes() for p in payloads]
    for r in range(rounds + 1):
        names = [
            f"{adapter.prefix}/bench-peer-{uuid.uuid4().hex[:8]}-{i}".lstrip("/") for i in range(len(values))
        ]
        t0 = time.perf_counter()
        for n, v in zip(names, values, strict=True):
            client.put_object(Bucket=bucket, Key=n, Body=v)
        tw = time.perf_counter() - t0
        t0 = time.perf_counter()
        for n in names:
            client.get_object(Bucket=bucket, Key=n)["Body"].read()
        tr = time.perf_counter() - t0
        client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": n} for n in names]})
        if r:
            out["write"].append(nbytes / tw / MB)
            out["read"].append(nbytes / tr / MB)
    return out


# ---- the bench --------------------------------------------------------------------------------


def _into(buffer: Any) -> Callable[[Any], Any]:
    return lambda header: buffer


def _open(url: str, in_flight: int) -> Any:
    from lmcache_core.storage.registry import open_adapter
    from lmcache_core.storage.url import L2URL

    if "in_flight" not in L2URL(url).params:
        url += ("&" if "?" in url else "?") + f"in_flight={in_flight}"
    return open_adapter(url)


def _check_int(name: str, value: int | None, minimum: int) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        raise ValueError(f"{name}: expected an integer >= {minimum}, given {value!r}")


def measure(
    adapter_url: str,
    *,
    num_keys: int = 32,
    object_size: int = 256 * 1024,
    in_flight: int = 2,
    batch_size: int | None = None,
    rounds: int = 3,
    warmup_rounds: int = 1,
    verify: bool = False,
    cold: bool = False,
    peer: bool = True,
    progress: ProgressSink | None = None,
) -> dict[str, Any]:
    """Measure the adapter of ``adapter_url``; one JSON-able document.

    ``object_size`` in bytes; ``in_flight`` is also the adapter's worker threads (unless the URL
    sets ``in_flight``); ``batch_size`` defaults to ``num_keys / in_flight`` rounded up. ValueError
    names the bad keyword (or comes from the URL); ImportError when the adapter's client library
    is missing; :class:`L2BenchError` when ``verify`` or the peer finds wrong bytes.
    """
    import numpy as np

    from lmcache_core.storage.adapter import LoadRequest, Status, StoreItem
    from lmcache_core.storage.object_format import ObjectMeta
    from lmcache_core.storage.url import L2URL

    for name, value, minimum in (("num_keys", num_keys, 1), ("object_size", object_size, 1),
                                 ("in_flight", in_flight, 1), ("batch_size", batch_size, 1),
                                 ("rounds", rounds, 1), ("warmup_rounds", warmup_rounds, 0)):  # fmt: skip
        _check_int(name, value, minimum)
    scheme = L2URL(adapter_url).scheme
    if cold and scheme != "fs":
        raise ValueError(f"cold: only for fs:// adapters, given {scheme}://")
    progress = NoProgress() if progress is None else progress
    progress.begin(warmup_rounds + rounds + (1 if peer else 0))
    adapter = _open(adapter_url, in_flight)
    n, size = num_keys, object_size
    batch = batch_size or max(1, math.ceil(n / in_flight))
    nbytes = n * size
    try:
        payloads = make_payloads(n, size, seed=0)
        bufs = [np.empty(size, np.uint8) for _ in range(n)]
        meta = ObjectMeta("bench", "uint8", (size,), 0)
        phases = {p: Phase(p) for p in ("store", "lookup", "load")}
        run_id = uuid.uuid4().hex[:8]
        total_rounds = warmup_rounds + rounds
        verified = 0
        for r in range(total_rounds):
            counted = r >= warmup_rounds
            label = f"round {r + 1}/{total_rounds}" + ("" if counted else " (warm-up)")
            keys = [f"bench-{run_id}-r{r}-{i}" for i in range(n)]
            fails = {"store": 0, "lookup": 0, "load": 0}

            def count_store(part: list[Any], res: list[Any], fails: dict[str, int] = fails) -> None:
                fails["store"] += sum(1 for x in res if x.status is not Status.OK)

            def count_lookup(part: list[Any], res: list[Any], fails: dict[str, int] = fails) -> None:
                fails["lookup"] += sum(1 for x in res if not x)

            def count_load(part: list[Any], res: list[Any], fails: dict[str, int] = fails) -> None:
                fails["load"] += sum(1 for x in res if x.status is not Status.HIT)

            progress.phase(f"{label}: store {n} x {size / MB:.3g} MB")
            items = [StoreItem(k, p, meta) for k, p in zip(keys, payloads, strict=True)]
            t_store, l_store = run_batches(adapter.submit_store, items, batch, in_flight, count_store)
            progress.update("lookup")
            t_look, l_look = run_batches(adapter.submit_lookup, keys, batch, in_flight, count_lookup)
            if cold:
                drop_cache([adapter.path_of(k) for k in keys])
            progress.update("load")
            for b in bufs:
                b.fill(0)
            reqs = [LoadRequest(k, _into(buf)) for k, buf in zip(keys, bufs, strict=True)]
            t_load, l_load = run_batches(adapter.submit_load, reqs, batch, in_flight, count_load)
            if verify:
                bad = [i for i in range(n) if not np.array_equal(bufs[i], payloads[i])]
                if bad:
                    raise L2BenchError(
                        f"verify: {len(bad)} of {n} objects loaded wrong bytes (first: key {keys[bad[0]]})"
                    )
                verified += n
            adapter.delete(keys)
            if any(fails.values()):
                progress.note(f"{label}: failures {fails} (see the adapter's log lines)")
            if counted:
                for name, t, lat in (
                    ("store", t_store, l_store),
                    ("lookup", t_look, l_look),
                    ("load", t_load, l_load),
                ):
                    phases[name].seconds.append(t)
                    phases[name].latencies.extend(lat)
                    phases[name].failures += fails[name]
        peer_runs: dict[str, list[float]] | None = None
        peer_what = ""
        if peer:
            progress.phase("peer: the same bytes without the adapter")
            if scheme == "fs":
                peer_runs = fs_peer(adapter.root, payloads, adapter.fsync, cold, rounds)
                peer_what = (
                    "raw sequential os.write"
                    + (" + fsync" if adapter.fsync else "")
                    + " / os.readv, same dir"
                )
            elif scheme in ("redis", "rediss", "redis+cluster"):
                peer_runs = redis_peer(adapter, payloads, batch, rounds)
                peer_what = "plain redis-py pipelined SET / GET"
            elif scheme == "s3":
                peer_runs = s3_peer(adapter, payloads, rounds)
                peer_what = "plain boto3 put_object / get_object"
        snap = adapter.metrics.snapshot()
    finally:
        adapter.close()
    doc: dict[str, Any] = {
        "adapter": adapter.name,
        "params": {
            "num_keys": n,
            "object_size": size,
            "in_flight": in_flight,
            "batch_size": batch,
            "rounds": rounds,
            "warmup_rounds": warmup_rounds,
            "cold": bool(cold),
        },
        "checksum": {1: "xxh3_64", 2: "crc32"}.get(adapter.algorithm, str(adapter.algorithm)),
        "verified_objects": verified,
        "results": {name: p.summary(nbytes, n) for name, p in phases.items()},
        "adapter_counters": snap.counts,
    }
    if peer_runs is not None:
        pw, pr = statistics.median(peer_runs["write"]), statistics.median(peer_runs["read"])
        doc["peer"] = {
            "what": peer_what,
            "write_mb_per_s": peer_runs["write"],
            "read_mb_per_s": peer_runs["read"],
        }
        doc["ratios"] = {
            "store_vs_peer_write": doc["results"]["store"]["mb_per_s"]["median"] / pw,
            "load_vs_peer_read": doc["results"]["load"]["mb_per_s"]["median"] / pr,
        }
    from lmcache_core.bench.host import host_info

    doc["host"] = host_info().to_json()
    doc["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return doc
