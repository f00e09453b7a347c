"""The report's inputs (docs/CONTRACTS.md, "Evaluation outputs"), read once.

``eval_dir/results.json`` is required: missing or unreadable, it is a
:class:`ReportInputError` that says to run the evaluate stage. Every optional input that is
missing or unreadable becomes a short reason in :attr:`ReportInputs.notes` (keyed by input),
which its section shows as a "not available" note.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from psta.errors import UserError

__all__ = ["EVALUATE_HINT", "ReportInputError", "ReportInputs", "load_results", "read_inputs"]

EVALUATE_HINT = "run the evaluate stage first (`python -m pipeline evaluate`)"


class ReportInputError(UserError, FileNotFoundError):
    """A required input of the report (the evaluation results) is missing or unreadable."""


@dataclass
class ReportInputs:
    results: dict
    stats: dict | None = None
    metrics: dict | None = None
    history: pd.DataFrame | None = None
    ranked: pd.DataFrame | None = None
    eval_tracklets: pd.DataFrame | None = None
    index_tracklets: pd.DataFrame | None = None
    features: np.ndarray | None = None
    notes: dict[str, str] = field(default_factory=dict)


def load_results(eval_dir: str | os.PathLike) -> dict:
    """``eval_dir/results.json``, checked; a clear error naming the file if it is missing."""
    path = Path(eval_dir) / "results.json"
    if not path.is_file():
        raise ReportInputError(
            f"evaluation results not found: {path} does not exist. The report needs the "
            f"evaluate stage's outputs; {EVALUATE_HINT}.")
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ReportInputError(f"cannot read evaluation results {path}: {e}; {EVALUATE_HINT}.") from None
    if not isinstance(results, dict) or not isinstance(results.get("protocols"), dict) \
            or not results["protocols"]:
        raise ReportInputError(f"{path} has no 'protocols' results (see docs/CONTRACTS.md, "
                               f"'Evaluation outputs'); {EVALUATE_HINT}.")
    return results


def _optional_parquet(path: Path, notes: dict, key: str) -> pd.DataFrame | None:
    if not path.is_file():
        notes[key] = f"{path} not found"
        return None
    try:
        return pd.read_parquet(path)
    except Exception as e:  # a corrupt optional input: note it, render the rest
        notes[key] = f"cannot read {path}: {e}"
        return None


def _optional_json(path: Path | None, notes: dict, key: str) -> Any:
    if path is None:
        notes[key] = "no file given"
        return None
    if not path.is_file():
        notes[key] = f"{path} not found"
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        notes[key] = f"cannot read {path}: {e}"
        return None


def _history(path: Path | None, notes: dict) -> pd.DataFrame | None:
    if path is None:
        notes["history"] = "no training history given"
        return None
    if not path.is_file():
        notes["history"] = f"{path} not found (it is written by the train stage)"
        return None
    try:
        df = pd.read_csv(path)
    except Exception as e:
        notes["history"] = f"cannot read {path}: {e}"
        return None
    if df.empty:
        notes["history"] = f"{path} has no epochs"
        return None
    return df


def _optional_features(path: Path, notes: dict) -> np.ndarray | None:
    if not path.is_file():
        notes["features"] = f"{path} not found"
        return None
    try:
        return np.load(path, mmap_mode="r")
    except (OSError, ValueError) as e:
        notes["features"] = f"cannot read {path}: {e}"
        return None


def read_inputs(eval_dir: Path, index_dir: Path | None, history_csv: Path | None,
                metrics_json: Path | None) -> ReportInputs:
    """Every input of the report; raises :class:`ReportInputError` without results.json."""
    notes: dict[str, str] = {}
    inputs = ReportInputs(results=load_results(eval_dir), notes=notes)
    inputs.stats = _optional_json(index_dir / "stats.json" if index_dir else None, notes, "stats")
    inputs.metrics = _optional_json(metrics_json, notes, "metrics")
    inputs.history = _history(history_csv, notes)
    inputs.ranked = _optional_parquet(eval_dir / "ranked.parquet", notes, "ranked")
    inputs.eval_tracklets = _optional_parquet(eval_dir / "tracklets.parquet", notes, "eval_tracklets")
    inputs.features = _optional_features(eval_dir / "features.npy", notes)
    if index_dir is not None and (index_dir / "tracklets.parquet").is_file():
        inputs.index_tracklets = _optional_parquet(index_dir / "tracklets.parquet", notes,
                                                   "index_tracklets")
    return inputs
