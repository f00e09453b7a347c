"""`python -m pipeline <stage>`: run one stage of dvc.yaml as a Prefect flow.

`repro` runs them all (dvc repro), `retrain` runs one retrain (repro + dvc push), `serve`
serves the scheduled deployment retrain/scheduled (pipeline/retrain.py), `search` searches
the gallery for a person (`python -m pipeline search --help`).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

STAGES = ("ingest", "index", "cache", "train", "evaluate", "report", "gallery", "export")


def _user_errors() -> tuple[type[Exception], ...]:
    """Bad input a user can fix: reported as one line, exit status 2."""
    from pipeline.params import ParamsError
    from psta.data.cache import CacheError
    from psta.errors import DatasetError
    from psta.export import ExportError
    from psta.model import PretrainedWeightsError

    return (ParamsError, DatasetError, CacheError, PretrainedWeightsError, ExportError)


def _search(argv: list[str]) -> int:
    from pipeline.search import search_command

    try:
        return search_command(argv)
    except _user_errors() as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for key, value in (("DO_NOT_TRACK", "1"), ("PREFECT_SERVER_ANALYTICS_ENABLED", "false"), ("MLFLOW_ENABLE_TELEMETRY", "false")):
        os.environ.setdefault(key, value)
    if argv[:1] == ["search"]:  # its own options (and --help)
        return _search(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    parser.add_argument(
        "stage", choices=(*STAGES, "repro", "retrain", "serve", "search"),
        help="a dvc.yaml stage; repro for all; retrain for one retrain (repro + dvc push); "
             "serve to serve the scheduled retrain deployment; search to find a person in the gallery",
    )
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    args, extra = parser.parse_known_args(argv)
    if extra and args.stage != "repro":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")

    from pipeline.params import load_params

    user_errors = _user_errors()

    try:
        load_params(args.params)  # fail on bad params before a flow (and its server) starts
        if args.stage == "repro":
            from pipeline.repro import run_dvc_repro

            return run_dvc_repro(extra, params_path=args.params)
        if args.stage == "serve":
            from pipeline.retrain import serve

            return serve(params_path=args.params)
        if args.stage == "retrain":
            from pipeline.retrain import RetrainBusy, RetrainFailed, retrain

            try:
                retrain(params_path=args.params)
            except (RetrainBusy, RetrainFailed) as err:
                print(f"error: {err}", file=sys.stderr)
                return 1
            return 0
        module = importlib.import_module(f"pipeline.stages.{args.stage}")
        module.flow_entry(params_path=args.params)
    except user_errors as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
