"""The dataset a run used, as an MLflow dataset input (the UI's "Datasets" column).

The index and train runs log the tracklet index (``data/index/tracklets.parquet``, its schema
and row count) with:

- ``name``: the dataset (``mars``, ``duke``; ``synthetic-mars`` for the embedded demo);
- ``digest``: the first 12 hex digits of the sha256 of the index files, so two runs on the same
  data show the same digest and a changed index a new one;
- ``source``: the dataset root the index was read from (``data.root``, absolute).
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

from pipeline import paths
from pipeline.stage import read_dataset_info

INDEX_FILES = ("tracklets.parquet", "frames.parquet")


def index_digest(index_dir: Path = paths.INDEX) -> str:
    sha = hashlib.sha256()
    for name in INDEX_FILES:
        with open(index_dir / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                sha.update(block)
    return sha.hexdigest()[:12]


def dataset_name(info: dict) -> str:
    return f"synthetic-{info['layout']}" if info.get("source") == "synthetic" else str(info["layout"])


def log_dataset_input(context: str) -> dict[str, str]:
    """Log the index as the active run's dataset input; returns its name, digest and source."""
    import mlflow
    import pandas as pd
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    info = read_dataset_info()
    source = str(Path(info["root"]).resolve())
    with warnings.catch_warnings():  # MLflow registers its local-path source twice and says so
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        resolved = resolve_dataset_source(source)
    dataset = mlflow.data.from_pandas(pd.read_parquet(paths.INDEX / "tracklets.parquet"),
                                      source=resolved, name=dataset_name(info), digest=index_digest())
    mlflow.log_input(dataset, context=context)
    return {"name": dataset.name, "digest": dataset.digest, "source": source}
