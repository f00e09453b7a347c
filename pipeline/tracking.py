"""MLflow conventions: one run per stage, nested under the pipeline's parent run.

Default store: ``sqlite:///mlflow.db`` in the working directory (MLflow 3 refuses a plain
./mlruns folder); ``MLFLOW_TRACKING_URI`` overrides it. A pipeline execution exports the parent
run id in ``PSTA_PARENT_RUN_ID`` (our own variable: ``MLFLOW_RUN_ID`` would make every stage
*resume* the parent instead of nesting under it). An unreachable tracking server never loses
work: the stage warns and logs to the local store instead.

Artifacts of the local store stay in the checkout that runs: ``mlruns/<experiment id>`` beside
``mlflow.db``. MLflow stores that location as an absolute path, so a copied checkout would log
into the original's ``mlruns/``; :func:`use_experiment` moves such an experiment's location back
into the copy (earlier runs keep theirs) and says so.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import subprocess
import warnings
from pathlib import Path
from typing import Any, Iterator

import yaml

from pipeline import servers

LOCAL_TRACKING_URI = "sqlite:///mlflow.db"
LOCAL_ARTIFACTS = Path("mlruns")
LOCAL_UI = "http://127.0.0.1:5000"  # where `make ui` serves the local store
PARENT_RUN_ENV = "PSTA_PARENT_RUN_ID"
# the MLflow UI opens an experiment of this kind in its model-training mode (runs, metrics, models)
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"

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


def use_experiment(name: str):
    """Make ``name`` the active experiment (created if missing), tagged for the model-training UI;
    in the checkout's own store its artifacts are kept in this checkout (:func:`keep_artifacts_here`)."""
    import mlflow

    experiment = mlflow.set_experiment(name)
    if mlflow.get_tracking_uri() == LOCAL_TRACKING_URI:
        keep_artifacts_here(experiment)
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    return experiment


def keep_artifacts_here(experiment) -> None:
    """Point an experiment of ./mlflow.db that logs into another checkout's mlruns/ at ours.

    Only MLflow's default layout (``<checkout>/mlruns/<id>``) is moved: it means mlflow.db was
    copied from that checkout. A location chosen on purpose is left as it is.
    """
    from mlflow.utils.file_utils import local_file_uri_to_path
    from mlflow.utils.uri import is_local_uri

    location = experiment.artifact_location
    if not is_local_uri(location):
        return
    current = Path(local_file_uri_to_path(location))
    here = Path.cwd() / LOCAL_ARTIFACTS / experiment.experiment_id
    if current == here or current.parent.name != LOCAL_ARTIFACTS.name or current.name != experiment.experiment_id:
        return
    # MLflow has no API to change an experiment's location; its SQLite schema has had this column
    # since 1.0. Earlier runs keep their own artifact URIs.
    with contextlib.closing(sqlite3.connect(LOCAL_TRACKING_URI.removeprefix("sqlite:///"))) as db, db:
        db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?",
                   (str(here), int(experiment.experiment_id)))
    warnings.warn(
        f"mlflow.db was copied from another checkout: experiment {experiment.name!r} logged its "
        f"artifacts to {current}; new runs now log to {here} (earlier runs keep theirs)",
        RuntimeWarning, stacklevel=3,
    )


def run_url(run, uri: str | None = None) -> str:
    """The MLflow UI page of ``run``: on the tracking server, or where `make ui` serves the local store."""
    import mlflow

    uri = uri or mlflow.get_tracking_uri()
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else LOCAL_UI
    return f"{base}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"


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
    use_experiment(experiment)
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
