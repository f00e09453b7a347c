"""`python -m pipeline repro`: one pipeline execution = one MLflow parent run around `dvc repro`.

Each stage process finds the parent's id in PSTA_PARENT_RUN_ID and nests its run under it.
Without PREFECT_API_URL every flow would boot a temporary Prefect server of its own (6-16 s
each); one server for the whole execution costs that once.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

from pipeline import servers, tracking
from pipeline.params import SECTIONS, load_params

PREFECT_HOME = Path(".prefect")
# the port `python -m pipeline prefect-ui` serves: a run's "View at" links stay valid there later
PREFECT_UI_PORT = 4200


def run_dvc_repro(dvc_args: list[str], params_path: str = "params.yaml", own_prefect_server: bool = True) -> int:
    import mlflow

    from pipeline.plots import write_html_template

    started = time.monotonic()
    params = load_params(params_path)
    write_html_template()  # `dvc plots show` afterwards draws offline
    mlflow.set_tracking_uri(tracking.tracking_uri())
    tracking.use_experiment(params.tracking.experiment)
    tags = {"stage": "pipeline", "git_commit": tracking.git_commit(), "params_hash": params.digest()}
    with mlflow.start_run(run_name="pipeline", tags=tags) as parent:
        mlflow.log_params(tracking.flatten(params.sections(*SECTIONS)))
        env = {**os.environ, tracking.PARENT_RUN_ENV: parent.info.run_id}
        env.pop("MLFLOW_RUN_ID", None)
        prefect_ui = _prefect_ui(env.get("PREFECT_API_URL"))
        with contextlib.ExitStack() as stack:
            if own_prefect_server and not env.get("PREFECT_API_URL"):
                # a project-local home keeps the flow-run history and the server's log
                server = servers.prefect_server(PREFECT_HOME.resolve(), preferred=PREFECT_UI_PORT)
                env["PREFECT_API_URL"] = stack.enter_context(server)
                prefect_ui = (f"`make prefect-ui`, then http://127.0.0.1:{PREFECT_UI_PORT}/runs "
                              f"(the flow-run history kept in {PREFECT_HOME}/)")
            code = subprocess.run([servers.tool_path("dvc"), "repro", *dvc_args], env=env).returncode
        mlflow.set_tag("data_version", tracking.data_version())
        metrics = Path("reports/metrics.json")
        if code == 0 and metrics.exists():
            from pipeline.stage import log_numbers, read_json

            log_numbers(read_json(metrics))
        if code != 0:
            mlflow.set_tag("failure", f"dvc repro exited with {code}")
            mlflow.end_run(status="FAILED")
    if code == 0:
        from pipeline.summary import summary

        try:
            print(summary(parent, mlflow.get_tracking_uri(), prefect_ui, time.monotonic() - started), flush=True)
        except Exception as err:  # the run succeeded; a summary that cannot be read must not fail it
            print(f"(no summary: {err})", file=sys.stderr)
    return code


def _prefect_ui(api_url: str | None) -> str | None:
    """The flow-run list of the UI of a Prefect server the user runs (PREFECT_API_URL)."""
    return f"{api_url.rstrip('/').removesuffix('/api')}/runs" if api_url else None
