"""Run one vLLM engine through a scripted sequence of steps; used by ``lmcache-core bench e2e``,
``lmcache-core demo`` and the engine tests.

Importing this module imports neither vLLM nor torch; the engine process imports vLLM.

Every engine gets its own process (vLLM spawns workers and keeps global state, and an engine
start costs ~35 s on a small CPU host, so a process serves a whole scenario)::

    python -m lmcache_core.integrations.vllm.runner SPEC.json OUT.json

``SPEC`` (JSON)::

    {"model": "/path/to/model",
     "connector": {...kv_connector_extra_config...} or null (plain vLLM),
     "in_process": false,          # true: scheduler and worker in this process (UniProc)
     "llm": {...extra vllm.LLM arguments...},
     "steps": [{"op": "generate", "name": "a", "prompts": [[ids]], "salts": [...] | null,
                "max_tokens": 8, "logprobs": 5, "stop_pid_after_s": null | [pid, seconds]},
               {"op": "chat", "name": "demo", "conversations": [[[user ids], ...], ...],
                "answer_tokens": 16, "salts": [...] | null},
               {"op": "flush"}, {"op": "metrics", "name": "m"}]}

``generate`` runs its prompts as one batch and records, per prompt, the greedy tokens, the top
``logprobs`` log-probabilities of every generated position, vLLM's ``num_cached_tokens`` and the
time to first token (``first_token_latency`` from vLLM's request stats). ``stop_pid_after_s``
sends SIGTERM to a process the caller started (e.g. a Redis server) while the batch runs.
``chat`` runs conversations turn by turn: turn ``k``'s prompt is the whole history (every earlier
user turn and generated answer) plus user turn ``k``; with ``"interleave": true`` turn ``k`` of
every conversation runs before turn ``k + 1`` of any (users taking turns: their histories
compete for vLLM's KV space). ``flush`` waits for L2 write-behind (in
process only). ``metrics`` records vLLM's Prometheus metrics named ``vllm:lmcache_core_*``,
``vllm:prefix_cache*`` and ``vllm:external_prefix_cache*``. ``{"op": "wait_port_closed", "port":
6379}`` waits until a server the caller stopped no longer accepts connections on 127.0.0.1.
``{"op": "barrier", "dir": "/path", "name": "killed", "timeout_s": 120}`` hands the step over to
the caller: it creates ``dir/killed.reached``, then waits until the caller creates
``dir/killed.go`` (e.g. after it killed or restarted a server); past ``timeout_s`` it fails.

``OUT`` (JSON): ``{"startup_s", "results": {name: ...}, "metrics": {name: {...}}}``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

DEFAULT_ENV = {"VLLM_HOST_IP": "127.0.0.1", "VLLM_CPU_KVCACHE_SPACE": "1"}


def connector_config(extra: dict[str, Any]) -> dict[str, Any]:
    """vLLM's ``kv_transfer_config`` selecting lmcache-core's connector with ``extra`` settings."""
    return {
        "kv_connector": "LMCacheCoreConnector",
        "kv_role": "kv_both",
        "kv_connector_module_path": "lmcache_core.integrations.vllm",
        "kv_connector_extra_config": dict(extra),
    }


def _build_llm(spec: dict[str, Any]) -> Any:
    from vllm import LLM

    kwargs: dict[str, Any] = {
        "model": spec["model"],
        "dtype": "float32",
        "block_size": 32,
        "enable_prefix_caching": False,
        "max_model_len": 4096,
        "disable_log_stats": False,
        "seed": 0,
    }
    kwargs.update(spec.get("llm", {}))
    if spec.get("connector") is not None:
        kwargs["kv_transfer_config"] = connector_config(spec["connector"])
    return LLM(**kwargs)


def _one(out: Any, logprobs: int) -> dict[str, Any]:
    comp = out.outputs[0]
    top = []
    for pos in comp.logprobs or []:
        top.append({str(tok): lp.logprob for tok, lp in pos.items()})
    metrics = getattr(out, "metrics", None)
    ttft = getattr(metrics, "first_token_latency", None) if metrics is not None else None
    return {
        "prompt_tokens": len(out.prompt_token_ids or []),
        "tokens": list(comp.token_ids),
        "logprobs": top,
        "num_cached_tokens": out.num_cached_tokens,
        "ttft_s": ttft,
    }


def _generate(llm: Any, step: dict[str, Any]) -> list[dict[str, Any]]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    logprobs = int(step.get("logprobs", 5))
    params = SamplingParams(
        max_tokens=int(step.get("max_tokens", 8)), temperature=0.0, logprobs=logprobs or None, ignore_eos=True
    )
    salts = step.get("salts") or [None] * len(step["prompts"])
    prompts = []
    for ids, salt in zip(step["prompts"], salts, strict=True):
        p = TokensPrompt(prompt_token_ids=list(ids))
        if salt is not None:
            p["cache_salt"] = salt
        prompts.append(p)
    timer = None
    if step.get("stop_pid_after_s"):
        pid, delay = step["stop_pid_after_s"]
        timer = threading.Timer(float(delay), os.kill, (int(pid), signal.SIGTERM))
        timer.start()
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    wall = time.perf_counter() - t0
    if timer is not None:
        timer.join()
    results = [_one(o, logprobs) for o in outs]
    for r in results:
        r["batch_wall_s"] = wall
    return results


def _chat(llm: Any, step: dict[str, Any]) -> list[list[dict[str, Any]]]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(max_tokens=int(step.get("answer_tokens", 16)), temperature=0.0, ignore_eos=True)
    convs = step["conversations"]
    salts = step.get("salts") or [None] * len(convs)
    histories: list[list[int]] = [[] for _ in convs]
    out: list[list[dict[str, Any]]] = [[] for _ in convs]
    order = [(c, k) for c, turns in enumerate(convs) for k in range(len(turns))]
    if step.get("interleave"):
        order.sort(key=lambda ck: (ck[1], ck[0]))
    for c, k in order:
        histories[c] = histories[c] + list(convs[c][k])
        p = TokensPrompt(prompt_token_ids=list(histories[c]))
        if salts[c] is not None:
            p["cache_salt"] = salts[c]
        t0 = time.perf_counter()
        res = llm.generate([p], params, use_tqdm=False)[0]
        wall = time.perf_counter() - t0
        row = _one(res, 0)
        row["wall_s"] = wall
        out[c].append(row)
        histories[c] = histories[c] + row["tokens"]
    return out


def _flush() -> bool:
    from vllm.distributed.kv_transfer import get_kv_transfer_group, has_kv_transfer_group

    if not has_kv_transfer_group():
        return False
    connector = get_kv_transfer_group()
    worker = getattr(connector, "_worker", None)
    if worker is None:
        return False
    return bool(worker.flush(60.0))


def _metrics(llm: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in llm.get_metrics():
        name = m.name
        if not (name.startswith("vllm:lmcache_core") or "prefix_cache" in name):
            continue
        value = getattr(m, "value", None)
        if value is None:  # histogram: count and sum
            out[name + ":count"] = float(getattr(m, "count", 0))
            out[name + ":sum"] = float(getattr(m, "sum", 0.0))
        else:
            out[name] = out.get(name, 0.0) + float(value)
    return out


def _wait_port_closed(port: int, timeout_s: float) -> bool:
    """Wait until nothing accepts connections on 127.0.0.1:``port`` (a stopped server is gone)."""
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) != 0:
                return True
        time.sleep(0.02)
    return False


def _barrier(directory: str, name: str, timeout_s: float) -> float:
    """Create ``directory/name.reached``, wait for ``directory/name.go``; the seconds waited."""
    d = Path(directory)
    (d / f"{name}.reached").touch()
    t0 = time.monotonic()
    while not (d / f"{name}.go").exists():
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"barrier {name!r}: {d / (name + '.go')} not created within {timeout_s} s")
        time.sleep(0.05)
    return time.monotonic() - t0


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Start the engine of ``spec``, run its steps, return what they recorded."""
    for k, v in DEFAULT_ENV.items():
        os.environ.setdefault(k, v)
    if spec.get("in_process"):
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    for k, v in spec.get("env", {}).items():
        os.environ[k] = str(v)
    t0 = time.perf_counter()
    llm = _build_llm(spec)
    report: dict[str, Any] = {"startup_s": time.perf_counter() - t0, "results": {}, "metrics": {}}
    for i, step in enumerate(spec["steps"]):
        op = step["op"]
        name = step.get("name", f"step{i}")
        if op == "generate":
            report["results"][name] = _generate(llm, step)
        elif op == "chat":
            report["results"][name] = _chat(llm, step)
        elif op == "flush":
            report["results"][name] = _flush()
        elif op == "metrics":
            report["metrics"][name] = _metrics(llm)
        elif op == "wait_port_closed":
            report["results"][name] = _wait_port_closed(int(step["port"]), float(step.get("timeout_s", 30)))
        elif op == "barrier":
            report["results"][name] = _barrier(step["dir"], name, float(step.get("timeout_s", 120)))
        else:
            raise ValueError(
                f"steps[{i}].op: expected one of ['barrier', 'chat', 'flush', 'generate', 'metrics',"
                f" 'wait_port_closed'], given {op!r}"
            )
    if spec.get("connector") is not None and spec.get("in_process"):
        _flush()
    return report


