"""Each stage remembers its open MLflow run, so the next start can close a run left RUNNING.

A stage killed with SIGKILL (or one whose tracking server was down when it ended) cannot mark
its own run. It writes ``.dvc/tmp/stage-<stage>.run.json`` (run id, tracking URI without
credentials, and, once known, the status it ended with and what was not logged) when the run
starts, and removes it once the run is properly ended. The next start of the same stage
finds the file and ends that run on the server: KILLED when the stage never got to say how it
ended, else the status it recorded, with a tag ``psta.closed_by`` saying so.
"""
from __future__ import annotations

import json
import os
import sys
import time

from pipeline.locks import LOCK_DIR
from psta.atomic import write_text_atomic


def _path(stage: str):
    return LOCK_DIR / f"stage-{stage}.run.json"


def remember(stage: str, run_id: str, tracking_uri: str) -> None:
    record = {"run_id": run_id, "tracking_uri": tracking_uri, "pid": os.getpid(), "started": time.time()}
    write_text_atomic(_path(stage), json.dumps(record) + "\n")


def settle(stage: str, status: str, unlogged: list[str]) -> None:
    """The run ended with ``status`` but the server could not be told: leave that for next time."""
    record = json.loads(_path(stage).read_text())
    record.update(status=status, unlogged=unlogged)
    write_text_atomic(_path(stage), json.dumps(record) + "\n")


def forget(stage: str) -> None:
    _path(stage).unlink(missing_ok=True)


def close_previous(stage: str, tracking_uri: str) -> str | None:
    """End the previous run of ``stage`` if it is still RUNNING; returns the status set, if any.

    Never raises: when the previous run's server does not answer, the record stays for later.
    """
    path = _path(stage)
    if not path.is_file():
        return None
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        record = json.loads(path.read_text())
        client = mlflow.MlflowClient(record.get("tracking_uri") or tracking_uri)
        try:
            run = client.get_run(record["run_id"])
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            path.unlink(missing_ok=True)  # that store no longer has it: nothing to close
            return None
        status = None
        if run.info.status == "RUNNING":
            status = record.get("status") or "KILLED"
            why = ("the stage was killed before it could end its run" if status == "KILLED"
                   else "the tracking server was unreachable when the stage ended")
            client.set_tag(run.info.run_id, "psta.closed_by", f"next {stage} start: {why}")
            if record.get("unlogged"):
                client.set_tag(run.info.run_id, "psta.unlogged", "; ".join(record["unlogged"])[:5000])
            client.set_terminated(run.info.run_id, status)
            print(f"note: marked the previous {stage} run {run.info.run_id} {status} ({why})",
                  file=sys.stderr)
        path.unlink(missing_ok=True)
        return status
    except Exception as err:  # noqa: BLE001 - bookkeeping of an old run must not stop this one
        print(f"warning: could not close the previous {stage} run recorded in {path} "
              f"({type(err).__name__}); trying again at the next start", file=sys.stderr)
        return None
