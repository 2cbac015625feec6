#!/usr/bin/env python3
"""Fail when a vendor API appears in the neutral core (``packages/lmcache-core/src/lmcache_core``).

The core reaches devices only through ``torch.accelerator`` and device-type strings; vendor code
lives in the vendor packages (lmcache-cuda, -rocm, -ascend, -arm, -tpu). This lint keeps it so.

What counts as a use, in Python files (comments are ignored; docstrings and other strings are
checked only for the dynamic forms):

* code: ``torch.cuda``, ``torch.npu``, ``torch.xpu``, ``torch.mps``, ``torch_npu``, ``jax``,
  ``torch.version.hip``, and any ``hip``-prefixed name (``hipMemcpy``, ``hip_runtime``);
* strings that name a vendor module, as in ``importlib.import_module("torch_npu")``;
* ``getattr(torch, "cuda")`` (and ``"npu"``, ``"xpu"``, ``"mps"``).

In native sources (``.h .hpp .c .cc .cpp .cu .cuh``; ``//`` comments ignored): CUDA/HIP runtime
names and headers (``cudaMemcpy``, ``__CUDACC__``, ``hipMalloc``, ``__HIP_PLATFORM_AMD__``,
``<cuda_runtime.h>``, ``<hip/...>``), ``aclrt`` (Ascend) and the Python names above.

Device-type strings such as ``"cuda"`` or ``"npu"`` are fine: the core compares device types.

Allow-list: :data:`ALLOWED`, each entry a file (relative to the core package), a pattern name, the
exact text allowed, and the reason it must stay. Two entries today: the ``#if defined(__CUDACC__) ||
defined(__HIPCC__)`` test of the ``LMC_HOST_DEVICE`` compat macro in ``include/lmcache_core/kv_index.h``
(a compiler check, no vendor API call), and the one line of ``arrays.py`` that names the JAX module
so the array adapter can recognise a JAX array without importing JAX. The reference backend uses
``torch.accelerator``.

Usage: ``python tools/check_neutral.py [ROOT ...]`` (default: the core package). Prints
``file:line: pattern: text`` for each use and exits 1 when there is any, 0 otherwise.
"""

from __future__ import annotations

import argparse
import io
import re
import sys
import tokenize
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CORE = REPO / "packages" / "lmcache-core" / "src" / "lmcache_core"

#: Patterns for Python code (comments and strings blanked out first).
PY_CODE = {
    "torch.cuda": re.compile(r"\btorch\s*\.\s*cuda\b"),
    "torch.npu": re.compile(r"\btorch\s*\.\s*npu\b"),
    "torch.xpu": re.compile(r"\btorch\s*\.\s*xpu\b"),
    "torch.mps": re.compile(r"\btorch\s*\.\s*mps\b"),
    "torch_npu": re.compile(r"\btorch_npu\b"),
    "jax": re.compile(r"\bjax(lib)?\b"),
    "hip": re.compile(r"\btorch\s*\.\s*version\s*\.\s*hip\b|\bhip[A-Z_]\w*|\bhip\b"),
    "cuda from torch": re.compile(r"\bfrom\s+torch\s+import\s+[^\n]*\b(cuda|npu|xpu|mps)\b"),
}

#: Whole string literals that name a vendor module (dynamic imports).
PY_STRING = re.compile(r"(torch[._](cuda|npu|xpu|mps)|torch_npu|jax(lib)?|torch\.version\.hip)(\..*)?")

#: ``getattr(torch, "<vendor>")``, checked on the source with comments removed.
PY_GETATTR = re.compile(r"""getattr\(\s*torch\s*,\s*(['"])(cuda|npu|xpu|mps)\1""")

#: Patterns for native sources (``//`` comments removed first).
NATIVE = {
    "cuda runtime": re.compile(r"\bcuda[A-Z]\w*|\b__CUDA\w*|\bCUDA_\w+|<cuda\w*\.h>|<cuda/"),
    "hip runtime": re.compile(r"\bhip[A-Z]\w*|\b__HIP\w*|<hip/"),
    "ascend acl": re.compile(r"\bacl(rt)?[A-Z_]\w*|<acl/"),
    **{k: v for k, v in PY_CODE.items() if k in ("torch.cuda", "torch_npu", "jax")},
}

PY_SUFFIXES = {".py", ".pyi"}
NATIVE_SUFFIXES = {".h", ".hpp", ".c", ".cc", ".cpp", ".cu", ".cuh"}


@dataclass(frozen=True)
class Allowed:
    """One permitted use: in ``path`` (relative to the core package), a ``pattern`` hit on a line
    containing ``text``. Anything else in the same file is still reported."""

    path: str
    pattern: str
    text: str
    reason: str


#: The allow-list. Each entry needs a reason that no neutral API (torch.accelerator, a plugin
#: hook) could serve: the compiler test of the one-place compat macro that lets CUDA/HIP device
#: builds share the host's index math (LMC_HOST_DEVICE is empty on a host compiler; it calls no
#: vendor API), and the array adapter's family names (it looks JAX up, never imports it).
ALLOWED: tuple[Allowed, ...] = tuple(
    Allowed(
        "include/lmcache_core/kv_index.h",
        pattern,
        "#if defined(__CUDACC__) || defined(__HIPCC__)",
        "LMC_HOST_DEVICE compat macro: marks shared index math __host__ __device__ under nvcc/hipcc",
    )
    for pattern in ("cuda runtime", "hip runtime")
) + (
    Allowed(
        "arrays.py",
        "vendor module name in a string",
        'TORCH, NUMPY, JAX = "torch", "numpy", "jax"',
        "the array adapter recognises a JAX array by the module already in sys.modules (it never "
        "imports it); every other use goes through the constant",
    ),
)