class EngineFailed(RuntimeError):
    """The engine process exited without a report; the message ends with its log's tail."""


def run_subprocess(
    spec: dict[str, Any],
    workdir: Path,
    name: str,
    timeout: float = 900.0,
    on_wait: Any = None,
) -> dict[str, Any]:
    """Run ``spec`` in a new process (``workdir/<name>.json``, ``.out.json``, ``.log``).

    Returns the report plus ``"log"`` (the process's stdout and stderr). ``on_wait(seconds,
    last_log_line)`` is called about every 10 s while it runs (a progress line).
    """
    import subprocess

    workdir.mkdir(parents=True, exist_ok=True)
    spec_path, out_path, log_path = (workdir / f"{name}{s}" for s in (".json", ".out.json", ".log"))
    out_path.unlink(missing_ok=True)
    spec_path.write_text(json.dumps(spec))
    env = dict(os.environ)
    for k, v in DEFAULT_ENV.items():
        env.setdefault(k, v)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lmcache_core.integrations.vllm.runner", str(spec_path), str(out_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        t0 = time.monotonic()
        rc: int | str | None = None
        while rc is None:
            try:
                rc = proc.wait(10.0)
            except subprocess.TimeoutExpired:
                if time.monotonic() - t0 > timeout:
                    proc.kill()
                    proc.wait()
                    rc = f"a time-out after {timeout:.0f} s"
                elif on_wait is not None:
                    on_wait(time.monotonic() - t0, _last_line(log_path))
    if rc != 0 or not out_path.exists():
        tail = log_path.read_text(errors="replace")[-4000:]
        raise EngineFailed(f"engine {name} ended with {rc} (log {log_path}); log tail:\n{tail}")
    report: dict[str, Any] = json.loads(out_path.read_text())
    report["log"] = log_path.read_text(errors="replace")
    return report


def _last_line(path: Path) -> str:
    """The last non-empty line of a log (its last 4 KiB), shortened."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - 4096))
            lines = [x for x in f.read().decode(errors="replace").splitlines() if x.strip()]
    except OSError:
        return ""
    return lines[-1][-120:] if lines else ""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m lmcache_core.integrations.vllm.runner SPEC.json OUT.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(args[0]).read_text())
    report = run(spec)
    Path(args[1]).write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
