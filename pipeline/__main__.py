"""`python -m pipeline <stage>`: run one stage of dvc.yaml as a Prefect flow.

`repro` runs them all (dvc repro), `retrain` runs one retrain (repro + dvc push), `serve`
serves the scheduled deployment retrain/scheduled (pipeline/retrain.py), `splits-summary`
averages the DVC experiments of a 10-split dataset (pipeline/splits.py), `prefect-ui` serves
the Prefect UI over the flow-run history that `repro` keeps in .prefect/, `search` searches
the gallery for a person (`python -m pipeline search --help`), `export` writes the ONNX model.

Bad input of any kind (params, dataset, cache, weights, report inputs: a psta.errors.UserError)
is one line on stderr and exit code 2. params.yaml and what its stages need from the machine
are checked before any Prefect server, MLflow run or DVC command starts.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys

STAGES = ("ingest", "index", "cache", "train", "evaluate", "gallery", "report")
COMMANDS = ("repro", "retrain", "serve", "splits-summary", "prefect-ui", "export", "search")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["search"]:  # its own options (and --help)
        return _search(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    parser.add_argument(
        "stage", choices=(*STAGES, *COMMANDS),
        help="a dvc.yaml stage; repro for all; retrain for one retrain (repro + dvc push); "
             "serve to serve the scheduled retrain deployment; splits-summary for the mean and std "
             "over the data.split experiments; prefect-ui for the flow-run history; export for the "
             "ONNX model; search to find a person in the gallery",
    )
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    parser.add_argument("--port", type=int, default=4200, help="prefect-ui: the port (default: %(default)s)")
    args, extra = parser.parse_known_args(argv)
    if extra and args.stage != "repro":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    _no_telemetry()

    if args.stage == "prefect-ui":  # reads no params: it only shows what earlier runs kept
        from pipeline.repro import PREFECT_HOME
        from pipeline.servers import serve_prefect_ui

        return serve_prefect_ui(PREFECT_HOME.resolve(), args.port)

    from pipeline.locks import Busy
    from psta.errors import UserError

    try:
        return _run(args.stage, args.params, extra)
    except Busy as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except UserError as err:
        print(f"error: {_message(err)}", file=sys.stderr)
        return 2


def _no_telemetry() -> None:
    for key, value in (("DO_NOT_TRACK", "1"), ("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
                       ("MLFLOW_ENABLE_TELEMETRY", "false")):
        os.environ.setdefault(key, value)
    if not sys.stderr.isatty():  # MLflow's artifact bars, like ours, only on a terminal (pipeline.stage.bars)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _search(argv: list[str]) -> int:
    from pipeline.search import search_command
    from psta.errors import UserError

    _no_telemetry()
    try:
        return search_command(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _run(stage: str, params_path: str, extra: list[str]) -> int:
    from pipeline.params import load_params
    from pipeline.preflight import check_stages

    if stage == "splits-summary":   # reads experiments' metrics: needs valid params, nothing else
        from pipeline.splits import splits_summary

        load_params(params_path)
        splits_summary(params_path=params_path)
        return 0

    # fail on bad params, and on what they need from this machine, before a flow (and its server) starts
    whole = stage in ("repro", "retrain", "serve")  # these run every stage
    check_stages(load_params(params_path), STAGES if whole else (stage,), params_path)
    if stage == "repro":
        from pipeline.repro import run_dvc_repro

        return run_dvc_repro(extra, params_path=params_path)
    if stage == "serve":
        from pipeline.retrain import serve

        return serve(params_path=params_path)
    if stage == "retrain":
        from pipeline.retrain import RetrainBusy, RetrainFailed, retrain

        try:
            retrain(params_path=params_path)
        except (RetrainBusy, RetrainFailed) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        return 0
    module = importlib.import_module(f"pipeline.stages.{stage}")
    with _stage_guard(stage):
        _user_errors_without_traceback()
        module.flow_entry(params_path=params_path)
    return 0


def _message(err: Exception) -> str:
    """The error's own message, also when a DataLoader worker wrapped it with its traceback."""
    text = str(err)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if last.startswith(type(err).__module__) else last
    return text


class _DropUserErrorTraceback(logging.Filter):
    """Prefect logs a failed flow or task run with its traceback; for bad input (a UserError)
    the message is the whole story, so the record keeps the message and loses the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        from psta.errors import UserError

        if record.exc_info and isinstance(record.exc_info[1], UserError):
            record.exc_info, record.exc_text = None, None
        return True


def _user_errors_without_traceback() -> None:
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropUserErrorTraceback) for f in logger.filters):
            logger.addFilter(_DropUserErrorTraceback())


@contextlib.contextmanager
def _stage_guard(stage: str):
    """One run of a stage at a time (torchrun's other ranks write nothing), after sweeping the
    temporary files its killed predecessors left."""
    if os.environ.get("RANK", "0") != "0":
        yield
        return
    from pipeline.locks import stage_lock
    from pipeline.stage import sweep_stage_temps

    with stage_lock(stage):
        sweep_stage_temps(stage)
        yield


if __name__ == "__main__":
    sys.exit(main())
