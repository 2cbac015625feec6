"""``lmcache-core info``: every backend found, which one is selected and why, the host, and
every paged KV layout of the registry with its named axes and plane kinds.

Works when a plugin is broken: a probe that raises or a plugin that fails to load is shown with
its reason, never as a crash. Available backends are loaded to read their capabilities; the
discovery and selection warnings those steps log are not repeated on stderr (the report already
shows them) unless ``-v`` is given.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from lmcache_core.bench.host import host_info
from lmcache_core.cli.table import format_table

if TYPE_CHECKING:
    from lmcache_core.discovery import DiscoveredBackend
    from lmcache_core.plugin_api import Capabilities

NAME = "info"
HELP = "backends found, the one selected and why, torch and host, the KV layouts"

_QUIET_LOGGERS = ("lmcache_core.discovery", "lmcache_core.selection")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default=None,
        help="torch device type to select a backend for (default: the current accelerator, else cpu)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")


@contextlib.contextmanager
def _quiet(enabled: bool) -> Iterator[None]:
    """Raise the discovery/selection loggers to ERROR while ``enabled``."""
    loggers = [logging.getLogger(n) for n in _QUIET_LOGGERS]
    saved = [lg.level for lg in loggers]
    if enabled:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, saved, strict=True):
            lg.setLevel(level)


def _names(values: frozenset[str]) -> str | list[str]:
    return "all" if "*" in values else sorted(values)


def _capabilities_json(caps: Capabilities) -> dict[str, Any]:
    return {
        "status": caps.status,
        "layouts": _names(caps.layouts),
        "dtypes": _names(caps.dtypes),
        "pinned_host": caps.pinned_host,
        "extra": dict(caps.extra),
    }


def _backend_entry(found: DiscoveredBackend) -> dict[str, Any]:
    from lmcache_core.selection import load_backend

    entry: dict[str, Any] = {
        "name": found.name,
        "distribution": found.distribution,
        "entry_point": found.target,
        "available": found.available,
        "reason": found.reason,
        "probe_error": found.error,
        "priority": found.probe.priority if found.probe else None,
        "device_types": list(found.probe.device_types) if found.probe else None,
        "array_types": list(found.probe.array_types) if found.probe else None,
        "plugin": found.probe.plugin if found.probe else None,
        "capabilities": None,
        "load_error": None,
    }
    if found.available:
        try:
            entry["capabilities"] = _capabilities_json(load_backend(found).capabilities)
        except Exception as e:  # reported in the output: info must survive any broken plugin
            entry["load_error"] = f"{type(e).__name__}: {e}"
    return entry


def _accelerator() -> dict[str, Any]:
    import torch

    accel = getattr(torch, "accelerator", None)
    if accel is None or not accel.is_available():
        return {"available": False, "type": None, "count": 0}
    current = accel.current_accelerator()
    return {
        "available": True,
        "type": None if current is None else current.type,
        "count": int(accel.device_count()),
    }


def _layouts() -> list[dict[str, Any]]:
    """Every registry layout: its tensors' named axes, variants, whether shape alone detects it,
    and the plane kinds of a small example (metadata only: bf16, 16-token blocks, 64 channels)."""
    import torch

    from lmcache_core.layout_registry import LAYOUT_KINDS, allocate_example, detect_layout

    out = []
    for name, entry in LAYOUT_KINDS.items():
        kinds: list[str] = []
        for variant in (None, *entry.variants):
            heads = 1 if entry.mla or variant == "mla" else 2
            tensors, hints = allocate_example(
                name, num_layers=1, num_blocks=1, block_size=1 if name == "sglang" else 16,
                num_kv_heads=heads, head_size=64,
                dtype=torch.bfloat16, device="meta", variant=variant,
            )  # fmt: skip
            layout = detect_layout(tensors, hints)
            text = ", ".join(f"{k.name} ({k.heads} x {k.width})" for k in layout.kinds)
            kinds.append(f"{variant}: {text}" if variant else text)
        out.append(
            {
                "name": name,
                "axes": entry.axes,
                "variants": list(entry.variants),
                "detected": "by shape" if entry.auto else "when named (LayoutHints(kind=...))",
                "plane_kinds": kinds,
            }
        )
    return out


def collect(device: str | None = None, quiet: bool = True) -> dict[str, Any]:
    """The whole report as a JSON-ready dict."""
    import torch

    import lmcache_core
    from lmcache_core.discovery import discover_backends
    from lmcache_core.plugin_api import BACKEND_ENV, BACKENDS_GROUP
    from lmcache_core.selection import select_backend

    device = device or lmcache_core._default_device_type()
    with _quiet(quiet):
        backends = [_backend_entry(d) for d in discover_backends()]
        selected: dict[str, Any] = {"device": device, "backend": None, "why": None, "error": None}
        try:
            selection = select_backend(device)
            selected.update(
                backend=selection.backend.name,
                why=selection.why,
                capabilities=_capabilities_json(selection.backend.capabilities),
            )
        except (ValueError, RuntimeError) as e:
            selected["error"] = f"{type(e).__name__}: {e}"
    host = host_info()
    return {
        "lmcache_core": lmcache_core.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "host": host.to_json(),
        "host_line": host.describe(),
        "accelerator": _accelerator(),
        "env": {BACKEND_ENV: os.environ.get(BACKEND_ENV)},
        "entry_point_group": BACKENDS_GROUP,
        "backends": backends,
        "selected": selected,
        "layouts": _layouts(),
    }


def _capability_lines(entry: dict[str, Any]) -> list[str]:
    if entry["probe_error"]:
        return []
    if entry["load_error"]:
        return [f"load failed: {entry['load_error']}"]
    caps = entry["capabilities"]
    if caps is None:
        return ["capabilities: - (not loaded: unavailable)"]
    layouts = caps["layouts"] if caps["layouts"] == "all" else ", ".join(caps["layouts"]) or "none"
    dtypes = caps["dtypes"] if caps["dtypes"] == "all" else ", ".join(caps["dtypes"]) or "none"
    return [
        f"capabilities: {caps['status']}",
        f"own kernels: layouts {layouts}; dtypes {dtypes}; pinned host memory "
        f"{'yes' if caps['pinned_host'] else 'no'}",
    ]


def _status(entry: dict[str, Any]) -> str:
    if entry["probe_error"]:
        return "probe failed"
    if entry["load_error"]:
        return "load failed"
    return "loaded" if entry["capabilities"] is not None else "unavailable"


def render(report: dict[str, Any]) -> str:
    """The report as text: a summary table, then each backend's reason and capabilities."""
    accel = report["accelerator"]
    env = next(iter(report["env"].items()))
    lines = [
        f"lmcache-core {report['lmcache_core']}, torch {report['torch']}, python {report['python']}",
        f"host: {report['host_line']}",
        "accelerator: " + (f"{accel['type']} x{accel['count']}" if accel["available"] else "none"),
        f"{env[0]}: {env[1] if env[1] is not None else '(unset)'}",
        "",
        f"backends ({len(report['backends'])} found in entry-point group {report['entry_point_group']}):",
    ]
    rows = [
        [
            b["name"],
            b["distribution"] or "-",
            "yes" if b["available"] else "no",
            "-" if b["priority"] is None else b["priority"],
            "-" if b["device_types"] is None else ",".join(b["device_types"]),
            "-" if b["array_types"] is None else ",".join(b["array_types"]),
            _status(b),
        ]
        for b in report["backends"]
    ]
    lines.append(
        format_table(
            ["name", "distribution", "available", "priority", "devices", "arrays", "status"],
            rows,
            indent="  ",
        )
    )
    for b in report["backends"]:
        lines += ["", f"  {b['name']}: {b['reason']}"]
        lines += [f"    {text}" for text in _capability_lines(b)]
    sel = report["selected"]
    lines.append("")
    if sel["error"]:
        lines.append(f"selected for {sel['device']!r}: none: {sel['error']}")
    else:
        lines.append(f"selected for {sel['device']!r}: {sel['backend']} ({sel['why']})")
    lines += ["", f"layouts ({len(report['layouts'])} in the registry; axes of the engine's tensors):"]
    for entry in report["layouts"]:
        lines.append(f"  {entry['name']}: {entry['axes']}")
        lines.append(f"    plane kinds: {'; '.join(entry['plane_kinds'])}; detected {entry['detected']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    report = collect(args.device, quiet=getattr(args, "verbose", 0) == 0)
    if args.json:
        print(json.dumps({k: v for k, v in report.items() if k != "host_line"}, indent=2))
    else:
        print(render(report))
    return 0 if report["selected"]["error"] is None else 1
