"""L2 URLs: ``scheme://netloc/path?param=value&...``, parsed once, parameters typed and checked.

Examples: ``fs:///mnt/kv?budget=200G``, ``redis://127.0.0.1:6379/0``,
``redis+cluster://10.0.0.5:7000``, ``s3://bucket/prefix?endpoint_url=http://127.0.0.1:9000``.
Every adapter declares the parameters it knows; an unknown one is a ValueError listing them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from lmcache_core.units import parse_bytes

T = TypeVar("T")

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class L2URL:
    """A parsed L2 URL. ``redacted`` is the URL with any password replaced by ``***``."""

    def __init__(self, url: str) -> None:
        if not isinstance(url, str) or "://" not in url:
            raise ValueError(f"url: expected an L2 URL like fs:///path or redis://host:port/0, given {url!r}")
        try:
            parts = urlsplit(url)
        except ValueError as e:
            raise ValueError(f"url: expected an L2 URL, given {url!r} ({e})") from None
        self.text = url
        self.scheme = parts.scheme.lower()
        self.netloc = parts.netloc
        self.hostname = parts.hostname
        self.port = url_port(f"url {self.redacted_text(parts.password, url)}: port", parts)
        self.username = parts.username
        self.password = parts.password
        self.path = parts.path
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        self.params: dict[str, str] = {}
        for k, v in pairs:
            if k in self.params:
                raise ValueError(f"url: parameter {k!r} given twice in {self.redacted}")
            self.params[k] = v
        self._used: set[str] = set()

    @staticmethod
    def redacted_text(password: str | None, text: str) -> str:
        return text if password is None else text.replace(password, "***", 1)

    @property
    def redacted(self) -> str:
        if self.password is None:
            return self.text
        host = self.netloc.rsplit("@", 1)[1]
        return self.text.replace(self.netloc, f"{self.username or ''}:***@{host}", 1)

    @property
    def base(self) -> str:
        """The URL without its query (what a client library is given)."""
        return self.text.split("?", 1)[0].split("#", 1)[0]

    def _get(self, name: str, conv: Callable[[str], T], default: T, expected: str) -> T:
        self._used.add(name)
        raw = self.params.get(name)
        if raw is None:
            return default
        try:
            return conv(raw)
        except ValueError:
            raise ValueError(
                f"{self.redacted}: parameter {name}: expected {expected}, given {raw!r}"
            ) from None

    def text_param(self, name: str, default: str) -> str:
        return self._get(name, str, default, "text")

    def int_param(self, name: str, default: int, minimum: int = 0) -> int:
        value = self._get(name, int, default, "an integer")
        if value < minimum:
            raise ValueError(f"{self.redacted}: parameter {name}: expected >= {minimum}, given {value}")
        return value

    def float_param(self, name: str, default: float, minimum: float = 0.0, positive: bool = False) -> float:
        """A finite number >= ``minimum`` (> 0 when ``positive``); inf and nan are refused."""
        value = self._get(name, float, default, "a number")
        if not math.isfinite(value):
            raise ValueError(f"{self.redacted}: parameter {name}: expected a finite number, given {value}")
        if value < minimum or (positive and value <= 0):
            bound = "> 0" if positive else f">= {minimum}"
            raise ValueError(f"{self.redacted}: parameter {name}: expected {bound}, given {value}")
        return value

    def bytes_param(self, name: str, default: int, allow_zero: bool = False) -> int:
        """A byte size like ``200G``; ``0`` too when ``allow_zero`` (meaning "none")."""
        self._used.add(name)
        raw = self.params.get(name)
        if raw is None:
            return default
        if allow_zero and raw.strip() == "0":
            return 0
        return parse_bytes(f"{self.redacted}: parameter {name}", raw)

    def bool_param(self, name: str, default: bool) -> bool:
        def conv(raw: str) -> bool:
            if raw.lower() in _TRUE:
                return True
            if raw.lower() in _FALSE:
                return False
            raise ValueError(raw)

        return self._get(name, conv, default, "one of 1/0/true/false/yes/no")

    def check_unused(self, extra_known: Iterable[str] = ()) -> None:
        """ValueError naming any parameter no adapter read, with the valid ones."""
        known = self._used | set(extra_known)
        unknown = sorted(set(self.params) - known)
        if unknown:
            raise ValueError(
                f"{self.redacted}: unknown parameter(s) {', '.join(unknown)}; "
                f"valid for {self.scheme}: {', '.join(sorted(known))}"
            )

    def __repr__(self) -> str:
        return f"L2URL({self.redacted!r})"


def url_port(setting: str, parts: Any) -> int | None:
    """The port of a ``urlsplit`` result; ValueError naming ``setting`` when it is not 1..65535."""
    try:
        port = parts.port
    except ValueError:
        raw = parts.netloc.rsplit("@", 1)[-1].rsplit(":", 1)[-1]
        raise ValueError(f"{setting}: expected an integer in 1..65535, given {raw!r}") from None
    if port == 0:
        raise ValueError(f"{setting}: expected an integer in 1..65535, given 0")
    return port


def split_urls(value: Any) -> tuple[str, ...]:
    """``"fs:///a, redis://h:1/0"`` or a sequence of URLs -> tuple of URLs (comma/space separated)."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(u for u in value.replace(",", " ").split() if u)
    if isinstance(value, (list, tuple)):
        for u in value:
            if not isinstance(u, str):
                raise TypeError(f"l2_urls: expected strings, given {type(u).__name__} in {value!r}")
        return tuple(value)
    raise TypeError(f"l2_urls: expected a string or a sequence of strings, given {type(value).__name__}")
