"""The MLflow model registry: every evaluated model becomes a version of ``psta-<dataset>``.

Called at the end of the evaluate stage, inside its MLflow run. The trained model
(data/models/model.pt) is rebuilt with :func:`psta.model.load_checkpoint` and logged with
``mlflow.pytorch.log_model``: pickled (any batch size), the ``psta`` package along as code (it
loads without this project installed), pinned requirements, and a tensor signature: a float32
clip batch ``B x T x 3 x H x W`` -> ``B x D`` embeddings. The new version gets:

- the alias ``candidate`` (always: the latest evaluated model);
- the alias ``champion`` when its mAP under the dataset's first protocol (the first entry of
  reports/metrics.json, e.g. mars_official) is at least the current champion's;
- version tags ``mAP``, ``rank1`` (percent), ``protocol``, ``git_commit``, ``params_hash``, and
  the calibrated "same person" rule: ``verification_threshold`` (a pair is the same person when
  its ``verification_distance`` is at most it), ``verification_target_fpr``, ``verification_tpr``.

Load a model anywhere with ``mlflow.pytorch.load_model("models:/psta-mars@champion")``.
The registry lives in the same store as the runs: the tracking server, or the local SQLite
store the stage fell back to.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.stage import stage_task

CANDIDATE = "candidate"
CHAMPION = "champion"
PSTA_PACKAGE = Path(__file__).resolve().parents[1] / "psta"



def _logger():
    """The Prefect run logger inside a flow or task (shown in the UI), else a plain one."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    model_uri: str
    protocol: str
    mAP: float
    champion: bool
    previous_champion: str | None  # version that held the alias before, None when there was none


def model_name(dataset: str) -> str:
    return f"psta-{dataset}"


def headline(metrics: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The first protocol of reports/metrics.json (the dataset's official one) and its numbers."""
    for name, values in metrics.items():
        if name != "untrained" and isinstance(values, dict) and "mAP" in values:
            return name, values
    raise ValueError("reports/metrics.json holds no protocol with an mAP; rerun the evaluate stage")


def verification_tags(numbers: dict[str, Any]) -> dict[str, str]:
    """The calibrated "same person" rule of the headline protocol (metrics.json's
    ``verification``): distance <= ``verification_threshold`` under ``verification_distance``."""
    v = numbers.get("verification")
    if not isinstance(v, dict) or "threshold" not in v:
        return {}
    return {"verification_threshold": repr(float(v["threshold"])),
            "verification_distance": str(v.get("distance", "cosine")),
            "verification_target_fpr": repr(float(v["target_fpr"])),
            "verification_tpr": f"{float(v.get('tpr_at_target_fpr', math.nan)):.2f}"}


def _requirements() -> list[str]:
    """Pinned without local version suffixes (torch 2.x+cu130 is no index's name)."""
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in ("torch", "torchvision", "numpy"):
        try:
            pins.append(f"{package}=={version(package).split('+')[0]}")
        except PackageNotFoundError:
            pass
    return pins


def model_signature(model, config: dict[str, Any]):
    """Tensor signature from a one-clip example: float32 (-1, T, 3, H, W) -> float32 (-1, D)."""
    import torch
    from mlflow.models import infer_signature

    clip = torch.zeros(1, config["seq_len"], 3, config["height"], config["width"], dtype=torch.float32)
    with torch.no_grad():
        embedding = model.eval()(clip)
    return infer_signature(clip.numpy(), embedding.float().numpy())


def _alias_version(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _tag_float(version, key: str) -> float:
    try:
        return float(version.tags.get(key, "nan"))
    except (TypeError, ValueError):
        return math.nan


def _log_model(mlflow, model, config: dict[str, Any]):
    return mlflow.pytorch.log_model(
        model,
        name="model",
        signature=model_signature(model, config),
        serialization_format="pickle",
        code_paths=[str(PSTA_PACKAGE)],  # the model loads without this project installed
        pip_requirements=_requirements(),  # explicit: inferring them costs a subprocess
        metadata={"config": {k: str(v) for k, v in config.items()}},
    )


def register(model_path: str | Path, stats_path: str | Path, metrics_path: str | Path) -> RegisteredVersion:
    """Log the model to the active MLflow run, register it and move the aliases."""
    import mlflow

    from psta.model import load_checkpoint

    dataset = json.loads(Path(stats_path).read_text())["dataset"]
    protocol, numbers = headline(json.loads(Path(metrics_path).read_text()))
    mAP = float(numbers["mAP"])
    model, checkpoint = load_checkpoint(model_path)
    config = checkpoint["config"]

    name = model_name(dataset)
    # pickle, not pt2: an exported graph would fix the batch size to the example's. MLflow warns
    # about pickle on every call; the choice is deliberate, so the stage log stays quiet.
    pytorch_log = logging.getLogger("mlflow.pytorch")
    level = pytorch_log.level
    pytorch_log.setLevel(logging.ERROR)
    try:
        info = _log_model(mlflow, model, config)
    finally:
        pytorch_log.setLevel(level)
    client = mlflow.MlflowClient()
    active = mlflow.active_run()
    run_tags = client.get_run(active.info.run_id).data.tags if active is not None else {}
    version = mlflow.register_model(info.model_uri, name, tags={
        "mAP": f"{mAP:.4f}",
        "rank1": f"{float(numbers.get('rank1', math.nan)):.4f}",
        "protocol": protocol,
        "dataset": dataset,
        **verification_tags(numbers),
        **{key: run_tags[key] for key in ("git_commit", "params_hash", "data_version") if key in run_tags},
    }).version
    client.set_registered_model_alias(name, CANDIDATE, version)

    champion = _alias_version(client, name, CHAMPION)
    best = _tag_float(champion, "mAP") if champion is not None else -math.inf
    # a champion without a readable mAP (set by hand, say) yields to any measured model
    promote = champion is None or math.isnan(best) or mAP >= best
    if promote:
        client.set_registered_model_alias(name, CHAMPION, version)
    result = RegisteredVersion(
        name=name, version=str(version), model_uri=f"models:/{name}/{version}", protocol=protocol,
        mAP=mAP, champion=promote, previous_champion=str(champion.version) if champion is not None else None,
    )
    mlflow.set_tags({
        "registered_model": name,
        "registered_version": str(version),
        "registered_aliases": f"{CANDIDATE},{CHAMPION}" if promote else CANDIDATE,
    })
    _logger().info(
        "registered %s version %s (%s mAP %.2f): %s", name, version, protocol, mAP,
        "new champion" if promote else f"champion stays version {champion.version} (mAP {best:.2f})",
    )
    return result


@stage_task(name="register-model")
def register_model(model_path: str | Path, stats_path: str | Path, metrics_path: str | Path) -> dict[str, Any]:
    """:func:`register` as a Prefect task of the calling flow."""
    return asdict(register(model_path, stats_path, metrics_path))
