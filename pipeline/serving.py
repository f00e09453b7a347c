"""The registered model as users serve it: a pixel-in, embedding-out MLflow pyfunc.

:func:`log_pixel_model` logs data/models/model.pt as the pyfunc of pipeline/pixel_model.py
(models from code: the ``psta`` package travels with it, so it loads without this project),
with a tensor signature uint8 ``B x T x H x W x 3`` -> float32 ``B x D`` and the contract in
its metadata. Serve it as a user does::

    mlflow models serve -m models:/psta-mars@champion --env-manager local --port 5001
    curl -X POST localhost:5001/invocations -H 'Content-Type: application/json' \\
         -d '{"inputs": <B x T x H x W x 3 integers 0-255>}'
"""
from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path
from typing import Any, Iterator

from pipeline.model_info import SHA_TAG, model_sha256, training_data_name

PIXEL_MODEL = Path(__file__).with_name("pixel_model.py")
PSTA_PACKAGE = Path(__file__).resolve().parents[1] / "psta"


def pixel_signature(feature_dim: int):
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, -1, 3), "frames")]),  # pixel_model.INPUT
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, feature_dim), "embeddings")]),
    )


def contract(config: dict[str, Any], serving: dict[str, Any], feature_dim: int) -> str:
    return (f"Input: uint8 RGB frames B x T x H x W x 3 (B clips of T frames, any H x W, integers 0-255), "
            f"JSON {{\"inputs\": [...]}} to /invocations. Inside, exactly as the evaluation: frames resized "
            f"to {config['height']} x {config['width']} (bicubic, antialias), ImageNet-normalised, and "
            f"{serving['sampling']} test sampling of T={config['seq_len']} frames per clip (a clip of "
            f"{config['seq_len']} frames is used as it is). Output: float32 B x {feature_dim} L2-normalised "
            "embeddings; cosine distance = 1 - dot product; same person when it is at most the version tag "
            "'verification_threshold' (none until calibrated) and 'verification_distance' is cosine.")


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in ("torch", "torchvision", "numpy", "pandas", "mlflow"):
        try:
            pins.append(f"{package}=={version(package).split('+')[0]}")
        except PackageNotFoundError:
            pass
    return pins


@contextlib.contextmanager
def pixel_model(model_path: str | Path, config: dict[str, Any], feature_dim: int,
                serving: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The keyword arguments of ``mlflow.pyfunc.log_model`` / ``save_model`` for the pixel model
    of a checkpoint. ``serving``: the evaluation's ``sampling`` (+ ``max_clips``, ``seed``),
    ``precision`` and ``batch_size``."""
    settings = {**serving, **{k: config[k] for k in ("seq_len", "height", "width")}}
    with tempfile.TemporaryDirectory() as tmp:
        settings_file = Path(tmp) / "serving.json"
        settings_file.write_text(json.dumps(settings, indent=2))
        yield {
            "python_model": str(PIXEL_MODEL),
            "artifacts": {"checkpoint": str(model_path), "serving": str(settings_file)},
            "code_paths": [str(PSTA_PACKAGE)], "signature": pixel_signature(feature_dim),
            "pip_requirements": _requirements(),
            "metadata": {"contract": contract(config, settings, feature_dim),
                         "config": {k: str(v) for k, v in config.items()}},
        }


def log_pixel_model(model_path: str | Path, config: dict[str, Any], feature_dim: int, serving: dict[str, Any]):
    """Log the checkpoint as the pixel pyfunc under the active run (artifact path ``model``);
    returns the ModelInfo."""
    import mlflow

    with pixel_model(model_path, config, feature_dim, serving) as kwargs:
        return mlflow.pyfunc.log_model(name="model", **kwargs)


def serving_tags(model_path: str | Path, dataset_info_path: str | Path) -> dict[str, str]:
    """Version tags: the checkpoint's sha256 and the training data's name (data/ingest/dataset.json)."""
    return {SHA_TAG: model_sha256(model_path),
            "training_data": training_data_name(json.loads(Path(dataset_info_path).read_text()))}


def describe_version(client, name: str, version: str, model_uri: str) -> None:
    """Put the model's contract (from its metadata) into the version's description."""
    import mlflow

    info = mlflow.models.get_model_info(model_uri)
    client.update_model_version(name, version, description=(info.metadata or {}).get("contract", ""))
