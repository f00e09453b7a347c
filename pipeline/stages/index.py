"""index: the frame manifest -> the Parquet tracklet index (tracklets, frames, stats)."""
from __future__ import annotations

from pipeline import paths
from pipeline.lineage import log_dataset_input
from pipeline.params import load_params
from pipeline.stage import log_files, log_numbers, stage_flow, stage_run, stage_task


@stage_task
def build(manifest_path):
    from psta.index import build_index, read_manifest

    return build_index(read_manifest(manifest_path))


@stage_flow("index")
def index(params_path: str = "params.yaml") -> dict:
    from psta.index import write_index

    params = load_params(params_path)
    with stage_run("index", params, ("data",)):
        tracklet_index = build(paths.MANIFEST)
        write_index(tracklet_index, paths.INDEX)
        log_dataset_input(context="index")
        log_numbers(tracklet_index.stats)
        log_files(paths.INDEX / "stats.json")
        return tracklet_index.stats


def flow_entry(params_path: str) -> dict:
    return index(params_path=params_path)
