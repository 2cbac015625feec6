"""``lmcache-core serve``: run the node's cache server until SIGTERM (or SIGINT).

Settings: flags > ``LMCACHE_SERVER_*`` > ``--config`` TOML > defaults
(:mod:`lmcache_core.server.config`). The effective configuration is logged at start. On SIGTERM
the server stops answering, drains write-behind for up to ``drain_seconds``, removes its socket
and shared memory, and exits 0 (1 when write-behind could not be drained in time).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
from typing import Any

from lmcache_core.cli.args import byte_size, positive_int
from lmcache_core.cli.errors import CLIError

NAME = "serve"
HELP = "run the node's cache server (shared-memory L1, L2 tiers) for every engine on this host"

logger = logging.getLogger("lmcache_core.server")


def _seconds(text: str) -> float:
    from lmcache_core.units import parse_seconds

    try:
        value = parse_seconds("seconds", text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, given {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="TOML", help="settings file ([server] table)")
    parser.add_argument(
        "--listen",
        help="ipc:///path/server.sock (default: in $XDG_RUNTIME_DIR/lmcache) or tcp://127.0.0.1:PORT",
    )
    parser.add_argument("--http", help="host:port of /healthz /readyz /metrics /status (default: off)")
    parser.add_argument("--auth-key-file", help="shared key file (mode 0600); required off 127.0.0.1")
    parser.add_argument("--l1-bytes", type=byte_size("--l1-bytes"), help="shared-memory L1 budget, e.g. 64G")
    parser.add_argument("--shm-dir", help="tmpfs directory of the L1 segments (default /dev/shm)")
    parser.add_argument("--chunk-size", type=positive_int, help="tokens per chunk (default 256)")
    parser.add_argument("--l2-urls", help="L2 tiers, nearest first, comma separated (fs:///..., redis://...)")
    parser.add_argument(
        "--lease-seconds", type=_seconds, help="silence after which a client's leases are reclaimed"
    )
    parser.add_argument("--heartbeat-seconds", type=_seconds, help="how often clients heartbeat")
    parser.add_argument("--drain-seconds", type=_seconds, help="how long SIGTERM waits for write-behind")
    parser.add_argument("--max-message-bytes", type=byte_size("--max-message-bytes"), help="largest request")


def config_from_args(args: argparse.Namespace) -> Any:
    from lmcache_core.server.config import load_config

    flags = {
        k: getattr(args, k)
        for k in (
            "listen",
            "http",
            "auth_key_file",
            "l1_bytes",
            "shm_dir",
            "chunk_size",
            "l2_urls",
            "lease_seconds",
            "heartbeat_seconds",
            "drain_seconds",
            "max_message_bytes",
        )
    }
    try:
        return load_config(args.config, **flags)
    except ValueError as e:
        raise CLIError(str(e)) from None


def run(args: argparse.Namespace) -> int:
    from lmcache_core.server.server import CacheServer

    config = config_from_args(args)
    logging.getLogger("lmcache_core.server").setLevel(min(logging.INFO, logging.getLogger().level))
    logger.info("configuration: %s", json.dumps(config.describe(), sort_keys=True))
    try:
        server = CacheServer(config)
    except (ValueError, MemoryError) as e:
        raise CLIError(str(e)) from None
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: server.stop())
    if server.service.stale_removed:
        logger.info("removed %d stale segments", len(server.service.stale_removed))
    print(
        f"lmcache-core serve: listening on {server.endpoint}"
        + (f", http {server.http.address}" if server.http else ""),
        flush=True,
    )
    try:
        server.serve_forever()
    finally:
        drained = server.close()
    logger.info("stopped (write-behind %s)", "drained" if drained else "NOT drained")
    return 0 if drained else 1
