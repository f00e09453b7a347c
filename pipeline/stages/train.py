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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import paths
from pipeline.dvcfile import deps_digest
from pipeline.lineage import log_dataset_input
from pipeline.params import Params, ParamsError, load_params
from pipeline.stage import bars, log_files, log_numbers, stage_flow, stage_run, stage_task
from psta.atomic import atomic_dir, atomic_path

TRAIN_STATE = paths.TRAIN_STATE
HISTORY_CSV = paths.REPORTS / "train_history.csv"
SECTIONS = ("model", "augment", "train")
MODEL_FILE = "model.pt"
VAL_PREFIX = "val_"
PERCENT = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")
# columns of reports/train_history.csv that dvc.yaml plots
PLOTTED = ("epoch", "lr", "loss_total", "loss_ce", "loss_triplet", "val_rank1", "val_mAP")


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


@dataclass
class TrainingInputs:
    model: Any
    train_set: Any
    evaluate: Any  # held-out validation, or None
    out_dir: Path


def prepare(params: Params) -> TrainingInputs:
    """Read the index and the frame cache, build the model, the clip datasets and the validation."""
    from psta.data.cache import FrameCache
    from psta.data.datasets import TestClips, TrainClips
    from psta.data.transforms import build_test_transform, build_train_transform
    from psta.engine import HeldoutEvaluator
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
    return TrainingInputs(model, train_set, evaluate, TRAIN_STATE / run_key(params))


def fit(params: Params, inputs: TrainingInputs, on_epoch_end=None):
    from psta.engine import env_dist_info, train

    config = never_resume_finished(params.train, inputs.out_dir, env_dist_info().rank)
    config = config.model_copy(update={"progress": config.progress and bars()})
    return train(config, inputs.model, inputs.train_set, inputs.out_dir, evaluate=inputs.evaluate,
                 on_epoch_end=on_epoch_end)


def run_training(params: Params, on_epoch_end=None):
    return fit(params, prepare(params), on_epoch_end)


def in_percent(metrics: dict) -> dict:
    """Validation rank-k / mAP in percent, the unit of the test metrics (reports/metrics.json)."""
    return {k: 100.0 * v if k.startswith(VAL_PREFIX) and k.removeprefix(VAL_PREFIX) in PERCENT else v
            for k, v in metrics.items()}


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
    """One row per epoch, validation in percent; the plotted columns exist even when empty."""
    rows = [in_percent(row) for row in history]
    columns = sorted({key for row in rows for key in row} | set(PLOTTED), key=lambda k: (k != "epoch", k))
    with atomic_path(HISTORY_CSV) as tmp, open(tmp, "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


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


@stage_flow("train")
def train_flow(params_path: str = "params.yaml") -> dict:
    params = load_params(params_path)
    with stage_run("train", params, SECTIONS):
        log_dataset_input(context="training")
        inputs = stage_task(name="prepare-data-and-model")(prepare)(params)
        result = stage_task(name="fit")(fit)(
            params, inputs, on_epoch_end=lambda epoch, metrics: log_numbers(in_percent(metrics), step=epoch))
        stage_task(name="write-history")(write_history_csv)(result.history)
        model_path = stage_task(name="publish-model")(publish_model)(result)
        stage_task(name="log-artifacts")(log_files)(HISTORY_CSV, model_path)
        final = in_percent(result.history[-1]) if result.history else {}
        return {"epochs": result.epochs_completed, "resumed_from": str(result.resumed_from or ""), **final}


def flow_entry(params_path: str) -> dict:
    from psta.engine import env_dist_info

    params = load_params(params_path)  # `python -m pipeline` also ran pipeline.preflight
    check_validation(params)           # a dataset's own val list and a second holdout: refused
    if env_dist_info().rank != 0:
        # torchrun's other ranks train in lock-step; rank 0 alone runs the flow and writes
        return {"rank": env_dist_info().rank, "result": run_training(params).epochs_completed}
    return train_flow(params_path=params_path)
