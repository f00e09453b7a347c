"""`python -m pipeline <stage>`: run one stage of dvc.yaml as a Prefect flow.

`repro` runs them all (dvc repro), `retrain` runs one retrain (repro + dvc push), `serve`
serves the scheduled deployment retrain/scheduled (pipeline/retrain.py), `splits-summary`
averages the DVC experiments of a 10-split dataset (pipeline/splits.py).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

STAGES = ("ingest", "index", "cache", "train", "evaluate", "report")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    parser.add_argument(
        "stage", choices=(*STAGES, "repro", "retrain", "serve", "splits-summary"),
        help="a dvc.yaml stage; repro for all; retrain for one retrain (repro + dvc push); "
             "serve to serve the scheduled retrain deployment; splits-summary for the mean and std "
             "over the data.split experiments",
    )
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    args, extra = parser.parse_known_args(argv)
    if extra and args.stage != "repro":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    for key, value in (("DO_NOT_TRACK", "1"), ("PREFECT_SERVER_ANALYTICS_ENABLED", "false"), ("MLFLOW_ENABLE_TELEMETRY", "false")):
        os.environ.setdefault(key, value)

    from pipeline.params import ParamsError, load_params
    from psta.data.cache import CacheError
    from psta.errors import DatasetError
    from pipeline.splits import SplitsSummaryError
    from psta.model import PretrainedWeightsError

    user_errors = (ParamsError, DatasetError, CacheError, PretrainedWeightsError, SplitsSummaryError)

    try:
        load_params(args.params)  # fail on bad params before a flow (and its server) starts
        if args.stage == "repro":
            from pipeline.repro import run_dvc_repro

            return run_dvc_repro(extra, params_path=args.params)
        if args.stage == "splits-summary":
            from pipeline.splits import splits_summary

            splits_summary(params_path=args.params)
            return 0
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
