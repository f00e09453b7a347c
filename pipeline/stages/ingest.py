"""ingest: bring the raw dataset into reach and write a validated frame manifest.

synthetic -> generate the tree (a registered dataset's layout, synthetic.layout) under data/raw/;
videos -> cut the user's camera videos + box files into a MARS tree under data/raw/MARS;
a registered dataset (mars, duke, ...: psta.data.registry) -> read the user's copy in place.
Either way every frame file is checked, and the manifest lists one row per frame.
"""
from __future__ import annotations

import json
from pathlib import Path

from pipeline import paths
from pipeline.params import Params, load_params
from pipeline.stage import dataset_of, log_files, log_numbers, stage_flow, stage_run, stage_task
from psta.atomic import atomic_dir
from psta.data.registry import DatasetSpec, dataset_names

__all__ = ["dataset_of", "dataset_root", "ingest"]
SPLITS_JSON = paths.INGEST / "splits.json"

VIDEO_TRACKLETS = paths.RAW / "MARS"


def dataset_root(params: Params) -> Path:
    """Where the MARS/Duke tree the readers see lives (params validation checked data.root)."""
    return VIDEO_TRACKLETS if params.data.source == "videos" else Path(params.data.root)


@stage_task
def generate_synthetic(params: Params, spec: DatasetSpec, root: Path) -> dict:
    return spec.synthetic(root, params.synthetic.config())


@stage_task
def tracklets_from_videos(params: Params, out_root: Path) -> dict:
    from psta.data.videos import build_mars_from_videos

    return build_mars_from_videos(params.data.root, out_root, params.videos)


@stage_task
def read_raw(spec: DatasetSpec, root: Path, params: Params):
    d = params.data
    return spec.read(root, split=d.split, split_file=d.split_file, split_seed=d.split_seed)


@stage_task
def check_frames(root: Path, raw, on_bad_frame: str):
    from psta.data import check_frames as check

    return check(root, raw.paths, on_bad_frame)


@stage_flow("ingest")
def ingest(params_path: str = "params.yaml") -> dict:
    from psta.index import write_manifest

    params = load_params(params_path)
    root = dataset_root(params)
    spec = dataset_of(params)
    sections = {"synthetic": ("data", "synthetic"), "videos": ("data", "videos")}.get(params.data.source, ("data",))
    spec.check_split(params.data.split)
    with stage_run("ingest", params, sections):
        planted = None
        if params.data.source == "synthetic":
            planted = generate_synthetic(params, spec, root)
        elif params.data.source == "videos":
            planted = tracklets_from_videos(params, root)
        raw = read_raw(spec, root, params)
        ok_mask, bad = check_frames(root, raw, params.data.on_bad_frame)
        info = {"source": params.data.source, "layout": spec.name, "root": str(root),
                "split": spec.split_scheme, "chosen_split": raw.meta.get("split")}
        stats = {
            **info,
            "tracklets": len(raw.tracklets),
            "frames": raw.num_frames,
            "junk_tracklets": int(raw.tracklets["junk"].sum()),
            "bad_frames": len(bad),
            "bad_frame_examples": [f"{p}: {why}" for p, why in bad[:20]],
            "planted": planted,
        }
        with atomic_dir(paths.INGEST) as out:
            write_manifest(raw, ok_mask, out / paths.MANIFEST.name)
            (out / paths.DATASET_INFO.name).write_text(json.dumps(info, indent=2) + "\n")
            (out / paths.INGEST_STATS.name).write_text(json.dumps(stats, indent=2) + "\n")
            if raw.generated_splits is not None:   # drawn splits: recorded with the outputs, never in the dataset
                (out / SPLITS_JSON.name).write_text(json.dumps(raw.generated_splits, indent=1) + "\n")
        if params.data.source in dataset_names():
            # data/raw is a declared out; for a user's own copy it only records where the data is
            with atomic_dir(paths.RAW) as out:
                (out / "SOURCE.json").write_text(json.dumps(info, indent=2) + "\n")
        log_numbers({k: stats[k] for k in ("tracklets", "frames", "junk_tracklets", "bad_frames")})
        log_files(paths.INGEST_STATS, paths.DATASET_INFO)
        return stats


def flow_entry(params_path: str) -> dict:
    return ingest(params_path=params_path)
