"""Settings of ``lmcache-core serve``: defaults < TOML file < ``LMCACHE_*`` environment < flags.

Every field of :class:`ServerConfig` has an environment variable ``LMCACHE_SERVER_<FIELD>``
(``LMCACHE_SERVER_L1_BYTES=64G``) and a TOML key of the same name in a ``[server]`` table (or at
the top level), e.g.::

    [server]
    listen = "ipc:///run/lmcache/server.sock"
    http = "127.0.0.1:9310"
    l1_bytes = "64G"
    l2_urls = ["fs:///mnt/nvme/kv?budget=2T"]
    [server.salt_quota_bytes]
    "*" = "8G"            # any salt not listed, the unsalted one included
    "tenant-a" = "32G"

``salt_quota_bytes`` caps a salt's L1 bytes (by the salt's text; the server only ever shows its
hash tag). Sizes take suffixes (``512M``, ``4G``); seconds are plain numbers.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import tomllib

from lmcache_core.server.protocol import DEFAULT_MAX_MESSAGE_BYTES
from lmcache_core.storage.url import split_urls
from lmcache_core.tokens import DEFAULT_CHUNK_SIZE
from lmcache_core.units import parse_bytes, parse_seconds

ENV_PREFIX = "LMCACHE_SERVER_"


def default_runtime_dir() -> str:
    """``$XDG_RUNTIME_DIR/lmcache`` when set, else ``/tmp/lmcache-<uid>``."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    return os.path.join(base, "lmcache") if base else f"/tmp/lmcache-{os.getuid()}"


def default_listen() -> str:
    """A Unix socket in the runtime directory (made mode 0700; the socket is made 0600)."""
    return f"ipc://{os.path.join(default_runtime_dir(), 'server.sock')}"


_SIZES = ("l1_bytes", "l2_queue_bytes", "segment_bytes", "max_message_bytes")
_INTS = ("chunk_size", "l2_queue_items", "l2_batch", "l2_workers")
_SECONDS = ("heartbeat_seconds", "lease_seconds", "drain_seconds")
_BOOLS = ("save_partial_chunks", "l2_prefetch")


