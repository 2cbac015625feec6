"""``lmcache-core status``: the cache server's status as tables (or ``--json``).

Asks the server over its own socket (the ``stats`` request), so it needs no HTTP side; shows the
same document ``/status`` serves: engines connected, L1 use per salt tag, tiers and their health,
hit rates. Exit status 2 when the server does not answer.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from lmcache_core.cli.args import add_output_flags
from lmcache_core.cli.errors import CLIError
from lmcache_core.cli.table import format_table

NAME = "status"
HELP = "the cache server's engines, L1 per salt, tiers and hit rates"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", help="ipc:///path or tcp://host:port (default: the serve default)")
    parser.add_argument("--auth-key-file", help="shared key file, for a server off 127.0.0.1")
    parser.add_argument(
        "--timeout", type=float, default=3.0, help="seconds to wait for the answer (default 3)"
    )
    add_output_flags(parser, progress=False)


def _mib(n: Any) -> str:
    return "-" if n is None else f"{n / 2**20:.1f}"


def render(doc: dict[str, Any]) -> str:
    s, l1, hits = doc["server"], doc["l1"], doc["hits"]
    out = [
        f"server {s['name']} (pid {s['pid']}, protocol {s['protocol']}) on {s['listen']}, up {s['uptime_seconds']:.0f} s",
        "",
        format_table(
            ["session", "engine", "model", "rank", "leases", "idle s"],
            [
                [
                    e["session"],
                    e["engine"] or e["client"],
                    e["model_id"],
                    f"{e['rank']}/{e['world_size']}",
                    e["leases"],
                    f"{e['idle_seconds']:.1f}",
                ]
                for e in doc["engines"]
            ],
        ),
        "",
        format_table(
            ["L1", "MiB"],
            [
                ["capacity", _mib(l1["capacity_bytes"])],
                ["used", _mib(l1["used_bytes"])],
                ["entries", _mib(l1["entry_bytes"])],
                ["leased", _mib(l1["leased_bytes"])],
            ],
        ),
        "",
        format_table(
            ["salt tag", "MiB", "leased MiB", "quota MiB"],
            [
                [t, _mib(v["bytes"]), _mib(v["leased_bytes"]), _mib(v["quota_bytes"])]
                for t, v in doc["salts"].items()
            ],
        ),
        "",
        format_table(
            ["tier", "healthy", "ops"],
            [[t["name"], "yes" if t["healthy"] else "NO", sum(t["counts"].values())] for t in doc["tiers"]],
        ),
        "",
        format_table(
            ["hits", "value"],
            [
                ["lookups", hits["lookups"]],
                ["hit rate", f"{hits['hit_rate']:.3f}"],
                ["hit tokens", hits["hit_tokens"]],
                ["L2 hit tokens", hits["l2_hit_tokens"]],
                ["stored chunks", hits["stored_chunks"]],
                ["retrieved chunks", hits["retrieved_chunks"]],
                ["leases expired", hits["leases_expired"]],
            ],
        ),
    ]
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    from lmcache_core.server.auth import read_key_file
    from lmcache_core.server.client import CacheClient, ServerError, ServerUnavailable
    from lmcache_core.server.config import default_listen

    try:
        key = read_key_file(args.auth_key_file) if args.auth_key_file else None
        client = CacheClient(
            args.server or default_listen(),
            auth_key=key,
            timeout=args.timeout,
            heartbeat=False,
            name="lmcache-core status",
        )
    except ValueError as e:
        raise CLIError(str(e)) from None
    try:
        doc = client.stats()
    except (ServerUnavailable, ServerError) as e:
        raise CLIError(f"server: {e}") from None
    finally:
        client.close()
    print(json.dumps(doc, indent=2) if args.json else render(doc))
    return 0
