"""Scheduled retraining: the Prefect flow `retrain` and its deployment `retrain/scheduled`.

One retrain = `python -m pipeline repro` (`dvc repro` inside one MLflow parent run: only the
stages whose params, code or data changed rerun, the evaluate stage registers the new model),
then `dvc push` of every output to the default DVC remote (params.yaml `retrain.push`), then a
commit of the new dvc.lock and metrics on the git branch `retrain.branch`, pushed to
`retrain.git_remote` (pipeline/gitrecord.py): without it the pushed outputs would be
unreachable from any other clone. The outcome is the flow's return value, a Prefect markdown
artifact `retrain-outcome`, log lines, and tags `retrain_outcome` / `retrain_pushed` /
`retrain_git_commit` / `prefect_flow_run_id` on the MLflow parent run.

At most one retrain runs at a time in a project: each run holds an exclusive, non-blocking
`flock` on `.dvc/tmp/retrain.lock` (git-ignored by DVC's own .gitignore) for its whole life, so
a second one is refused at once with the first one's pid and touches nothing. The kernel
releases the lock when the holder exits, killed or not: there is no stale lock to clean up.
The deployment also carries a concurrency limit of 1, so the Prefect server queues a second
scheduled or manual run (AwaitingConcurrencySlot) instead of starting it.

`python -m pipeline serve` (`make serve`) serves the deployment with `retrain.cron` from
params.yaml; it needs a Prefect server (`prefect server start`, PREFECT_API_URL set).
Trigger a run by hand with `prefect deployment run 'retrain/scheduled'`.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from pipeline import locks, servers
from pipeline.params import load_params
from pipeline.stage import stage_task

LOCK_PATH = locks.LOCK_DIR / "retrain.lock"
DEPLOYMENT = "scheduled"
ARTIFACT_KEY = "retrain-outcome"


class RetrainBusy(locks.Busy):
    """Another retrain holds the lock."""


class RetrainFailed(RuntimeError):
    """`dvc repro` or `dvc push` failed; the outcome was recorded before this was raised."""


def exclusive(path: str | Path = LOCK_PATH) -> contextlib.AbstractContextManager[Path]:
    """Hold the retrain lock, or raise :class:`RetrainBusy` at once (never waits)."""
    return locks.exclusive(path, lambda holder: (
        f"another retrain is running (pid {holder}); this one is refused and changed "
        f"nothing. Wait for it to finish: the lock {path} frees itself when that process ends."),
        RetrainBusy)


def _use_this_environment() -> None:
    """dvc.yaml commands call `python`: make it this interpreter's, and let every stage flow
    report to the Prefect server this run talks to (not a temporary one of its own)."""
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if path.split(os.pathsep)[0] != bin_dir:
        os.environ["PATH"] = os.pathsep.join([bin_dir, path]) if path else bin_dir
    if not os.environ.get("PREFECT_API_URL"):
        url = api_url()
        if url:
            os.environ["PREFECT_API_URL"] = url


def api_url() -> str | None:
    """PREFECT_API_URL from the environment or the active Prefect profile."""
    from prefect.settings import get_current_settings

    return get_current_settings().api.url or None


@stage_task(name="dvc-repro")
def reproduce(params_path: str) -> dict[str, Any]:
    """`dvc repro` inside one MLflow parent run (pipeline.repro); returns its exit code and run."""
    import mlflow

    from pipeline.repro import run_dvc_repro

    code = run_dvc_repro([], params_path=params_path)
    parent = mlflow.last_active_run()
    return {
        "exit_code": code,
        "parent_run_id": parent.info.run_id if parent is not None else None,
        "tracking_uri": mlflow.get_tracking_uri(),
    }


@stage_task(name="git-record")
def record_in_git(branch: str, remote: str, push_branch: bool) -> dict[str, Any]:
    """Commit dvc.lock + metrics on ``branch`` (pipeline.gitrecord); an error is returned, not raised."""
    from pipeline.gitrecord import GitRecordError, record

    logger = get_run_logger()
    try:
        result = record(branch, remote, push_branch)
    except GitRecordError as err:
        logger.error("recording the retrain in git failed: %s", err)
        return {"commit": None, "git_pushed": False, "error": str(err)}
    logger.info("retrain recorded on git branch %s: %s%s", branch, result["commit"],
                f", pushed to {remote}" if result["git_pushed"] else f" ({result['note'] or 'not pushed'})")
    return result


@stage_task(name="dvc-push")
def push() -> dict[str, Any]:
    """`dvc push` every output to the default remote (.dvc/config, or .dvc/config.local)."""
    proc = subprocess.run([servers.tool_path("dvc"), "push"], capture_output=True, text=True)
    output = (proc.stdout + proc.stderr).strip()
    logger = get_run_logger()
    (logger.info if proc.returncode == 0 else logger.error)("dvc push: %s", output[-2000:] or "(no output)")
    return {"exit_code": proc.returncode, "summary": output.splitlines()[-1] if output else ""}


def _markdown(outcome: dict[str, Any]) -> str:
    rows = "\n".join(f"| {key} | {value} |" for key, value in outcome.items())
    return f"# Retrain {outcome['status']}\n\n| | |\n|---|---|\n{rows}\n"


def record(outcome: dict[str, Any]) -> None:
    """Leave the outcome where people look: a Prefect artifact, the log, the MLflow parent run."""
    from prefect.artifacts import create_markdown_artifact

    logger = get_run_logger()
    (logger.info if outcome["status"] == "succeeded" else logger.error)("retrain outcome: %s", outcome)
    create_markdown_artifact(markdown=_markdown(outcome), key=ARTIFACT_KEY,
                             description="outcome of the latest retrain")
    if outcome.get("parent_run_id"):
        try:
            import mlflow

            client = mlflow.MlflowClient(tracking_uri=outcome["tracking_uri"])
            run_id = outcome["parent_run_id"]
            client.set_tag(run_id, "retrain_outcome", outcome["status"])
            client.set_tag(run_id, "retrain_pushed", str(outcome["pushed"]).lower())
            if outcome.get("git_commit"):
                client.set_tag(run_id, "retrain_git_commit", outcome["git_commit"])
            if outcome.get("flow_run_id"):
                client.set_tag(run_id, "prefect_flow_run_id", outcome["flow_run_id"])
        except Exception as err:  # the outcome is already in Prefect; MLflow tags are a courtesy
            logger.warning("could not tag MLflow run %s: %s", outcome["parent_run_id"], err)


@flow(name="retrain")
def retrain(params_path: str = "params.yaml", push_outputs: bool | None = None) -> dict[str, Any]:
    """Reproduce the pipeline, push its outputs, record the outcome; one at a time per project.

    ``push_outputs`` overrides params.yaml ``retrain.push``.
    """
    from prefect.runtime import flow_run

    params = load_params(params_path)
    do_push = params.retrain.push if push_outputs is None else push_outputs
    with exclusive():
        _use_this_environment()
        started = time.time()
        repro = reproduce(params_path)
        pushed: bool | str = "skipped"
        push_summary = ""
        if repro["exit_code"] == 0 and do_push:
            result = push()
            pushed = result["exit_code"] == 0
            push_summary = result["summary"]
        git: dict[str, Any] = {}
        if repro["exit_code"] == 0 and pushed is not False and params.retrain.branch:
            # the branch goes to the git remote only when the data it names is on the DVC remote
            git = record_in_git(params.retrain.branch, params.retrain.git_remote, pushed is True)
        ok = repro["exit_code"] == 0 and pushed is not False and "error" not in git
        outcome = {
            "status": "succeeded" if ok else "failed",
            "dvc_repro_exit_code": repro["exit_code"],
            "pushed": pushed,
            "push_summary": push_summary,
            "git_commit": git.get("commit"),
            "git_branch": params.retrain.branch if git.get("commit") else "",
            "git_pushed": git.get("git_pushed", False),
            "parent_run_id": repro["parent_run_id"],
            "tracking_uri": repro["tracking_uri"],
            "flow_run_id": flow_run.get_id(),
            "duration_s": round(time.time() - started, 1),
            "project": str(Path.cwd()),
        }
        record(outcome)
    if not ok:
        what = "dvc repro" if repro["exit_code"] != 0 else "dvc push" if pushed is False else "git record"
        raise RetrainFailed(f"retrain failed in {what}: {outcome}")
    return outcome


def serve(params_path: str = "params.yaml") -> int:
    """Serve `retrain/scheduled` on params.yaml's cron until interrupted (`python -m pipeline serve`)."""
    from prefect.types.entrypoint import EntrypointType

    params = load_params(params_path)  # retrain.cron is checked there
    url = api_url()
    how = ("run `prefect server start` in another shell, then "
           "`export PREFECT_API_URL=http://127.0.0.1:4200/api` (or `prefect config set PREFECT_API_URL=...`)")
    if not url:
        print(f"error: `python -m pipeline serve` needs a Prefect server: {how}", file=sys.stderr)
        return 2
    if not servers.http_ok(url.rstrip("/") + "/health", timeout=5):
        print(f"error: no Prefect server answers at PREFECT_API_URL={url}: {how}", file=sys.stderr)
        return 2
    os.environ["PREFECT_API_URL"] = url  # the flow runs inherit it
    retrain.serve(
        name=DEPLOYMENT,
        cron=params.retrain.cron,
        global_limit=1,  # the server queues a second run instead of starting it
        limit=1,
        parameters={"params_path": params_path},
        description=__doc__.split("\n\n")[0],
        tags=["psta", "retrain"],
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    return 0
