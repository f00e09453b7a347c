"""MLflow conventions: one run per stage, nested under the pipeline's parent run.

Default store: ``sqlite:///mlflow.db`` in the working directory (MLflow 3 refuses a plain
./mlruns folder); ``MLFLOW_TRACKING_URI`` overrides it. A pipeline execution exports the parent
run id in ``PSTA_PARENT_RUN_ID`` (our own variable: ``MLFLOW_RUN_ID`` would make every stage
*resume* the parent instead of nesting under it). An unreachable tracking server never loses
work: the stage warns and logs to the local store instead. A server that dies mid-stage never
stops it either: metrics and artefacts go through a background sender
(pipeline.run_logger), the stage ends saying what was not logged, and its next start closes
the run it could not end (pipeline.run_records).

Credentials in the URI (``http://user:password@host``) never appear in a message, a tag, an
artefact or MLflow's own "View run" line: they are moved into ``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD`` (which MLflow sends as HTTP basic auth) and the URI used is the
one without them.

Artifacts of the local store stay in the checkout that runs: ``mlruns/<experiment id>`` beside
``mlflow.db``. MLflow stores that location as an absolute path, so a copied checkout would log
into the original's ``mlruns/``; :func:`use_experiment` moves such an experiment's location back
into the copy (earlier runs keep theirs) and says so.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
import subprocess
import sys
import urllib.parse
import warnings
from pathlib import Path
from typing import Any, Iterator

import yaml

from pipeline import servers

LOCAL_TRACKING_URI = "sqlite:///mlflow.db"
LOCAL_ARTIFACTS = Path("mlruns")
LOCAL_UI = "http://127.0.0.1:5000"  # where `make ui` serves the local store
PARENT_RUN_ENV = "PSTA_PARENT_RUN_ID"
# a server that stops answering costs seconds per call, not MLflow's default of minutes
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
_USERINFO = re.compile(r"(?<=://)[^/@\s]*@")
_logger = None  # the running stage's pipeline.run_logger.BackgroundLogger
# the MLflow UI opens an experiment of this kind in its model-training mode (runs, metrics, models)
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"

log = logging.getLogger(__name__)


def redact(text: str) -> str:
    """``scheme://user:password@host`` -> ``scheme://***@host``, anywhere in ``text``."""
    return _USERINFO.sub("***@", text)


def without_credentials(uri: str) -> str:
    """The URI minus its user:password, which go to MLflow's own credential variables."""
    parts = urllib.parse.urlsplit(uri)
    if parts.username is None and parts.password is None:
        return uri
    if parts.username:
        os.environ.setdefault("MLFLOW_TRACKING_USERNAME", urllib.parse.unquote(parts.username))
    if parts.password:
        os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", urllib.parse.unquote(parts.password))
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def tracking_uri() -> str:
    """The configured tracking URI, or the local store when a remote server does not answer."""
    uri = without_credentials(os.environ.get("MLFLOW_TRACKING_URI", LOCAL_TRACKING_URI))
    if uri.startswith(("http://", "https://")) and not servers.http_ok(uri.rstrip("/") + "/health", timeout=3):
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
    """The MLflow run of one stage; it ends FINISHED, FAILED when the body raises, KILLED on
    Ctrl-C. Logging inside it (log_metrics, log_artifact) never blocks or fails the stage."""
    import mlflow

    from pipeline import run_records
    from pipeline.run_logger import BackgroundLogger

    global _logger
    logging.getLogger("alembic").setLevel(logging.WARNING)
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    run_records.close_previous(stage, uri)
    use_experiment(experiment)
    parent = os.environ.get(PARENT_RUN_ENV) or None
    tags = {
        "stage": stage,
        "git_commit": git_commit(),
        "params_hash": params_hash,
        "data_version": data_version(),
    }
    run = mlflow.start_run(run_name=stage, parent_run_id=parent, tags=tags)
    run_records.remember(stage, run.info.run_id, uri)
    status = "FAILED"
    try:
        mlflow.log_params(flatten(params))
        _logger = BackgroundLogger(uri, run.info.run_id)
        yield run
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        _end_stage_run(stage, run.info.run_id, status, uri)


def _end_stage_run(stage: str, run_id: str, status: str, uri: str) -> None:
    import mlflow

    from pipeline import run_records

    global _logger
    unlogged = _logger.close() if _logger is not None else []
    error = _logger.last_error if _logger is not None else None
    _logger = None
    try:
        mlflow.end_run(status)
        ended = True
    except Exception as err:  # noqa: BLE001 - the server went away: the work is done regardless
        ended, error = False, f"{type(err).__name__}"
    if ended and not unlogged:
        run_records.forget(stage)
        return
    run_records.settle(stage, status, unlogged)
    lines = [f"warning: the MLflow server {uri} stopped answering ({error}); not logged to run {run_id}:"]
    lines += [f"  - {line}" for line in unlogged]
    if not ended:
        lines.append(f"  - the run's end (status {status}): it shows RUNNING there until the next "
                     f"`python -m pipeline {stage}` marks it {status}")
    lines.append(f"  The {stage} stage itself completed ({status}); its output files hold every number.")
    print(redact("\n".join(lines)), file=sys.stderr)


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """Log metrics to the running stage's run without ever blocking it (else: the active run)."""
    if _logger is not None:
        _logger.log_metrics(metrics, step)
    else:
        import mlflow

        mlflow.log_metrics(metrics, step=step)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    if _logger is not None:
        _logger.log_artifact(str(path), artifact_path)
    else:
        import mlflow

        mlflow.log_artifact(str(path), artifact_path=artifact_path)
