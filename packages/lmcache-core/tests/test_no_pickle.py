"""No module of the project imports pickle (or its relatives that unpickle: cPickle, dill,
cloudpickle, joblib, shelve, marshal), nor calls torch.load/np.load with pickles allowed, nor uses
the APIs that pickle behind the caller's back: ``multiprocessing``'s object channels (a
``Connection``'s ``send``/``recv``, queues, managers, pools, ``reduction``),
``ProcessPoolExecutor`` and pyzmq's ``send_pyobj``/``recv_pyobj``. Every ``src`` tree of every
package under packages/ is parsed and checked. Byte channels (``send_bytes``/``recv_bytes``,
sockets) carrying msgspec/msgpack or JSON are the way."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
BANNED = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal", "copyreg"}
#: Modules (and their submodules) whose whole job is pickling objects between processes.
BANNED_MODULES = {"multiprocessing.reduction", "multiprocessing.managers", "multiprocessing.pool",
                  "multiprocessing.queues", "torch.multiprocessing"}  # fmt: skip
#: Names that pickle what they carry, as imported from (or reached through) these modules.
BANNED_NAMES = {
    "multiprocessing": {"Queue", "SimpleQueue", "JoinableQueue", "Manager", "Pool", "reduction"},
    "multiprocessing.connection": {"rebuild_connection", "reduce_connection"},
    "concurrent.futures": {"ProcessPoolExecutor"},
}
#: Methods that pickle: a multiprocessing ``Connection``'s object ``send``/``recv`` (flagged in
#: modules that import multiprocessing, where a ``.send(``/``.recv(`` is such a Connection's) and
#: pyzmq's ``*_pyobj`` (flagged everywhere).
CONNECTION_METHODS = {"send", "recv"}
PYOBJ_METHODS = {"send_pyobj", "recv_pyobj"}


def _banned_module(name: str) -> bool:
    return name.split(".")[0] in BANNED or any(name == m or name.startswith(m + ".") for m in BANNED_MODULES)


def sources() -> list[Path]:
    return sorted(p for src in (ROOT / "packages").glob("*/src") for p in src.rglob("*.py"))


def offences(path: Path, root: Path = ROOT) -> list[str]:
    """``file:line: what`` for every banned import or pickle-enabling argument in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    where = path.relative_to(root)
    uses_mp = any(
        (isinstance(n, ast.Import) and any(a.name.split(".")[0] == "multiprocessing" for a in n.names))
        or (
            isinstance(n, ast.ImportFrom)
            and n.level == 0
            and (n.module or "").split(".")[0] == "multiprocessing"
        )
        for n in ast.walk(tree)
    )
    aliases = {  # local name -> module, from ``import x.y as z`` / ``import x``
        (a.asname or a.name.split(".")[0]): (a.name if a.asname else a.name.split(".")[0])
        for n in ast.walk(tree)
        if isinstance(n, ast.Import)
        for a in n.names
    }
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            found += [
                f"{where}:{node.lineno}: imports {node.module}.{a.name}"
                for a in node.names
                if a.name in BANNED_NAMES.get(node.module, ())
            ]
        elif isinstance(node, ast.Attribute):
            head, _, rest = ast.unparse(node.value).partition(".")
            base = aliases.get(head, head) + ("." + rest if rest else "")
            if node.attr in BANNED_NAMES.get(base, ()):
                found.append(f"{where}:{node.lineno}: uses {base}.{node.attr}")
            elif isinstance(node.ctx, ast.Load) and node.attr in PYOBJ_METHODS:
                found.append(f"{where}:{node.lineno}: calls .{node.attr}() (pickles)")
            elif uses_mp and node.attr in CONNECTION_METHODS:
                found.append(
                    f"{where}:{node.lineno}: calls .{node.attr}() in a multiprocessing module (pickles)"
                )
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
        found += [f"{where}:{node.lineno}: imports {n}" for n in names if _banned_module(n)]
    return found


def test_the_scan_sees_every_package() -> None:
    files = sources()
    assert {p.relative_to(ROOT / "packages").parts[0] for p in files} >= {"lmcache-core", "lmcache-arm"}
    assert any(p.parts[-2:] == ("server", "protocol.py") for p in files)


@pytest.mark.parametrize("text", ["import pickle", "from pickle import loads", "import cloudpickle as c",
                                  "import dill", "import marshal", "from shelve import open",
                                  "__import__('pickle')", "np.load(f, allow_pickle=True)", "torch.load(f, weights_only=False)",
                                  "from multiprocessing.connection import Client\nClient(a).send(x)",
                                  "from multiprocessing.connection import Listener\nm = c.recv()",
                                  "import multiprocessing as mp\nq = mp.Queue()",
                                  "import multiprocessing\nmultiprocessing.Pool(2)",
                                  "from multiprocessing import SimpleQueue", "from multiprocessing.managers import BaseManager",
                                  "import multiprocessing.reduction", "import torch.multiprocessing as mp",
                                  "from concurrent.futures import ProcessPoolExecutor",
                                  "import concurrent.futures\nconcurrent.futures.ProcessPoolExecutor()",
                                  "sock.send_pyobj(x)", "y = sock.recv_pyobj()"])  # fmt: skip
def test_the_check_catches(tmp_path: Path, text: str) -> None:
    path = tmp_path / "m.py"
    path.write_text(text + "\n")
    assert offences(path, tmp_path), text
    path.write_text("import json\nnp.load(f, allow_pickle=False)\ntorch.load(f, weights_only=True)\n")
    assert offences(path, tmp_path) == []


def test_byte_channels_pass(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text(
        "from multiprocessing.connection import Client, Listener\n"
        "c = Client(a, authkey=k)\nc.send_bytes(b'x')\ny = c.recv_bytes(1024)\n"
        "from concurrent.futures import ThreadPoolExecutor\n"
        "import multiprocessing.shared_memory\n"
    )
    assert offences(path, tmp_path) == []
    path.write_text("import zmq\nsock.send(b'x')\nsock.recv()\n")  # not a multiprocessing module
    assert offences(path, tmp_path) == []


def test_no_module_imports_pickle() -> None:
    found = [o for p in sources() for o in offences(p)]
    assert found == [], "pickle runs code from its input; use msgspec/msgpack or JSON:\n" + "\n".join(found)
