"""The MLflow model registry: every evaluated model becomes a version of ``psta-<test data>``.

The name says what the model was tested on: ``psta-mars`` / ``psta-duke`` for a real dataset,
``psta-synthetic-mars`` for the embedded demo, ``psta-videos-mars`` for tracklets cut from your
own cameras. A demo model's mAP never stands beside a real one's.

Called at the end of the evaluate stage, inside its MLflow run. The trained model
(data/models/model.pt) is rebuilt with :func:`psta.model.load_checkpoint` and logged with
``mlflow.pytorch.log_model``: pickled (any batch size), the ``psta`` package along as code (it
loads without this project installed), pinned requirements, and a tensor signature: a float32
clip batch ``B x T x 3 x H x W`` -> ``B x D`` embeddings. The new version gets:

- the alias ``candidate`` (always: the latest evaluated model);
- the alias ``champion`` when it was evaluated on the same test data as the current champion
  (same ``test_data_digest``) and its mAP under the dataset's headline protocol (e.g.
  mars_official) is at least the champion's. A model evaluated on
  other test data is not compared: the champion stays until someone moves the alias by hand;
  from then on models compete on the new test data;
- version tags ``mAP``, ``rank1`` (percent), ``protocol``, ``dataset``, ``source``,
  ``test_data_digest``, ``git_commit``, ``params_hash``, ``data_version``, and the calibrated
  "same person" rule: ``verification_threshold`` (a pair is the same person when its
  ``verification_distance`` is at most it), ``verification_target_fpr``, ``verification_tpr``.

Load a model anywhere with ``mlflow.pytorch.load_model("models:/psta-mars@champion")``.
The registry lives in the same store as the runs: the tracking server, or the local SQLite
store the stage fell back to.
"""
from __future__ import annotations

import hashlib
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
    decision: str = ""  # why the champion alias moved or stayed


def model_name(dataset: str, source: str | None = None) -> str:
    """``psta-<layout>`` for a real dataset, ``psta-<source>-<layout>`` for generated test data."""
    return f"psta-{dataset}" if source in (None, dataset) else f"psta-{source}-{dataset}"


def digest_of_test_split(index_dir: str | Path) -> str:
    """sha256 of the test split of the index: query and gallery tracklets and their frame lists.

    Training rows are left out (a model trained on more identities is still comparable), and so
    are pixels: the digest changes when the test tracklets, their frames or their labels do.
    """
    from psta.index import read_index

    index = read_index(index_dir)
    test = index.tracklets[index.tracklets["split"] != "train"]
    frames = index.frames[index.frames["tracklet_id"].isin(test["tracklet_id"])]
    digest = hashlib.sha256(test[["split", "pid", "camid", "n_frames", "name"]].to_csv(index=False).encode())
    digest.update("\n".join(frames["path"].astype(str)).encode())
    return digest.hexdigest()


def headline(metrics: dict[str, Any], dataset: str | None = None) -> tuple[str, dict[str, Any]]:
    """The headline protocol of reports/metrics.json and its numbers: ``dataset``'s headline
    protocol (psta.data.registry) when given and present, else the first protocol."""
    from psta.data.registry import DATASETS

    preferred = DATASETS[dataset].headline_protocol if dataset in DATASETS else None
    if isinstance(metrics.get(preferred), dict) and "mAP" in metrics[preferred]:
        return preferred, metrics[preferred]
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


def _promotes(champion, mAP: float, digest: str) -> tuple[bool, str]:
    """Whether a new version with ``mAP`` on test data ``digest`` takes the champion alias, and why."""
    if champion is None:
        return True, "first champion"
    best = _tag_float(champion, "mAP")
    if math.isnan(best):  # a champion without a readable mAP (set by hand, say) yields
        return True, "new champion"
    if champion.tags.get("test_data_digest") != digest:
        return False, (f"not compared: champion version {champion.version} was evaluated on other "
                       "test data; move the alias by hand to make this test data the reference")
    if mAP >= best:
        return True, "new champion"
    return False, f"champion stays version {champion.version} (mAP {best:.2f})"


def register(model_path: str | Path, stats_path: str | Path, metrics_path: str | Path,
             source: str | None = None) -> RegisteredVersion:
    """Log the model to the active MLflow run, register it and move the aliases.

    ``source`` is params.yaml ``data.source`` (synthetic, videos, mars, ...); it names the model.
    """
    import mlflow

    from psta.model import load_checkpoint

    dataset = json.loads(Path(stats_path).read_text())["dataset"]
    protocol, numbers = headline(json.loads(Path(metrics_path).read_text()), dataset)
    mAP = float(numbers["mAP"])
    digest = digest_of_test_split(Path(stats_path).parent)
    model, checkpoint = load_checkpoint(model_path)
    config = checkpoint["config"]

    name = model_name(dataset, source)
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
        "source": source or dataset,
        "test_data_digest": digest,
        **verification_tags(numbers),
        **{key: run_tags[key] for key in ("git_commit", "params_hash", "data_version") if key in run_tags},
    }).version
    client.set_registered_model_alias(name, CANDIDATE, version)

    champion = _alias_version(client, name, CHAMPION)
    promote, why = _promotes(champion, mAP, digest)
    if promote:
        client.set_registered_model_alias(name, CHAMPION, version)
    result = RegisteredVersion(
        name=name, version=str(version), model_uri=f"models:/{name}/{version}", protocol=protocol,
        mAP=mAP, champion=promote, previous_champion=str(champion.version) if champion is not None else None,
        decision=why,
    )
    mlflow.set_tags({
        "registered_model": name,
        "registered_version": str(version),
        "registered_aliases": f"{CANDIDATE},{CHAMPION}" if promote else CANDIDATE,
    })
    _logger().info("registered %s version %s (%s mAP %.2f): %s", name, version, protocol, mAP, why)
    return result


@stage_task(name="register-model")
def register_model(model_path: str | Path, stats_path: str | Path, metrics_path: str | Path,
                   source: str | None = None) -> dict[str, Any]:
    """:func:`register` as a Prefect task of the calling flow."""
    return asdict(register(model_path, stats_path, metrics_path, source))
