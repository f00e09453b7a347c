"""train: PSTA on the cached frames, the paper's recipe from params.yaml, on GPU when there is one.

`torchrun --nproc_per_node N -m pipeline train` trains with DDP; rank 0 owns the Prefect flow,
the MLflow run and every file written.

Checkpoints live in data/train/<key>/, where the key hashes the stage's params and the content
of every dependency dvc.yaml lists for it (code and data): `resume: auto` continues an
interrupted run of exactly the same inputs, never a finished or a different one (a finished
run is trained again from scratch). data/train is `persist: true` in dvc.yaml, so a killed
`dvc repro` picks up where it stopped.
"""
from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
from prefect import flow

from pipeline import paths
from pipeline.dvcfile import deps_digest
from pipeline.lineage import log_dataset_input
from pipeline.params import Params, ParamsError, load_params
from pipeline.stage import log_files, log_numbers, stage_run
from psta.atomic import atomic_dir, atomic_path

TRAIN_STATE = paths.TRAIN_STATE
HISTORY_CSV = paths.REPORTS / "train_history.csv"
SECTIONS = ("model", "augment", "train")
MODEL_FILE = "model.pt"


def run_key(params: Params) -> str:
    """The training run's identity: params + the code and data hashes of the stage's deps."""
    deps = deps_digest("train")
    return hashlib.sha256(f"{params.digest(*SECTIONS)}:{deps}".encode()).hexdigest()[:16]


def never_resume_finished(config, out_dir: Path, rank: int):
    """A finished run (its model.pt written) is trained again from scratch, never "resumed"."""
    from psta.engine.checkpoint import CHECKPOINT_NAME, MODEL_NAME

    if config.resume != "auto" or not (out_dir / MODEL_NAME).is_file():
        return config
    if rank == 0:  # checkpoint first: a rank that no longer sees model.pt finds no checkpoint
        (out_dir / CHECKPOINT_NAME).unlink(missing_ok=True)
        (out_dir / MODEL_NAME).unlink(missing_ok=True)
    return config.model_copy(update={"resume": "never"})


def run_training(params: Params, on_epoch_end=None):
    from psta.data.cache import FrameCache
    from psta.data.datasets import TestClips, TrainClips
    from psta.data.transforms import build_test_transform, build_train_transform
    from psta.engine import HeldoutEvaluator, env_dist_info, train
    from psta.index import read_index
    from psta.model import build_model

    m = params.model
    index = read_index(paths.INDEX)
    cache = FrameCache(paths.CACHE)
    cache.check_tracklets(index.tracklets)
    rows = index.tracklets[index.tracklets["split"] == "train"]
    model = build_model(
        m.arch, num_classes=index.num_classes, seq_len=m.seq_len, height=m.height, width=m.width,
        backbone=m.backbone, pretrained=m.pretrained,
    )
    train_set = TrainClips(
        rows, cache, seq_len=m.seq_len, seed=params.train.seed,
        transform=build_train_transform(m.height, m.width, params.augment.flip_p, params.augment.erase_p),
    )
    evaluate = None
    val_rows = index.tracklets[index.tracklets["split"] == "val"]
    if len(val_rows):       # the dataset's own validation identities (LS-VID's val list)
        heldout = TestClips(val_rows, cache, seq_len=m.seq_len, transform=build_test_transform(m.height, m.width))
        validate = HeldoutEvaluator(heldout, batch_size=params.train.batch_size, precision=params.train.precision)
        evaluate = lambda model, _train_held_out: validate(model, np.arange(len(val_rows)))  # noqa: E731
    elif params.train.val_fraction > 0 or params.train.val_ids:
        heldout = TestClips(rows, cache, seq_len=m.seq_len, transform=build_test_transform(m.height, m.width))
        evaluate = HeldoutEvaluator(heldout, batch_size=params.train.batch_size, precision=params.train.precision)
    out_dir = TRAIN_STATE / run_key(params)
    config = never_resume_finished(params.train, out_dir, env_dist_info().rank)
    return train(config, model, train_set, out_dir, evaluate=evaluate, on_epoch_end=on_epoch_end)


def check_validation(params: Params) -> None:
    """A dataset with its own validation list validates on it: holding training identities out
    as well (train.val_fraction / val_ids) is refused before any work."""
    stats = json.loads((paths.INDEX / "stats.json").read_text()) if (paths.INDEX / "stats.json").is_file() else {}
    val = (stats.get("splits") or {}).get("val")
    if val and (params.train.val_fraction > 0 or params.train.val_ids):
        raise ParamsError(
            f"train.val_fraction={params.train.val_fraction} / train.val_ids={list(params.train.val_ids)}: "
            f"{stats.get('dataset')} brings its own validation list ({val['identities']} identities, "
            f"{val['tracklets']} tracklets: the index's 'val' split), which validation uses every "
            f"train.eval_every epochs; set train.val_fraction: 0 and train.val_ids: [] in params.yaml")


def write_history_csv(history: list[dict]) -> None:
    columns = sorted({key for row in history for key in row}, key=lambda k: (k != "epoch", k))
    with atomic_path(HISTORY_CSV) as tmp, open(tmp, "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)


def publish_model(result) -> Path:
    """Publish the final model and its sha256 in data/models/ (the next stages' input, swapped in
    whole) and drop stale run folders."""
    from psta.integrity import write_digest

    with atomic_dir(paths.MODELS) as tmp:
        shutil.copyfile(result.model_path, tmp / MODEL_FILE)
        write_digest(tmp / MODEL_FILE)
    for stale in TRAIN_STATE.iterdir():
        if stale.is_dir() and stale.resolve() != Path(result.out_dir).resolve():
            shutil.rmtree(stale, ignore_errors=True)
    return paths.MODELS / MODEL_FILE


@flow(name="train")
def train_flow(params_path: str = "params.yaml") -> dict:
    params = load_params(params_path)
    with stage_run("train", params, SECTIONS):
        log_dataset_input(context="training")
        result = run_training(params, on_epoch_end=lambda epoch, metrics: log_numbers(metrics, step=epoch))
        write_history_csv(result.history)
        model_path = publish_model(result)
        log_files(HISTORY_CSV, model_path.with_name("model.pt"))
        final = dict(result.history[-1]) if result.history else {}
        return {"epochs": result.epochs_completed, "resumed_from": str(result.resumed_from or ""), **final}


def flow_entry(params_path: str) -> dict:
    from psta.engine import env_dist_info

    params = load_params(params_path)  # `python -m pipeline` also ran pipeline.preflight
    check_validation(params)           # a dataset's own val list and a second holdout: refused
    if env_dist_info().rank != 0:
        # torchrun's other ranks train in lock-step; rank 0 alone runs the flow and writes
        return {"rank": env_dist_info().rank, "result": run_training(params).epochs_completed}
    return train_flow(params_path=params_path)
