"""``lmcache-core bench overhead``: every cell of the document and the table, overhead = call - hook.

Values only (structure, positivity, the subtraction); no time is asserted.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import json

import pytest

from lmcache_core.bench.overhead import CLOCKS, EXAMPLE, NUM_TOKENS, OPS
from lmcache_core.cli.errors import CLIError
from lmcache_core.cli.main import COMMANDS, build_parser


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    parser = build_parser({"bench overhead": COMMANDS["bench overhead"]})
    args = parser.parse_args(["bench", "overhead", *argv])
    assert args.run(args) == 0
    return capsys.readouterr().out


def test_json_has_every_cell_and_overhead_is_call_minus_hook(capsys: pytest.CaptureFixture[str]) -> None:
    doc = json.loads(_run(capsys, "--calls", "3", "--runs", "2", "--json"))
    assert (doc["calls"], doc["runs"], doc["torch_threads"]) == (3, 2, 1)
    assert doc["layout"] == {**EXAMPLE, "num_tokens": NUM_TOKENS}
    for key in ("host_line", "python", "torch", "lmcache_core", "date", "statistic"):
        assert isinstance(doc[key], str) and doc[key], key
    assert [(r["backend"], r["kernel"], r["op"]) for r in doc["rows"]] == [
        ("reference", "reference", op) for op in OPS
    ]
    for row in doc["rows"]:
        assert set(row) == {"backend", "kernel", "op", *CLOCKS}
        for clock in CLOCKS:
            cell = row[clock]
            assert set(cell) == {"call", "hook", "overhead"}
            assert cell["call"] > 0 and cell["hook"] > 0, (row["op"], clock, cell)
            assert cell["overhead"] == cell["call"] - cell["hook"]


def test_table_has_a_line_per_op_and_clock(capsys: pytest.CaptureFixture[str]) -> None:
    out = _run(capsys, "--calls", "2", "--runs", "1", "--backend", "reference")
    lines = out.splitlines()
    assert lines[0].startswith("lmcache-core bench overhead: 2 calls per run, median of 1 runs")
    header = next(i for i, line in enumerate(lines) if line.startswith("backend "))
    assert lines[header].split()[:4] == ["backend", "kernels", "op", "clock"]
    body = [line.split() for line in lines[header + 2 : header + 2 + 2 * len(OPS)]]
    assert [(c[0], c[1], c[2], " ".join(c[3:-3])) for c in body] == [
        ("reference", "reference", op, clock) for op in OPS for clock in ("thread cpu", "wall")
    ]
    for cells in body:
        call, hook, overhead = (float(c) for c in cells[-3:])
        assert overhead == pytest.approx(call - hook, abs=0.011)  # each printed to 2 decimals


@pytest.mark.skipif(
    not any(d.metadata["Name"] == "lmcache-dummy-backend" for d in importlib.metadata.distributions()),
    reason="test plugin lmcache-dummy-backend not installed (see tests/plugins/README.md)",
)
def test_a_named_backend_is_measured_beside_the_reference_and_its_own_hook_is_the_hook(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LMCACHE_TEST_DUMMY", "1")
    monkeypatch.delenv("LMCACHE_BACKEND", raising=False)
    calls = importlib.import_module("lmcache_dummy_backend.plugin").CALLS
    before = dict(calls)
    doc = json.loads(_run(capsys, "--calls", "3", "--runs", "2", "--backend", "dummy", "--json"))
    assert [(r["backend"], r["kernel"], r["op"]) for r in doc["rows"]] == [
        *(("reference", "reference", op) for op in OPS),
        *(("dummy", "dummy", op) for op in OPS),
    ]
    # per op: the public call and the hook alone, each warmed once then run 3 times, in 2 runs
    assert {op: calls[op] - before[op] for op in OPS} == {op: 2 * 2 * (1 + 3) for op in OPS}
    for row in doc["rows"]:
        for clock in CLOCKS:
            cell = row[clock]
            assert cell["overhead"] == cell["call"] - cell["hook"]


def test_an_unknown_backend_names_the_option() -> None:
    parser = build_parser({"bench overhead": COMMANDS["bench overhead"]})
    args = parser.parse_args(["bench", "overhead", "--calls", "1", "--backend", "no_such_backend"])
    with pytest.raises(CLIError, match=r"--backend 'no_such_backend': name: expected one of \[.*'reference'"):
        args.run(args)
