"""ingest: bring the raw dataset into reach and write a validated frame manifest.

synthetic -> generate the tree (MARS or Duke layout) under data/raw/;
mars / duke -> read the user's copy in place at data.root.
Either way every frame file is checked and the manifest lists one row per frame.
"""
from __future__ import annotations

import json
from pathlib import Path

from prefect import flow

from pipeline import paths
from pipeline.params import Params, ParamsError, load_params
from pipeline.stage import log_files, log_numbers, stage_run, stage_task
from psta.atomic import atomic_dir


def dataset_root(params: Params) -> Path:
    root = Path(params.data.root)
    if params.data.source == "synthetic":
        try:
            root.resolve().relative_to(paths.RAW.resolve())
        except ValueError:
            raise ParamsError(
                f"params.yaml: data.root={params.data.root!r} must lie under {paths.RAW}/ when "
                "data.source is synthetic (the generated tree is a DVC output there)"
            ) from None
    return root


@stage_task
def generate_synthetic(params: Params, root: Path) -> dict:
    from psta.data import synthetic

    cfg = synthetic.SyntheticConfig(**{k: v for k, v in params.section("synthetic").items() if k != "layout"})
    with atomic_dir(root) as tmp:
        writer = synthetic.generate_mars if params.synthetic.layout == "mars" else synthetic.generate_duke
        planted = writer(tmp, cfg)
    return planted


@stage_task
def read_raw(layout: str, root: Path):
    from psta.data import duke, mars

    return mars.read_mars(root) if layout == "mars" else duke.read_duke(root)


@stage_task
def check_frames(root: Path, raw, on_bad_frame: str):
    from psta.data.frame_check import check_frames as check

    return check(root, raw.frame_paths(), on_bad_frame=on_bad_frame)


def layout_of(params: Params) -> str:
    return params.synthetic.layout if params.data.source == "synthetic" else params.data.source


@flow(name="ingest")
def ingest(params_path: str = "params.yaml") -> dict:
    params = load_params(params_path)
    root = dataset_root(params)
    layout = layout_of(params)
    with stage_run("ingest", params, ("data", "synthetic")):
        planted = None
        if params.data.source == "synthetic":
            planted = generate_synthetic(params, root)
        elif params.data.source == "videos":
            raise ParamsError("params.yaml: data.source=videos is not available yet")
        raw = read_raw(layout, root)
        ok_mask, bad = check_frames(root, raw, params.data.on_bad_frame)
        stats = {
            "source": params.data.source,
            "layout": layout,
            "frames": int(len(ok_mask)),
            "bad_frames": len(bad),
            "bad_frame_examples": [str(b) for b in bad[:20]],
            "planted": planted,
        }
        from psta.index import write_manifest

        with atomic_dir(paths.INGEST) as out:
            write_manifest(raw, ok_mask, out / paths.MANIFEST.name)
            info = {"source": params.data.source, "layout": layout, "root": str(root)}
            (out / paths.DATASET_INFO.name).write_text(json.dumps(info, indent=2))
            (out / paths.INGEST_STATS.name).write_text(json.dumps(stats, indent=2, default=str))
        if params.data.source != "synthetic":
            # data/raw is a declared out: for a user's dataset it only records where the data is
            with atomic_dir(paths.RAW) as out:
                (out / "SOURCE.json").write_text(json.dumps(info, indent=2))
        log_numbers({"frames": stats["frames"], "bad_frames": stats["bad_frames"]})
        log_files(paths.INGEST_STATS, paths.DATASET_INFO)
        return stats


def flow_entry(params_path: str) -> dict:
    return ingest(params_path=params_path)
