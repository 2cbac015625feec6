"""``lmcache-core bench l2``: store, lookup and load throughput and latency of one L2 adapter.

Parses the options, calls :func:`lmcache_core.bench.l2.measure` (what is measured and how: see
that module) and prints its document as tables or JSON. Exit status 2 for a bad option, an
adapter that cannot open, or wrong bytes found by ``--verify`` or the peer.
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any

from lmcache_core.cli.args import add_output_flags, byte_size, count, positive_int
from lmcache_core.cli.table import format_table

NAME = "bench l2"
HELP = "store/lookup/load MB/s, ops/s and latency of an L2 adapter, next to a raw peer"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", required=True, metavar="URL",
                        help="the tier to measure: fs:///path, redis://host:port/db, redis+cluster://host:port, "
                             "s3://bucket/prefix?endpoint_url=...")  # fmt: skip
    parser.add_argument("--num-keys", type=positive_int, default=32, help="objects per round (default 32)")
    parser.add_argument("--object-size", type=byte_size("--object-size"), default=256 * 1024,
                        help="payload bytes per object, e.g. 256K or 32M (default 256K)")  # fmt: skip
    parser.add_argument("--in-flight", type=positive_int, default=2,
                        help="batches outstanding at once, and the adapter's worker threads (default 2, as the engine's "
                             "l2_workers)")  # fmt: skip
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="keys per batch (default: num-keys / in-flight, rounded up)")  # fmt: skip
    parser.add_argument("--rounds", type=positive_int, default=3, help="counted rounds (default 3)")
    parser.add_argument("--warmup-rounds", type=count, default=1, help="uncounted rounds first (default 1)")
    parser.add_argument(
        "--verify", action="store_true", help="check every loaded byte against what was stored"
    )
    parser.add_argument("--cold", action="store_true",
                        help="fs only: drop the files' page cache before loads and peer reads")  # fmt: skip
    parser.add_argument("--no-peer", action="store_true", help="skip the raw peer measurement")
    add_output_flags(parser)


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
    from lmcache_core.bench.l2 import L2BenchError, measure
    from lmcache_core.cli.args import bench_error
    from lmcache_core.cli.progress import Progress

    progress = Progress(enabled=not args.no_progress)
    try:
        doc = measure(
            args.adapter,
            num_keys=args.num_keys,
            object_size=args.object_size,
            in_flight=args.in_flight,
            batch_size=args.batch_size,
            rounds=args.rounds,
            warmup_rounds=args.warmup_rounds,
            verify=args.verify,
            cold=args.cold,
            peer=not args.no_peer,
            progress=progress,
        )
    except (ValueError, ImportError, L2BenchError) as e:
        raise bench_error(e, args) from None
    finally:
        progress.close()
    print(json.dumps(doc, indent=2) if args.json else render(doc))
    return 0
