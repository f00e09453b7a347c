"""`python -m pipeline`: every bad input is one line and exit code 2; params errors start nothing.

Real processes, as dvc.yaml and `make run` call them. The params cases run without
PREFECT_API_URL, so a flow would boot a temporary Prefect server in PREFECT_HOME and open an
MLflow run in the store: neither may happen.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, TINY_PARAMS, merge

pytestmark = pytest.mark.slow  # each case starts real `python -m pipeline` processes


def write_params(path: Path, override: dict) -> None:
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    (path / "params.yaml").write_text(yaml.safe_dump(merge(merge(base, TINY_PARAMS), override)))


def run_pipeline(cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def bare_env(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_HOME": str(tmp_path / "prefect-home"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "CUDA_VISIBLE_DEVICES": ""}
    for key in ("PREFECT_API_URL", "PSTA_PARENT_RUN_ID", "MLFLOW_RUN_ID", "WORLD_SIZE"):
        env.pop(key, None)
    return env


@pytest.mark.parametrize("stage, override, message", [
    ("train", {"model": {"seq_len": 6}}, "params.yaml: model.seq_len: expected a power of two >= 2 for arch psta"),
    ("repro", {"model": {"seq_len": 6}}, "params.yaml: model.seq_len: expected a power of two >= 2 for arch psta"),
    ("ingest", {"train": {"batch_size": 30}}, "params.yaml: train.batch_size: expected a multiple of num_instances"),
    ("evaluate", {"evaluate": {"precision": "fp16"}}, "params.yaml: evaluate.precision: expected auto, fp32 or bf16 "
                                                      "here: fp16 needs a CUDA device"),
    ("repro", {"train": {"resume": "gone/checkpoint.pt"}}, "params.yaml: train.resume: expected auto, never, or an "
                                                           "existing checkpoint file"),
    ("serve", {"retrain": {"cron": "61 * * * *"}}, "params.yaml: retrain.cron: expected a cron expression"),
])
def test_params_errors_are_one_line_exit_2_and_start_no_server_and_no_run(tmp_path, bare_env, stage, override, message):
    work = tmp_path / "project"
    work.mkdir()
    write_params(work, override)
    proc = run_pipeline(work, stage, env=bare_env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.splitlines() == [proc.stderr.strip()], proc.stderr  # one line, no traceback
    assert proc.stderr.startswith(f"error: {message}") and proc.stderr.strip().endswith("; fix it in params.yaml")
    home = tmp_path / "prefect-home"
    assert not home.exists() or not any(home.iterdir()), "a Prefect server was started"
    assert not (tmp_path / "mlflow.db").exists(), "an MLflow run was created"
    assert sorted(p.name for p in work.iterdir()) == ["params.yaml"]


def test_a_bad_report_input_is_one_error_line_not_a_traceback(tmp_path, prefect_api):
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_API_URL": prefect_api,
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    write_params(tmp_path, {})
    proc = run_pipeline(tmp_path, "report", env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == ("error: data/ingest/dataset.json is missing or unreadable; run "
                                                    "the ingest stage first (`python -m pipeline ingest`)")

    info = tmp_path / "data" / "ingest" / "dataset.json"
    info.parent.mkdir(parents=True)
    info.write_text(json.dumps({"source": "synthetic", "layout": "mars", "root": "data/generated/mars"}))
    proc = run_pipeline(tmp_path, "report", env=env)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "data/eval" in last, proc.stderr[-3000:]
    assert not (tmp_path / "reports" / "report.html").exists()
