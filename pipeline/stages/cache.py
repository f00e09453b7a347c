"""cache: the indexed frames -> a frame store at the model's input size, built for clip reads."""
from __future__ import annotations

from pipeline import paths
from pipeline.params import load_params
from pipeline.stage import bars, log_numbers, read_dataset_info, stage_flow, stage_run, stage_task


@stage_task(retries=1)
def build(params, root):
    from psta.data.cache import build_frame_cache
    from psta.index import read_index

    index = read_index(paths.INDEX)
    c = params.cache
    return build_frame_cache(
        index.frames, root, paths.CACHE,
        height=params.model.height, width=params.model.width, format=c.format,
        shard_bytes=c.shard_mb << 20, num_workers=c.num_workers, jpeg_quality=c.jpeg_quality,
        interpolation=frame_interpolations(index, c.train_interpolation, c.test_interpolation), progress=bars(),
    )


def frame_interpolations(index, train: str, test: str):
    """One resize interpolation per frame row: ``train`` for training frames, else ``test``."""
    import numpy as np

    split = index.tracklets.set_index("tracklet_id")["split"]
    is_train = index.frames["tracklet_id"].map(split).eq("train").to_numpy()
    return np.where(is_train, train, test)


@stage_flow("cache")
def cache(params_path: str = "params.yaml") -> dict:
    params = load_params(params_path)
    root = read_dataset_info()["root"]
    with stage_run("cache", params, ("cache", "model")):
        stats = build(params, root)
        log_numbers(stats)
        return stats


def flow_entry(params_path: str) -> dict:
    return cache(params_path=params_path)
