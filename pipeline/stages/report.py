"""report: a self-contained HTML report (and a Markdown twin) of the data, training and results."""
from __future__ import annotations

from prefect import flow

from pipeline import paths
from pipeline.params import load_params
from pipeline.stage import log_files, read_dataset_info, stage_run, stage_task
from pipeline.stages.evaluate import METRICS_JSON
from pipeline.stages.train import HISTORY_CSV

REPORT_HTML = paths.REPORTS / "report.html"
REPORT_MD = paths.REPORTS / "report.md"


@stage_task
def render(num_examples: int) -> dict:
    from psta.report import build_report

    source = read_dataset_info()["source"]
    return build_report(paths.EVAL, paths.INDEX, paths.CACHE, HISTORY_CSV, METRICS_JSON,
                        REPORT_HTML, REPORT_MD, num_examples=num_examples, data_source=source)


@flow(name="report")
def report(params_path: str = "params.yaml") -> dict:
    params = load_params(params_path)
    with stage_run("report", params, ("report",)):
        written = render(params.report.num_examples)
        log_files(REPORT_HTML, REPORT_MD)
        return written


def flow_entry(params_path: str) -> dict:
    return report(params_path=params_path)