@dataclass(frozen=True)
class ServerConfig:
    """``listen``: ``ipc:///path`` or ``tcp://host:port`` (an address other than 127.0.0.1
    needs ``auth_key_file``). ``http``: ``host:port`` of ``/healthz /readyz /metrics /status``
    ("" = off). ``l1_bytes``: shared-memory L1 budget; ``segment_bytes``: size of each segment
    (0: min(l1_bytes, 1 GiB)). ``l2_*``: as :class:`~lmcache_core.config.CacheEngineConfig`.
    ``heartbeat_seconds``: how often clients must be heard from; ``lease_seconds``: silence
    after which a client's leases are reclaimed. ``drain_seconds``: how long SIGTERM waits for
    write-behind. ``salt_quota_bytes``: L1 bytes per salt (``"*"``: every other salt).
    ``gpu_backend``: the package of a GPU backend (``lmcache_cuda``, ``lmcache_rocm``) whose
    kernels serve workers' IPC registrations (``register_ipc``); "" = none (shared memory only)."""

    listen: str = field(default_factory=default_listen)
    http: str = ""
    auth_key_file: str = ""
    l1_bytes: int = 4 * 2**30
    segment_bytes: int = 0
    shm_dir: str = "/dev/shm"
    chunk_size: int = DEFAULT_CHUNK_SIZE
    save_partial_chunks: bool = True
    l2_urls: tuple[str, ...] = ()
    l2_queue_bytes: int = 0
    l2_queue_items: int = 1024
    l2_batch: int = 8
    l2_workers: int = 2
    l2_prefetch: bool = True
    heartbeat_seconds: float = 1.0
    lease_seconds: float = 5.0
    drain_seconds: float = 30.0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    salt_quota_bytes: Mapping[str, int] = field(default_factory=dict)
    gpu_backend: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "l2_urls", split_urls(self.l2_urls))
        if not isinstance(self.listen, str) or not self.listen.startswith(("ipc://", "tcp://")):
            raise ValueError(f"listen: expected ipc:///path or tcp://host:port, given {self.listen!r}")
        if self.http and (":" not in self.http or not self.http.rsplit(":", 1)[1].isdigit()):
            raise ValueError(f"http: expected host:port (or empty: off), given {self.http!r}")
        for name in (
            "l1_bytes",
            "chunk_size",
            "l2_queue_items",
            "l2_batch",
            "l2_workers",
            "max_message_bytes",
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name}: expected a positive int, given {v!r}")
        for name in ("segment_bytes", "l2_queue_bytes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name}: expected a non-negative int (0: auto), given {v!r}")
        for name in _SECONDS:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{name}: expected a positive number of seconds, given {v!r}")
        if self.lease_seconds <= self.heartbeat_seconds:
            raise ValueError(
                f"lease_seconds: expected more than heartbeat_seconds ({self.heartbeat_seconds}), "
                f"given {self.lease_seconds}"
            )
        if not isinstance(self.gpu_backend, str) or (
            self.gpu_backend and not all(part.isidentifier() for part in self.gpu_backend.split("."))
        ):
            raise ValueError(
                f"gpu_backend: expected a package name such as 'lmcache_cuda' (or empty: none), "
                f"given {self.gpu_backend!r}"
            )
        quotas = {}
        for salt, v in dict(self.salt_quota_bytes).items():
            if isinstance(v, str):
                v = parse_bytes(f"salt_quota_bytes[{salt!r}]", v)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"salt_quota_bytes[{salt!r}]: expected a positive byte count, given {v!r}")
            quotas[str(salt)] = v
        object.__setattr__(self, "salt_quota_bytes", quotas)

    @property
    def effective_segment_bytes(self) -> int:
        return self.segment_bytes or min(self.l1_bytes, 2**30)

    @property
    def effective_queue_bytes(self) -> int:
        return self.l2_queue_bytes or max(1, self.l1_bytes // 4)

    def describe(self) -> dict[str, Any]:
        """The effective settings, for the start-up log and ``/status`` (salts not shown: their
        count only; the key file's path, never its content)."""
        out = dataclasses.asdict(self)
        out["salt_quota_bytes"] = {
            "salts": len(self.salt_quota_bytes),
            "default": self.salt_quota_bytes.get("*"),
        }
        out["segment_bytes"] = self.effective_segment_bytes
        out["l2_queue_bytes"] = self.effective_queue_bytes
        out["l2_urls"] = list(self.l2_urls)
        return out


def _convert(name: str, raw: Any, label: str) -> Any:
    """A value of field ``name`` read as ``label`` (text from the environment, or TOML)."""
    if name in _SIZES:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        text = str(raw).strip()
        return 0 if text == "0" else parse_bytes(label, text)
    if name in _INTS:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return raw
        try:
            return int(str(raw))
        except ValueError:
            raise ValueError(f"{label}: expected an integer, given {raw!r}") from None
    if name in _SECONDS:
        return (
            float(raw)
            if isinstance(raw, (int, float)) and not isinstance(raw, bool)
            else parse_seconds(label, str(raw))
        )
    if name in _BOOLS:
        if isinstance(raw, bool):
            return raw
        text = str(raw).lower()
        if text not in ("0", "1", "true", "false", "yes", "no"):
            raise ValueError(f"{label}: expected one of 0/1/true/false/yes/no, given {raw!r}")
        return text in ("1", "true", "yes")
    if name == "l2_urls":
        return tuple(raw) if isinstance(raw, list) else raw
    if name == "salt_quota_bytes":
        if isinstance(raw, Mapping):
            return dict(raw)
        # environment: "salt=8G,*=4G"
        out = {}
        for part in str(raw).split(","):
            if part.strip():
                salt, sep, size = part.rpartition("=")
                if not sep:
                    raise ValueError(f"{label}: expected salt=SIZE pairs separated by commas, given {raw!r}")
                out[salt.strip()] = size.strip()
        return out
    if not isinstance(raw, str):
        raise ValueError(f"{label}: expected text, given {raw!r}")
    return raw


def load_config(
    toml_path: str | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> ServerConfig:
    """The effective :class:`ServerConfig`: defaults, then ``toml_path``, then ``LMCACHE_SERVER_*``
    variables, then ``overrides`` (the command line's flags; None values are ignored)."""
    names = {f.name for f in fields(ServerConfig)}
    values: dict[str, Any] = {}
    if toml_path:
        try:
            with open(toml_path, "rb") as fh:
                doc = tomllib.load(fh)
        except OSError as e:
            raise ValueError(f"config: cannot read {toml_path!r}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"config: {toml_path!r} is not valid TOML: {e}") from None
        table = doc.get("server", doc)
        unknown = sorted(set(table) - names - {"server"})
        if unknown:
            raise ValueError(
                f"config: unknown keys {unknown} in {toml_path!r}; expected some of {sorted(names)}"
            )
        for k, v in table.items():
            if k in names:
                values[k] = _convert(k, v, f"{toml_path}: {k}")
    env = os.environ if environ is None else environ
    for name in names:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = _convert(name, raw, ENV_PREFIX + name.upper())
    for k, v in overrides.items():
        if k not in names:
            raise ValueError(f"{k}: not a server setting; expected one of {sorted(names)}")
        if v is not None:
            values[k] = v
    return ServerConfig(**values)
