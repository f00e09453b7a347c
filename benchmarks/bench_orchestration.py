"""Benchmark: what the orchestration layer costs when there is nothing (or nothing much) to do.

1. A no-op ``dvc repro`` (every stage up to date) in a fresh clone reproduced once with the
   tiny test parameters (tests/test_orchestration.py), against the plain cost of starting the
   DVC command line (``dvc --version``). Target: <= 5 s.
2. The Prefect overhead of a stage: wall time of a subprocess ``python -c`` that runs an empty
   ``@flow`` against a running ``prefect server``, against the same script calling a plain
   function (both import prefect). Target: flow minus plain <= 2 s.

Run: ``.venv/bin/python -m benchmarks.bench_orchestration`` (writes
benchmarks/results/orchestration.json). Takes about three minutes: the pipeline run dominates.
"""
from __future__ import annotations

import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.servers import prefect_server
from psta.atomic import write_text_atomic
from tests.test_orchestration import make_project, tool_env

REPEATS = 5
NOOP_TARGET_S = 5.0
FLOW_OVERHEAD_TARGET_S = 2.0

FLOW_SCRIPT = """
from prefect import flow

@flow(name="empty")
def empty():
    pass

empty()
"""
PLAIN_SCRIPT = """
from prefect import flow

def empty():
    pass

empty()
"""


def wall(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed:\n{proc.stderr[-3000:]}")
    return elapsed


def interleaved(a: list[str], b: list[str], cwd: Path, env: dict[str, str]) -> tuple[list[float], list[float]]:
    """Alternate the two commands so load from other users hits both alike."""
    wall(a, cwd, env), wall(b, cwd, env)  # warm the page cache
    times_a, times_b = [], []
    for _ in range(REPEATS):
        times_a.append(wall(a, cwd, env))
        times_b.append(wall(b, cwd, env))
    return times_a, times_b


def main() -> dict:
    work = Path(tempfile.mkdtemp(prefix="bench_orchestration."))
    try:
        with prefect_server(work / "prefect-home") as api:
            env = tool_env(PREFECT_API_URL=api, MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}")
            python = sys.executable
            flow_s, plain_s = interleaved([python, "-c", FLOW_SCRIPT], [python, "-c", PLAIN_SCRIPT], work, env)

            project = work / "project"
            make_project(project)
            t = time.perf_counter()
            proc = subprocess.run([python, "-m", "pipeline", "repro"], cwd=project, env=env,
                                  capture_output=True, text=True)
            pipeline_s = time.perf_counter() - t
            if proc.returncode != 0:
                raise RuntimeError(f"the tiny pipeline failed:\n{proc.stderr[-4000:]}")
            check = subprocess.run(["dvc", "repro"], cwd=project, env=env, capture_output=True, text=True)
            if "Data and pipelines are up to date" not in check.stdout:
                raise RuntimeError(f"dvc repro is not a no-op after a full run:\n{check.stdout[-3000:]}")
            noop_s, cli_s = interleaved(["dvc", "repro"], ["dvc", "--version"], project, env)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = statistics.median
    overhead = med(flow_s) - med(plain_s)
    result = {
        "benchmark": "orchestration",
        "task": "no-op dvc repro in a reproduced tiny project; an empty Prefect flow vs a plain function",
        "repeats": REPEATS,
        "tiny_pipeline_run_s": round(pipeline_s, 1),
        "noop_dvc_repro_s": round(med(noop_s), 3),
        "plain_dvc_cli_start_s": round(med(cli_s), 3),
        "ratio_noop_repro_over_cli_start": round(med(noop_s) / med(cli_s), 2),
        "noop_target_s": NOOP_TARGET_S,
        "noop_meets_target": med(noop_s) <= NOOP_TARGET_S,
        "empty_flow_subprocess_s": round(med(flow_s), 3),
        "plain_function_subprocess_s": round(med(plain_s), 3),
        "flow_overhead_s": round(overhead, 3),
        "ratio_flow_over_plain": round(med(flow_s) / med(plain_s), 2),
        "flow_overhead_target_s": FLOW_OVERHEAD_TARGET_S,
        "flow_overhead_meets_target": overhead <= FLOW_OVERHEAD_TARGET_S,
        "all_runs_s": {"noop_dvc_repro": [round(x, 3) for x in noop_s], "dvc_cli_start": [round(x, 3) for x in cli_s],
                       "empty_flow": [round(x, 3) for x in flow_s], "plain_function": [round(x, 3) for x in plain_s]},
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "processor": platform.processor() or platform.platform(),
    }
    print(f"{'measure':<38}{'seconds':>10}")
    for label, value in (("no-op dvc repro", med(noop_s)), ("plain: dvc --version", med(cli_s)),
                         ("empty @flow (python -c)", med(flow_s)), ("plain function (python -c)", med(plain_s)),
                         ("flow overhead (flow - plain)", overhead)):
        print(f"{label:<38}{value:>10.3f}")
    print(f"no-op repro / CLI start {result['ratio_noop_repro_over_cli_start']:.2f}, target <= {NOOP_TARGET_S:.0f} s: "
          f"{'met' if result['noop_meets_target'] else 'MISSED'}; flow / plain {result['ratio_flow_over_plain']:.2f}, "
          f"overhead target <= {FLOW_OVERHEAD_TARGET_S:.0f} s: "
          f"{'met' if result['flow_overhead_meets_target'] else 'MISSED'}; "
          f"median of {REPEATS}")
    write_text_atomic(Path(__file__).resolve().parent / "results" / "orchestration.json",
                      json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
