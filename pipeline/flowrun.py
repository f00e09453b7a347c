"""What a stage's Prefect flow run shows: the library's log lines, its tags, a link to MLflow.

Inside a flow, :func:`library_logs` sends every record of the ``psta`` loggers (the trainer's
line per epoch among them) to Prefect's run logger: to the flow or task run in the UI and, via
Prefect's console handler, to the terminal. :func:`link_mlflow_run` tags the flow run with the
stage's params hash and MLflow run id, adds a link artifact to the MLflow run, and tags the
MLflow run with the flow run's id and URL, so each side leads to the other.
"""
from __future__ import annotations

import contextlib
import logging
import sys
from typing import Iterator

LIBRARY_LOGGER = "psta"


class _ToRunLogger(logging.Handler):
    """Re-emit a record through the Prefect logger of the current flow or task run."""

    def emit(self, record: logging.LogRecord) -> None:
        from prefect.exceptions import MissingContextError
        from prefect.logging import get_run_logger

        try:
            get_run_logger().log(record.levelno, record.getMessage())
        except MissingContextError:  # a thread or process outside the run: plain stderr
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def library_logs(level: int = logging.INFO) -> Iterator[None]:
    """Route ``psta`` log records at ``level`` and above to the Prefect run logger meanwhile."""
    logger = logging.getLogger(LIBRARY_LOGGER)
    handler = _ToRunLogger(level)
    handler.setFormatter(logging.Formatter("%(asctime)s | %(levelname)-7s | %(name)s - %(message)s"))
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(min(level, logger.getEffectiveLevel()))
    logger.propagate = False  # Prefect's console handler prints it once; the root's would again
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def flow_run_url(flow_run_id: str) -> str | None:
    """The Prefect UI page of a flow run, when a UI is configured (not for a temporary server)."""
    from prefect.settings import PREFECT_UI_URL

    ui = PREFECT_UI_URL.value()
    return f"{ui.rstrip('/')}/runs/flow-run/{flow_run_id}" if ui else None


def link_mlflow_run(run, stage: str, params_hash: str, mlflow_url: str) -> None:
    """Cross-link the current Prefect flow run and the stage's MLflow run (no-op outside a flow)."""
    import mlflow
    from prefect.artifacts import create_link_artifact
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    flow_run_id = flow_run.get_id()
    if not flow_run_id:
        return
    tags = {"psta", f"stage:{stage}", f"params:{params_hash[:12]}", f"mlflow-run:{run.info.run_id}"}
    try:
        with get_client(sync_client=True) as client:
            current = client.read_flow_run(flow_run_id)
            client.update_flow_run(flow_run_id, tags=sorted(set(current.tags) | tags))
        create_link_artifact(link=mlflow_url, link_text=f"MLflow run of the {stage} stage",
                             key=f"mlflow-run-{stage}", description=f"MLflow run {run.info.run_id}")
    except Exception as err:  # a courtesy: the stage's work must not depend on it
        logging.getLogger(__name__).warning("could not link flow run %s to MLflow: %s", flow_run_id, err)
    mlflow.set_tag("prefect_flow_run_id", str(flow_run_id))
    url = flow_run_url(str(flow_run_id))
    if url:
        mlflow.set_tag("prefect_flow_run_url", url)
