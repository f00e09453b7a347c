"""The pattern every stage follows: validated params -> MLflow run -> psta -> atomic outputs."""
from __future__ import annotations

import contextlib
import functools
import json
import numbers
from pathlib import Path
from typing import Any, Iterator

from prefect import task
from prefect.cache_policies import NONE

from pipeline import paths, tracking
from pipeline.params import Params


# Stage tasks pass large in-memory tables between them; hashing those for Prefect's input cache
# would cost more than the work, and DVC already decides what needs to rerun.
stage_task = functools.partial(task, cache_policy=NONE)


@contextlib.contextmanager
def stage_run(name: str, params: Params, sections: tuple[str, ...]) -> Iterator[Any]:
    """The stage's MLflow run, logging the params sections it reads."""
    with tracking.stage_run(
        name,
        params.sections(*sections),
        experiment=params.tracking.experiment,
        params_hash=params.digest(*sections),
    ) as run:
        yield run


def log_numbers(metrics: dict[str, Any], prefix: str = "", step: int | None = None) -> None:
    """Log every number of a (nested) dict as an MLflow metric."""
    flat = {
        k: float(v)
        for k, v in tracking.flatten(metrics, prefix).items()
        if isinstance(v, numbers.Number) and not isinstance(v, bool)
    }
    if flat:
        tracking.log_metrics(flat, step=step)


def log_files(*paths: str | Path, artifact_path: str | None = None) -> None:
    for path in paths:
        tracking.log_artifact(path, artifact_path=artifact_path)


def sweep_stage_temps(stage: str) -> None:
    """Remove what killed runs of this stage left half-written beside (or inside) its outputs."""
    import sys

    from pipeline.dvcfile import stage_outs
    from psta.atomic import sweep_stale

    for out in stage_outs(stage) or [p for p, s in paths.STAGE_OUTPUTS.items() if s == stage]:
        for removed, size in sweep_stale(out):
            print(f"note: removed {removed} ({size / 1e6:.1f} MB), left by a killed {stage} stage",
                  file=sys.stderr)


def read_json(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
