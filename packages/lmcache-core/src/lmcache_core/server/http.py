"""The server's HTTP side: four read-only GET endpoints on a small stdlib server.

``/healthz``  200 while the process serves requests (its loop is running)
``/readyz``   200 once the socket is bound and the loop runs, 503 while starting or stopping
``/metrics``  Prometheus text format (version 0.0.4) of the status document's numbers
``/status``   the status document as JSON (:meth:`lmcache_core.server.service.CacheService.status`)

Nothing else: no endpoint takes input, runs code, or shows the environment or the key. Anything
but GET of these paths is 404/405. Served by one daemon thread (``ThreadingHTTPServer``).
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lmcache_core.server.server import CacheServer

logger = logging.getLogger(__name__)


def prometheus_text(status: dict[str, Any]) -> str:
    """The numbers of a status document as Prometheus metrics (``lmcache_server_*``)."""
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float]]) -> None:
        full = f"lmcache_server_{name}"
        lines.append(f"# HELP {full} {help_text}")
        lines.append(f"# TYPE {full} {kind}")
        for labels, value in samples:
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
            lines.append(f"{full}{{{text}}} {float(value)!r}" if text else f"{full} {float(value)!r}")

    l1 = status["l1"]
    for k in ("capacity_bytes", "used_bytes", "entry_bytes", "leased_bytes", "entries", "shm_bytes"):
        metric(f"l1_{k}", "gauge", f"L1 {k.replace('_', ' ')}", [({}, l1[k])])
    metric("l1_evictions_total", "counter", "L1 chunks evicted", [({}, l1["evictions"])])
    metric("engines", "gauge", "connected sessions", [({}, len(status["engines"]))])
    salts = status["salts"]
    metric(
        "salt_bytes", "gauge", "L1 bytes per salt tag", [({"salt": t}, v["bytes"]) for t, v in salts.items()]
    )
    hits = status["hits"]
    for k in (
        "lookups",
        "lookup_tokens",
        "hit_tokens",
        "l2_hit_tokens",
        "stored_chunks",
        "stored_bytes",
        "retrieved_chunks",
        "retrieved_bytes",
        "retrieved_l2_chunks",
        "leases_expired",
        "sessions_expired",
    ):
        metric(f"{k}_total", "counter", k.replace("_", " "), [({}, hits[k])])
    metric("hit_rate", "gauge", "hit tokens / looked-up tokens since start", [({}, hits["hit_rate"])])
    metric(
        "errors_total",
        "counter",
        "error replies by code",
        [({"code": c}, n) for c, n in hits["errors"].items()],
    )
    metric(
        "tier_healthy",
        "gauge",
        "1 while an L2 tier is available",
        [({"tier": t["name"]}, t["healthy"]) for t in status["tiers"]],
    )
    tier_counts: list[tuple[dict[str, str], float]] = []
    for t in status["tiers"]:
        tier_counts += [({"tier": t["name"], "counter": c}, n) for c, n in t["counts"].items()]
    metric("tier_ops_total", "counter", "L2 tier counters", tier_counts)
    return "\n".join(lines) + "\n"


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class StatusHTTPServer:
    """Serves the endpoints above for ``server`` on ``address`` (``host:port``; port 0 picks one)."""

    def __init__(self, address: str, server: CacheServer) -> None:
        host, _, port = address.rpartition(":")
        owner = server

        class Handler(BaseHTTPRequestHandler):
            server_version = "lmcache-core"
            sys_version = ""

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    ok = not owner.stopping
                    self._send(200 if ok else 503, "text/plain", b"ok\n" if ok else b"stopping\n")
                elif path == "/readyz":
                    ok = owner.ready.is_set() and not owner.stopping
                    self._send(200 if ok else 503, "text/plain", b"ready\n" if ok else b"not ready\n")
                elif path == "/status":
                    body = json.dumps(owner.service.status(), indent=1).encode()
                    self._send(200, "application/json", body)
                elif path == "/metrics":
                    body = prometheus_text(owner.service.status()).encode()
                    self._send(200, "text/plain; version=0.0.4", body)
                else:
                    self._send(404, "text/plain", b"not found: /healthz /readyz /metrics /status\n")

            def _refuse(self) -> None:
                self._send(405, "text/plain", b"method not allowed (GET only)\n")

            do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                logger.debug("http: " + format, *args)

        self._httpd = ThreadingHTTPServer((host.strip("[]") or "127.0.0.1", int(port)), Handler)
        self._httpd.daemon_threads = True
        bound_host, bound_port = self._httpd.server_address[:2]
        self.address = f"{bound_host!s}:{bound_port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="lmcache-http", daemon=True)
        self._thread.start()
        logger.info("http on %s", self.address)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)
