"""No module of the project imports pickle (or its relatives that unpickle: cPickle, dill,
cloudpickle, joblib, shelve, marshal), nor calls torch.load/np.load with pickles allowed: every
``src`` tree of every package under packages/ is parsed and its imports checked."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
BANNED = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal", "copyreg"}


def sources() -> list[Path]:
    return sorted(p for src in (ROOT / "packages").glob("*/src") for p in src.rglob("*.py"))


def offences(path: Path, root: Path = ROOT) -> list[str]:
    """``file:line: what`` for every banned import or pickle-enabling argument in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "__import__":
            names = [
                a.value for a in node.args[:1] if isinstance(a, ast.Constant) and isinstance(a.value, str)
            ]
        elif (
            isinstance(node, ast.keyword)
            and node.arg == "allow_pickle"
            and not (isinstance(node.value, ast.Constant) and node.value.value is False)
        ):
            found.append(f"{path.relative_to(root)}:{node.value.lineno}: allow_pickle not False")
        elif (
            isinstance(node, ast.keyword)
            and node.arg == "weights_only"
            and not (isinstance(node.value, ast.Constant) and node.value.value is True)
        ):
            found.append(f"{path.relative_to(root)}:{node.value.lineno}: weights_only not True")
        found += [
            f"{path.relative_to(root)}:{node.lineno}: imports {n}" for n in names if n.split(".")[0] in BANNED
        ]
    return found


def test_the_scan_sees_every_package() -> None:
    files = sources()
    assert {p.relative_to(ROOT / "packages").parts[0] for p in files} >= {"lmcache-core", "lmcache-arm"}
    assert any(p.parts[-2:] == ("server", "protocol.py") for p in files)


@pytest.mark.parametrize("text", ["import pickle", "from pickle import loads", "import cloudpickle as c",
                                  "__import__('pickle')", "np.load(f, allow_pickle=True)", "torch.load(f, weights_only=False)"])  # fmt: skip
def test_the_check_catches(tmp_path: Path, text: str) -> None:
    path = tmp_path / "m.py"
    path.write_text(text + "\n")
    assert offences(path, tmp_path), text
    path.write_text("import json\nnp.load(f, allow_pickle=False)\ntorch.load(f, weights_only=True)\n")
    assert offences(path, tmp_path) == []


def test_no_module_imports_pickle() -> None:
    found = [o for p in sources() for o in offences(p)]
    assert found == [], "pickle runs code from its input; use msgspec/msgpack or JSON:\n" + "\n".join(found)
