"""``lmcache-core bench l2``: store, lookup and load throughput and latency of one L2 adapter.

No engine is involved: the bench talks to the adapter the way the write-behind and prefetch
threads do (batches submitted with ``submit_*``, at most ``--in-flight`` batches outstanding).
Each round uses ``--num-keys`` fresh keys of ``--object-size`` bytes (random payload, the key
index written into its first bytes): it stores them, looks them up, loads them into
preallocated buffers, optionally checks every byte (``--verify``), then deletes them.
``--warmup-rounds`` run first and are not counted. Figures are medians over ``--rounds``
(min-max beside them); MB/s is payload bytes (1e6) per second of the phase's wall time; ops/s
is keys per second; latency is per key (its batch's time from submit to completion), p50 and
p99 over every key of every counted round.

In the same run it measures the peer a user would compare with, on the same bytes:

* ``fs://``: raw sequential write (+ fsync when the adapter fsyncs) and read of the same number
  of files of the same size in the same directory with plain ``os.write`` / ``os.readv``;
* ``redis://``: a plain redis-py client, pipelined SET then pipelined GET of the same values;
* ``s3://``: plain boto3 ``put_object`` / ``get_object`` in a loop.

``--cold`` (fs) writes back and drops the page cache of the files (``posix_fadvise
DONTNEED``) before each load and each peer read, so both read from the device.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any

from lmcache_core.cli.errors import CLIError
from lmcache_core.cli.progress import Progress
from lmcache_core.cli.table import format_table

NAME = "bench l2"
HELP = "store/lookup/load MB/s, ops/s and latency of an L2 adapter, next to a raw peer"

MB = 1e6


def _size(text: str) -> int:
    from lmcache_core.config import parse_bytes

    try:
        return parse_bytes("--object-size", text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, given {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, given {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, given {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, given {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", required=True, metavar="URL",
                        help="the tier to measure: fs:///path, redis://host:port/db, redis+cluster://host:port, "
                             "s3://bucket/prefix?endpoint_url=...")  # fmt: skip
    parser.add_argument("--num-keys", type=_positive, default=32, help="objects per round (default 32)")
    parser.add_argument("--object-size", type=_size, default=256 * 1024,
                        help="payload bytes per object, e.g. 256K or 32M (default 256K)")  # fmt: skip
    parser.add_argument("--in-flight", type=_positive, default=2,
                        help="batches outstanding at once, and the adapter's worker threads (default 2, as the engine's "
                             "l2_workers)")  # fmt: skip
    parser.add_argument("--batch-size", type=_positive, default=None,
                        help="keys per batch (default: num-keys / in-flight, rounded up)")  # fmt: skip
    parser.add_argument("--rounds", type=_positive, default=3, help="counted rounds (default 3)")
    parser.add_argument("--warmup-rounds", type=_count, default=1, help="uncounted rounds first (default 1)")
    parser.add_argument(
        "--verify", action="store_true", help="check every loaded byte against what was stored"
    )
    parser.add_argument("--cold", action="store_true",
                        help="fs only: drop the files' page cache before loads and peer reads")  # fmt: skip
    parser.add_argument("--no-peer", action="store_true", help="skip the raw peer measurement")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    parser.add_argument("--no-progress", action="store_true", help="no progress line on stderr")


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
            raise CLIError(f"redis peer read {got} bytes, expected {nbytes}")
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
    try:
        return open_adapter(url)
    except (ValueError, ImportError) as e:
        raise CLIError(str(e)) from None


def measure(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    import numpy as np

    from lmcache_core.storage.adapter import LoadRequest, Status, StoreItem
    from lmcache_core.storage.object_format import ObjectMeta

    adapter = _open(args.adapter, args.in_flight)
    n, size = args.num_keys, args.object_size
    batch = args.batch_size or max(1, math.ceil(n / args.in_flight))
    nbytes = n * size
    try:
        scheme = adapter.url.scheme
        if args.cold and scheme != "fs":
            raise CLIError(f"--cold: only for fs:// adapters, given {scheme}://")
        payloads = make_payloads(n, size, seed=0)
        bufs = [np.empty(size, np.uint8) for _ in range(n)]
        meta = ObjectMeta("bench", "uint8", (size,), 0)
        phases = {p: Phase(p) for p in ("store", "lookup", "load")}
        run_id = uuid.uuid4().hex[:8]
        total_rounds = args.warmup_rounds + args.rounds
        verified = 0
        for r in range(total_rounds):
            counted = r >= args.warmup_rounds
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
            t_store, l_store = run_batches(adapter.submit_store, items, batch, args.in_flight, count_store)
            progress.update("lookup")
            t_look, l_look = run_batches(adapter.submit_lookup, keys, batch, args.in_flight, count_lookup)
            if args.cold:
                drop_cache([adapter.path_of(k) for k in keys])
            progress.update("load")
            for b in bufs:
                b.fill(0)
            reqs = [LoadRequest(k, _into(buf)) for k, buf in zip(keys, bufs, strict=True)]
            t_load, l_load = run_batches(adapter.submit_load, reqs, batch, args.in_flight, count_load)
            if args.verify:
                bad = [i for i in range(n) if not np.array_equal(bufs[i], payloads[i])]
                if bad:
                    raise CLIError(
                        f"--verify: {len(bad)} of {n} objects loaded wrong bytes (first: key {keys[bad[0]]})"
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
        peer: dict[str, list[float]] | None = None
        peer_what = ""
        if not args.no_peer:
            progress.phase("peer: the same bytes without the adapter")
            if scheme == "fs":
                peer = fs_peer(adapter.root, payloads, adapter.fsync, args.cold, args.rounds)
                peer_what = (
                    "raw sequential os.write"
                    + (" + fsync" if adapter.fsync else "")
                    + " / os.readv, same dir"
                )
            elif scheme in ("redis", "rediss", "redis+cluster"):
                peer = redis_peer(adapter, payloads, batch, args.rounds)
                peer_what = "plain redis-py pipelined SET / GET"
            elif scheme == "s3":
                peer = s3_peer(adapter, payloads, args.rounds)
                peer_what = "plain boto3 put_object / get_object"
        snap = adapter.metrics.snapshot()
    finally:
        adapter.close()
    doc: dict[str, Any] = {
        "adapter": adapter.name,
        "params": {
            "num_keys": n,
            "object_size": size,
            "in_flight": args.in_flight,
            "batch_size": batch,
            "rounds": args.rounds,
            "warmup_rounds": args.warmup_rounds,
            "cold": bool(args.cold),
        },
        "checksum": {1: "xxh3_64", 2: "crc32"}.get(adapter.algorithm, str(adapter.algorithm)),
        "verified_objects": verified,
        "results": {name: p.summary(nbytes, n) for name, p in phases.items()},
        "adapter_counters": snap.counts,
    }
    if peer is not None:
        pw, pr = statistics.median(peer["write"]), statistics.median(peer["read"])
        doc["peer"] = {"what": peer_what, "write_mb_per_s": peer["write"], "read_mb_per_s": peer["read"]}
        doc["ratios"] = {
            "store_vs_peer_write": doc["results"]["store"]["mb_per_s"]["median"] / pw,
            "load_vs_peer_read": doc["results"]["load"]["mb_per_s"]["median"] / pr,
        }
    return doc


def _fmt(stat: dict[str, float], digits: int = 1) -> str:
    return f"{stat['median']:.{digits}f} ({stat['min']:.{digits}f}-{stat['max']:.{digits}f})"


def render(doc: dict[str, Any]) -> str:
    p = doc["params"]
    lines = [
        f"adapter {doc['adapter']}  checksum {doc['checksum']}",
        f"{p['num_keys']} keys x {p['object_size']} B, in-flight {p['in_flight']}, batch {p['batch_size']}, "
        f"{p['rounds']} rounds (+{p['warmup_rounds']} warm-up){', cold reads' if p['cold'] else ''}"
        + (f", verified {doc['verified_objects']} objects" if doc["verified_objects"] else ""),
        "",
    ]
    rows = []
    for name, r in doc["results"].items():
        rows.append([name, _fmt(r["mb_per_s"]), _fmt(r["ops_per_s"], 0), f"{r['latency_ms']['p50']:.3f}",
                     f"{r['latency_ms']['p99']:.3f}", str(r["failures"])])  # fmt: skip
    lines.append(format_table(["op", "MB/s median (min-max)", "ops/s", "p50 ms", "p99 ms", "failures"], rows))
    if "peer" in doc:
        peer = doc["peer"]
        pw, pr = statistics.median(peer["write_mb_per_s"]), statistics.median(peer["read_mb_per_s"])
        lines += [
            "",
            f"peer: {peer['what']}",
            format_table(
                ["", "peer MB/s (median)", "ours / peer"],
                [
                    ["write", f"{pw:.1f}", f"{doc['ratios']['store_vs_peer_write']:.2f}x"],
                    ["read", f"{pr:.1f}", f"{doc['ratios']['load_vs_peer_read']:.2f}x"],
                ],
            ),
        ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from lmcache_core.cli.host import host_info

    progress = Progress(
        args.warmup_rounds + args.rounds + (0 if args.no_peer else 1), enabled=not args.no_progress
    )
    try:
        doc = measure(args, progress)
    finally:
        progress.close()
    doc["host"] = host_info().to_json()
    doc["date"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(render(doc))
    return 0
