"""report: a self-contained HTML report (and a Markdown twin) of the data, training and results.

The report's run logs every figure as an MLflow image (the run's image grid), and the
provenance the report states includes the registered model version the evaluate run created.
"""
from __future__ import annotations

import datetime
from pathlib import Path

from pipeline import paths
from pipeline.params import load_params
from pipeline.stage import log_files, read_dataset_info, stage_flow, stage_run, stage_task
from pipeline.stages.evaluate import METRICS_JSON
from pipeline.stages.train import HISTORY_CSV

REPORT_HTML = paths.REPORTS / "report.html"
REPORT_MD = paths.REPORTS / "report.md"
FIGURES = paths.REPORTS / "figures"


def registered_version(eval_run_id: str | None) -> dict[str, str]:
    """The model version registered from the evaluate run ``eval_run_id``, if the store has it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    if not eval_run_id:
        return {}
    try:
        versions = mlflow.MlflowClient().search_model_versions(f"run_id = '{eval_run_id}'")
    except MlflowException:
        return {}
    if not versions:
        return {}
    latest = max(versions, key=lambda v: int(v.version))
    return {"registered_model": latest.name, "registered_version": str(latest.version)}


def report_provenance() -> dict[str, str]:
    from psta.report.inputs import load_results

    results = load_results(paths.EVAL)  # missing or unreadable: one error saying to run evaluate
    evaluated = results.get("provenance") or {}
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return {**registered_version(evaluated.get("mlflow_run_id")), "report_date": now}


@stage_task
def render(num_examples: int, source: str, provenance: dict[str, str]) -> dict:
    from psta.report import build_report

    return build_report(paths.EVAL, paths.INDEX, paths.CACHE, HISTORY_CSV, METRICS_JSON,
                        REPORT_HTML, REPORT_MD, num_examples=num_examples, data_source=source,
                        provenance=provenance)


def log_figures(names: list[str]) -> None:
    """Every figure as an MLflow image, keyed by its file name without .png."""
    import mlflow
    from PIL import Image

    for name in names:
        with Image.open(FIGURES / name) as image:
            mlflow.log_image(image.convert("RGB"), key=Path(name).stem, step=0, synchronous=True)


@stage_flow("report")
def report(params_path: str = "params.yaml") -> dict:
    params = load_params(params_path)
    with stage_run("report", params, ("report",)):
        source = read_dataset_info()["source"]  # the inputs checked in pipeline order: ingest, evaluate
        written = render(params.report.num_examples, source, report_provenance())
        log_files(REPORT_HTML, REPORT_MD)
        log_figures(written["figures"])
        return written


def flow_entry(params_path: str) -> dict:
    return report(params_path=params_path)
