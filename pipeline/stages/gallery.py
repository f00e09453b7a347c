"""gallery: embed every gallery tracklet with the trained model -> data/gallery/ (FAISS + Parquet).

The tracklets are embedded exactly as the evaluate stage embeds them (its test sampling with
`evaluate.max_clips` / `evaluate.seed`, precision and batch size), L2-normalised and indexed
with `gallery.index` (flat | hnsw | ivf); `python -m pipeline search` searches the result.
`torchrun --nproc_per_node N -m pipeline gallery` embeds a share of the tracklets on each rank;
rank 0 gathers them and alone runs the Prefect flow, the MLflow run and the writing, as the
train stage does.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline import paths
from pipeline.model_info import model_sha256, read_threshold, registered_version
from pipeline.params import Params, load_params
from pipeline.stage import log_files, log_numbers, stage_flow, stage_run, stage_task
from pipeline.stages.evaluate import METRICS_JSON, evaluation_sampling
from psta.data.registry import get_dataset, get_protocol

MODEL = paths.MODELS / "model.pt"


def gallery_splits(params: Params, dataset: str) -> tuple[str, ...]:
    if params.gallery.splits != "auto":
        return tuple(params.gallery.splits)
    if params.data.source == "videos":
        return ("train", "query", "gallery")
    headline = get_protocol(get_dataset(dataset).headline_protocol)
    return ("query", "gallery") if headline.queries_in_gallery else ("gallery",)


def video_sources(params: Params) -> pd.DataFrame | None:
    """Where each tracklet of a videos source came from (written by the videos ingest)."""
    from pipeline.stages.ingest import dataset_root
    from psta.data.videos import SOURCES_FILE

    if params.data.source != "videos":
        return None
    return pd.read_parquet(dataset_root(params) / SOURCES_FILE)


def embed_share(params: Params, rows: pd.DataFrame, dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """This rank's share of the rows (every world_size-th) and their L2-normalised embeddings."""
    from psta.data.cache import FrameCache
    from psta.engine import env_dist_info
    from psta.engine.inference import extract_features
    from psta.model import load_checkpoint
    from psta.search.frames import l2_normalise

    info = env_dist_info()
    mine = np.arange(len(rows))[info.rank::info.world_size]
    model, _ = load_checkpoint(MODEL, require_digest=True)
    e = params.evaluate
    features = extract_features(model, rows.iloc[mine], FrameCache(paths.CACHE), seq_len=params.model.seq_len,
                                **evaluation_sampling(params, dataset), batch_size=e.batch_size,
                                precision=e.precision, num_workers=e.num_workers, progress=False)
    return mine, l2_normalise(features)


def embed_all(params: Params, rows: pd.DataFrame, dataset: str) -> np.ndarray | None:
    """Every row's embedding on rank 0 (None on the other ranks), each rank embedding its share."""
    import torch

    from psta.engine.distributed import all_gather_objects, cleanup_distributed, init_distributed

    info = init_distributed("cuda" if torch.cuda.is_available() else "cpu")
    try:
        shares = all_gather_objects(embed_share(params, rows, dataset))
    finally:
        cleanup_distributed()
    if info.rank != 0:
        return None
    dim = shares[0][1].shape[1]
    out = np.empty((len(rows), dim), np.float32)
    for positions, features in shares:
        out[positions] = features
    return out


def read_rows(params: Params):
    from psta.index import read_index

    index = read_index(paths.INDEX)
    dataset = index.stats["dataset"]
    splits = gallery_splits(params, dataset)
    rows = index.tracklets[index.tracklets["split"].isin(splits)].reset_index(drop=True)
    if rows.empty:
        from psta.search.gallery import GalleryError

        raise GalleryError(f"gallery.splits {list(splits)} selects no tracklet of the index "
                           f"(its splits: {sorted(index.tracklets['split'].unique())}); fix gallery.splits")
    return index, dataset, splits, rows


@stage_task
def write(params: Params, index, dataset: str, splits, rows: pd.DataFrame, embeddings: np.ndarray) -> dict:
    from pipeline.stages.ingest import dataset_root
    from psta.model import load_checkpoint
    from psta.search.gallery import gallery_tables, write_gallery

    _, checkpoint = load_checkpoint(MODEL, require_digest=True)
    sha = model_sha256(MODEL)
    protocol = get_dataset(dataset).headline_protocol
    sampling = evaluation_sampling(params, dataset)
    table, frames = gallery_tables(rows, index.frames, video_sources(params))
    header = {
        "model": {"path": str(MODEL), "sha256": sha, "registered": registered_version(sha),
                  **{k: checkpoint["config"].get(k) for k in ("arch", "backbone", "seq_len", "height", "width")}},
        "dataset": dataset, "source": params.data.source, "root": str(dataset_root(params)),
        "splits": list(splits), "protocol": protocol, "sampling": sampling["sampling"],
        "max_clips": sampling["max_clips"], "sampling_seed": sampling["seed"],
        "precision": params.evaluate.precision, "batch_size": params.evaluate.batch_size,
        "threshold": read_threshold(METRICS_JSON, protocol),
    }
    return write_gallery(paths.GALLERY, embeddings, table, frames, params.gallery.index_config(), header)


@stage_flow("gallery")
def gallery(params_path: str = "params.yaml") -> dict:
    params = load_params(params_path)
    with stage_run("gallery", params, ("gallery",)):  # + evaluate, model (dvc.yaml)
        index, dataset, splits, rows = read_rows(params)
        embeddings = embed_all(params, rows, dataset)
        header = write(params, index, dataset, splits, rows, embeddings)
        log_numbers({"num_vectors": header["num_vectors"], "embedding_dim": header["embedding_dim"],
                     "index_bytes": header["files"]["index.faiss"]})
        log_files(paths.GALLERY / "header.json")
        return header


def flow_entry(params_path: str) -> dict:
    from psta.engine import env_dist_info

    if env_dist_info().rank != 0:
        # torchrun's other ranks embed their share; rank 0 gathers, writes and logs
        params = load_params(params_path)
        _, dataset, _, rows = read_rows(params)
        embed_all(params, rows, dataset)
        return {"rank": env_dist_info().rank}
    return gallery(params_path=params_path)
