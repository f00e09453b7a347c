"""The pattern every stage follows: validated params -> MLflow run -> psta -> atomic outputs."""
from __future__ import annotations

import contextlib
import functools
import json
import numbers
import sys
from pathlib import Path
from typing import Any, Iterator

from prefect import flow, task
from prefect.cache_policies import NONE

from pipeline import flowrun, paths, tracking
from pipeline.params import Params
from psta.data.registry import DatasetSpec, get_dataset
from psta.errors import DatasetError

# Stage tasks pass large in-memory tables between them; hashing those for Prefect's input cache
# would cost more than the work, and DVC already decides what needs to rerun.
stage_task = functools.partial(task, cache_policy=NONE)


def bars() -> bool:
    """Progress bars only on a terminal: written to a file or a CI log, each redraw of a bar would
    pile up into one endless line (the per-epoch summary lines stay)."""
    return sys.stderr.isatty()


def stage_flow(name: str):
    """The Prefect flow of a dvc.yaml stage; its runs are named after the stage, not at random."""
    return flow(name=name, flow_run_name=name)


def dataset_of(params: Params) -> DatasetSpec:
    """The registered dataset whose layout the readers see (videos are cut into MARS)."""
    source = params.data.source
    return get_dataset({"synthetic": params.synthetic.layout, "videos": "mars"}.get(source, source))


@contextlib.contextmanager
def stage_run(name: str, params: Params, sections: tuple[str, ...]) -> Iterator[Any]:
    """The stage's MLflow run, logging the params sections it reads, linked to the Prefect flow
    run, which shows the library's log lines meanwhile; on a dataset with several published
    splits (iLIDS-VID, PRID-2011) it is tagged ``data_split`` with the one used."""
    import mlflow

    params_hash = params.digest(*sections)
    with tracking.stage_run(
        name,
        params.sections(*sections),
        experiment=params.tracking.experiment,
        params_hash=params_hash,
    ) as run, flowrun.library_logs():
        flowrun.link_mlflow_run(run, name, params_hash, tracking.run_url(run))
        if dataset_of(params).num_splits > 1:
            mlflow.set_tag("data_split", str(params.data.split))
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


def read_dataset_info() -> dict[str, Any]:
    """What ingest recorded about the dataset (source, layout, root), or one clear error."""
    try:
        return read_json(paths.DATASET_INFO)
    except (OSError, ValueError):
        raise DatasetError(f"{paths.DATASET_INFO} is missing or unreadable; run the ingest stage first "
                           "(`python -m pipeline ingest`)") from None
