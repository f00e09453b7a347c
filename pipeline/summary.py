"""The lines `make run` ends with: what was measured, where it is, and how to look at it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline import paths
from pipeline.registry import headline

REPORT = paths.REPORTS / "report.html"
METRICS = paths.REPORTS / "metrics.json"


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _evaluate_run(client, parent) -> Any | None:
    """The evaluate stage's run of this execution (None when evaluate was up to date)."""
    runs = client.search_runs(
        [parent.info.experiment_id], max_results=1,
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}' and tags.stage = 'evaluate'",
    )
    return runs[0] if runs else None


def _model_line(client, parent) -> str:
    run = _evaluate_run(client, parent)
    if run is None:
        return "evaluate was up to date: no new model version"
    tags = run.data.tags
    if "registered_version" not in tags:
        return f"evaluate run {run.info.run_id} registered no model"
    return (f"model {tags['registered_model']} version {tags['registered_version']} "
            f"[{tags.get('registered_aliases', '')}], evaluate run {run.info.run_id}")


def _results_line(metrics: dict[str, Any], dataset: str | None) -> str:
    try:
        protocol, head = headline(metrics, dataset)
    except ValueError:
        return "no metrics (reports/metrics.json is missing)"
    others = [f"{name} {v['rank1']:.1f} / {v['mAP']:.1f}" for name, v in metrics.items()
              if name not in (protocol, "untrained") and isinstance(v, dict) and "mAP" in v]
    line = f"rank-1 {head['rank1']:.1f}%  mAP {head['mAP']:.1f}%  ({protocol} protocol)"
    return line + (f"; also {', '.join(others)}" if others else "")


def summary(parent, tracking_uri: str, prefect_ui: str | None, seconds: float) -> str:
    """The closing lines of a successful `python -m pipeline repro` (``parent``: its MLflow run)."""
    import mlflow

    from pipeline.tracking import run_url

    client = mlflow.MlflowClient(tracking_uri)
    info = _read(paths.DATASET_INFO)
    data = f"{info.get('source', '?')} ({info.get('layout', '?')} layout)"
    minutes, secs = divmod(int(round(seconds)), 60)
    mlflow_ui = run_url(parent, tracking_uri)
    local_mlflow = not tracking_uri.startswith(("http://", "https://"))
    lines = [
        f"PSTA pipeline finished in {minutes} min {secs:02d} s",
        f"  test data    {data}",
        f"  result       {_results_line(_read(METRICS), info.get('layout'))}",
        f"  report       {REPORT}" + ("" if REPORT.exists() else " (not written)"),
        f"  MLflow       run {parent.info.run_id}; {_model_line(client, parent)}",
        f"  MLflow UI    {'`make ui`, then ' if local_mlflow else ''}{mlflow_ui}",
    ]
    if prefect_ui:
        lines.append(f"  Prefect UI   {prefect_ui}")
    lines.append("  record it    git add dvc.lock params.yaml reports/ && git commit; dvc push")
    return "\n".join(lines)
