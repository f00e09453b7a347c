"""What identifies a trained model downstream of evaluation: its checksum, its registered
version, and the calibrated same-person threshold of its evaluation."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from psta.integrity import file_sha256

SHA_TAG = "model_sha256"  # model version tag: the checkpoint's sha256 (data/models/model.pt)


def model_sha256(path: str | Path) -> str:
    return file_sha256(path)  # the digest model.pt.sha256 holds


def verification_threshold(metrics: dict[str, Any], protocol: str) -> float | None:
    """The calibrated same-person threshold of ``protocol`` in reports/metrics.json
    (``<protocol>.verification.threshold``), as a cosine distance ``1 - cos``: the search's and the
    served embeddings' distance. None while the evaluation calibrates none, and when it calibrated
    it on another distance (``evaluate.metric: euclidean``), which no cosine distance compares to."""
    block = (metrics.get(protocol) or {}).get("verification")
    if not isinstance(block, dict) or block.get("distance", "cosine") != "cosine":
        return None
    value = block.get("threshold")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def read_threshold(metrics_path: str | Path, protocol: str) -> float | None:
    path = Path(metrics_path)
    if not path.is_file():
        return None
    return verification_threshold(json.loads(path.read_text()), protocol)


def training_data_name(dataset_info: dict[str, Any]) -> str:
    """What the model was trained on, from data/ingest/dataset.json: ``synthetic-mars``, ``mars``,
    ``duke``, ``videos-<folder>``."""
    source, layout = dataset_info.get("source", "unknown"), dataset_info.get("layout", "")
    if source == "synthetic":
        return f"synthetic-{layout}"
    if source == "videos":
        return f"videos-{Path(str(dataset_info.get('source_root') or dataset_info.get('root', ''))).name}"
    return str(layout or source)


def registered_version(sha256: str) -> str | None:
    """``name/version`` of the latest registered model version built from this checkpoint, if
    any: looked up in the active MLflow store by the :data:`SHA_TAG` tag, under any model name."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        found = mlflow.MlflowClient().search_model_versions(f"tags.{SHA_TAG} = '{sha256}'")
    except MlflowException:
        return None
    if not found:
        return None
    latest = max(found, key=lambda v: (int(v.creation_timestamp or 0), int(v.version)))
    return f"{latest.name}/{latest.version}"
