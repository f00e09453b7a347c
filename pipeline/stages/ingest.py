"""ingest: bring the raw dataset into reach and write a validated frame manifest.

synthetic -> generate the tree (a registered dataset's layout, synthetic.layout) under
data/generated/<layout>; videos -> cut the user's camera videos + box files into a MARS tree
under data/generated/mars; a registered dataset (mars, duke, ...: psta.data.registry) -> read
the user's copy in place at data.root (never written, moved or copied).
Either way every frame file is checked, and the manifest lists one row per frame.
data/generated is `persist: true` in dvc.yaml: DVC never deletes it, and params validation
refuses a data.root inside it (or any other output) before this stage writes anything.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from pipeline import paths
from pipeline.params import Params, load_params
from pipeline.stage import dataset_of, log_files, log_numbers, stage_flow, stage_run, stage_task
from psta.atomic import atomic_dir, atomic_path
from psta.data.registry import DatasetSpec, dataset_names

__all__ = ["dataset_of", "dataset_root", "ingest"]
SPLITS_JSON = paths.INGEST / "splits.json"

SOURCE_NOTE = "SOURCE.json"  # for a user's dataset: where the copy read in place is


def dataset_root(params: Params) -> Path:
    """Where the MARS/Duke tree the readers see lives."""
    if params.data.source == "synthetic":
        return paths.GENERATED / params.synthetic.layout
    if params.data.source == "videos":
        return paths.GENERATED / "mars"
    return Path(params.data.root)


def drop_other_generated(keep: Path | None) -> None:
    """Remove the trees this stage generated earlier under another name (never anything else)."""
    for name in (*dataset_names(), SOURCE_NOTE):
        old = paths.GENERATED / name
        if old != keep and (old.is_dir() or old.is_file()):
            shutil.rmtree(old) if old.is_dir() else old.unlink()


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


# the size every frame of a release has (Duke's crops vary); for generated trees, the size written
RELEASE_FRAME_SIZE = {"mars": (256, 128)}


def frame_size(params: Params, spec: DatasetSpec) -> tuple[int, int] | None:
    if params.data.source == "synthetic":
        return params.synthetic.height, params.synthetic.width
    if params.data.source == "videos":
        return params.videos.height, params.videos.width
    return RELEASE_FRAME_SIZE.get(spec.name)


@stage_task
def check_frames(root: Path, raw, params: Params, size: tuple[int, int] | None):
    from psta.data import check_frames as check

    result = check(root, raw.paths, params.data.on_bad_frame, frame_size=size,
                   strict_size=params.data.strict_frame_size)
    if result.off_size:
        examples = ", ".join(f"{p} ({s})" for p, s in result.off_size[:3])
        print(f"warning: {len(result.off_size)} of {len(result.ok)} frames under {root} are not "
              f"{size[1]} x {size[0]} pixels, the dataset's frame size (e.g. {examples}); they are "
              f"used as they are (resized by the cache stage). Set data.strict_frame_size: true to "
              f"treat them as bad frames", file=sys.stderr)
    return result


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
        ok_mask, bad, off_size = check_frames(root, raw, params, frame_size(params, spec))
        info = {"source": params.data.source, "layout": spec.name, "root": str(root),
                "split": spec.split_scheme, "chosen_split": raw.meta.get("split")}
        stats = {
            **info,
            "tracklets": len(raw.tracklets),
            "frames": raw.num_frames,
            "junk_tracklets": int(raw.tracklets["junk"].sum()),
            "bad_frames": len(bad),
            "bad_frame_examples": [f"{p}: {why}" for p, why in bad[:20]],
            "off_size_frames": len(off_size),
            "off_size_examples": [f"{p}: {size}" for p, size in off_size[:20]],
            "planted": planted,
        }
        with atomic_dir(paths.INGEST) as out:
            write_manifest(raw, ok_mask, out / paths.MANIFEST.name)
            (out / paths.DATASET_INFO.name).write_text(json.dumps(info, indent=2) + "\n")
            (out / paths.INGEST_STATS.name).write_text(json.dumps(stats, indent=2) + "\n")
            if raw.generated_splits is not None:   # drawn splits: recorded with the outputs, never in the dataset
                (out / SPLITS_JSON.name).write_text(json.dumps(raw.generated_splits, indent=1) + "\n")
        if params.data.source in dataset_names():
            # the user's copy is read in place; the output only notes where it is
            drop_other_generated(None)
            with atomic_path(paths.GENERATED / SOURCE_NOTE) as tmp:
                tmp.write_text(json.dumps(info, indent=2) + "\n")
        else:
            drop_other_generated(root)
        log_numbers({k: stats[k] for k in ("tracklets", "frames", "junk_tracklets", "bad_frames")})
        log_files(paths.INGEST_STATS, paths.DATASET_INFO)
        return stats


def flow_entry(params_path: str) -> dict:
    return ingest(params_path=params_path)
