"""MLflow conventions: one run per stage, nested under the pipeline's parent run.

Default store: ``sqlite:///mlflow.db`` in the working directory (MLflow 3 refuses a plain
./mlruns folder); ``MLFLOW_TRACKING_URI`` overrides it. A pipeline execution exports the parent
run id in ``PSTA_PARENT_RUN_ID`` (our own variable: ``MLFLOW_RUN_ID`` would make every stage
*resume* the parent instead of nesting under it). An unreachable tracking server never loses
work: the stage warns and logs to the local store instead.
"""
from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import warnings
from pathlib import Path
from typing import Any, Iterator

import yaml

from pipeline import servers

LOCAL_TRACKING_URI = "sqlite:///mlflow.db"
PARENT_RUN_ENV = "PSTA_PARENT_RUN_ID"

log = logging.getLogger(__name__)


def tracking_uri() -> str:
    """The configured tracking URI, or the local store when a remote server does not answer."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", LOCAL_TRACKING_URI)
    remote = uri.startswith(("http://", "https://"))
    if remote and not servers.http_ok(uri.rstrip("/") + "/health", timeout=3):
        warnings.warn(
            f"MLflow tracking server {uri} is unreachable; logging to {LOCAL_TRACKING_URI} "
            "instead (start the server, or unset MLFLOW_TRACKING_URI)",
            RuntimeWarning,
            stacklevel=2,
        )
        return LOCAL_TRACKING_URI
    return uri


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def data_version(lock_path: str | Path = "dvc.lock") -> str:
    """The md5 DVC recorded for the tracklet index: which data a run saw."""
    try:
        lock = yaml.safe_load(Path(lock_path).read_text()) or {}
        outs = lock.get("stages", {}).get("index", {}).get("outs", [])
        for out in outs:
            if out.get("path") == "data/index":
                return str(out.get("md5", "unknown"))
    except (OSError, yaml.YAMLError, AttributeError):
        pass
    return "unversioned"


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


@contextlib.contextmanager
def stage_run(
    stage: str, params: dict[str, dict[str, Any]], experiment: str, params_hash: str
) -> Iterator[Any]:
    """Start the MLflow run of one stage; it ends FINISHED, or FAILED when the body raises."""
    import mlflow

    logging.getLogger("alembic").setLevel(logging.WARNING)
    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_experiment(experiment)
    parent = os.environ.get(PARENT_RUN_ENV) or None
    tags = {
        "stage": stage,
        "git_commit": git_commit(),
        "params_hash": params_hash,
        "data_version": data_version(),
    }
    with mlflow.start_run(run_name=stage, parent_run_id=parent, tags=tags) as run:
        mlflow.log_params(flatten(params))
        yield run