def _allowed(rel: str, finding: Finding) -> bool:
    return any(a.path == rel and a.pattern == finding.pattern and a.text in finding.text for a in ALLOWED)


@dataclass(frozen=True)
class Finding:
    path: Path
    line: int
    pattern: str
    text: str

    def format(self) -> str:
        try:
            shown = self.path.relative_to(REPO)
        except ValueError:
            shown = self.path
        return f"{shown}:{self.line}: {self.pattern}: {self.text.strip()}"


def _blank_python(source: str) -> tuple[str, str, list[tuple[int, str]]]:
    """Return (code with comments and strings blanked, code with only comments blanked, strings).

    Blanking keeps line and column positions, so regex hits map back to the original lines.
    """
    lines = source.splitlines(keepends=True)
    code = [list(line) for line in lines]
    no_comments = [list(line) for line in lines]
    strings: list[tuple[int, str]] = []
    string_types = {tokenize.STRING}
    for name in ("FSTRING_START", "FSTRING_MIDDLE", "FSTRING_END"):
        if hasattr(tokenize, name):
            string_types.add(getattr(tokenize, name))
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in string_types and tok.type != tokenize.COMMENT:
            continue
        if tok.type == tokenize.STRING:
            strings.append((tok.start[0], tok.string))
        (r0, c0), (r1, c1) = tok.start, tok.end
        for row in range(r0, r1 + 1):
            line = code[row - 1]
            start = c0 if row == r0 else 0
            end = c1 if row == r1 else len(line)
            for col in range(start, end):
                if line[col] != "\n":
                    line[col] = " "
                    if tok.type == tokenize.COMMENT:
                        no_comments[row - 1][col] = " "
    return "".join("".join(x) for x in code), "".join("".join(x) for x in no_comments), strings


def _string_value(literal: str) -> str | None:
    m = re.fullmatch(r"(?i)[rbu]*(['\"]{3}|['\"])(.*)\1", literal, flags=re.DOTALL)
    return m.group(2) if m else None


def _hits(text: str, patterns: dict[str, re.Pattern[str]]) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(text.splitlines(), start=1):
        for name, pattern in patterns.items():
            if pattern.search(line):
                yield number, name


def scan_python(path: Path) -> list[Finding]:
    source = path.read_text(encoding="utf-8")
    original = source.splitlines()
    try:
        code, no_comments, strings = _blank_python(source)
    except (tokenize.TokenError, SyntaxError) as e:
        return [Finding(path, 1, "unparsable", f"cannot tokenize: {e}")]
    found = [Finding(path, n, name, original[n - 1]) for n, name in _hits(code, PY_CODE)]
    for number, literal in strings:
        value = _string_value(literal)
        if value is not None and PY_STRING.fullmatch(value.strip()):
            found.append(Finding(path, number, "vendor module name in a string", original[number - 1]))
    for m in PY_GETATTR.finditer(no_comments):
        number = no_comments.count("\n", 0, m.start()) + 1
        found.append(Finding(path, number, f"getattr(torch, {m.group(2)!r})", original[number - 1]))
    return found


def scan_native(path: Path) -> list[Finding]:
    original = path.read_text(encoding="utf-8", errors="replace").splitlines()
    code = "\n".join(line.split("//", 1)[0] for line in original)
    return [Finding(path, n, name, original[n - 1]) for n, name in _hits(code, NATIVE)]


def scan(roots: Iterable[Path], package_root: Path = CORE) -> list[Finding]:
    """Every vendor-API use under ``roots`` not in :data:`ALLOWED` (keys relative to ``package_root``)."""
    findings: list[Finding] = []
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            if "__pycache__" in path.parts:
                continue
            if path.suffix in PY_SUFFIXES:
                found = scan_python(path)
            elif path.suffix in NATIVE_SUFFIXES:
                found = scan_native(path)
            else:
                continue
            try:
                rel = path.resolve().relative_to(package_root.resolve()).as_posix()
            except ValueError:
                rel = path.as_posix()
            findings += [f for f in found if not _allowed(rel, f)]
    return sorted(findings, key=lambda f: (str(f.path), f.line, f.pattern))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "roots",
        nargs="*",
        type=Path,
        default=[CORE],
        help="files or directories to check (default: the lmcache_core package)",
    )
    args = parser.parse_args(argv)
    missing = [str(r) for r in args.roots if not r.exists()]
    if missing:
        parser.error(f"roots: expected existing files or directories, given {missing}")
    findings = scan(args.roots)
    for f in findings:
        print(f.format())
    if findings:
        print(
            f"check_neutral: {len(findings)} vendor API use(s) in the neutral core; move them to a vendor "
            "package or use torch.accelerator (allow-list: ALLOWED in tools/check_neutral.py)",
            file=sys.stderr,
        )
        return 1
    print(f"check_neutral: ok ({', '.join(str(r) for r in args.roots)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
