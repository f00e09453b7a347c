"""The PSTA training loop: config, data loading, mixed precision, DDP, checkpoints, resume.

    from psta.engine import TrainConfig, train
    result = train(TrainConfig(epochs=500), model, train_clips, "data/train",
                   on_epoch_end=lambda epoch, metrics: print(epoch, metrics))

* Device: CUDA when present (``cuda:LOCAL_RANK`` under torchrun), else CPU.
* Precision: ``auto | fp32 | bf16 | fp16`` through ``torch.autocast``; fp16 adds a
  ``torch.amp.GradScaler`` and is CUDA-only (a clear error on the CPU). The losses are computed
  in float32 outside autocast.
* DDP: launched by ``torchrun --nproc_per_node N`` (``WORLD_SIZE > 1``), every process trains its
  shard of the identity sampler (``batch_size / N`` clips per step) in a
  ``DistributedDataParallel`` model; only rank 0 writes checkpoints, logs and calls callbacks.
* Checkpoints: ``<out_dir>/checkpoint.pt`` at every epoch end and every
  ``checkpoint_every_steps`` steps (see :mod:`psta.engine.checkpoint`), ``resume="auto"``
  continues from it exactly: the sampler order is a function of ``(seed, epoch)``, the consumed
  batches of a half-done epoch are skipped without being loaded, and the RNG states are restored.
  The final model goes to ``<out_dir>/model.pt``.
* Validation: identities held out of training (``val_fraction`` / ``val_ids``) and a caller's
  ``evaluate(model, val_indices) -> dict`` run every ``eval_every`` epochs (see
  :class:`HeldoutEvaluator` for a ready-made rank-1 / mAP one).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Callable, Iterable, Iterator, Literal, Mapping, Sequence

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from psta.atomic import write_text_atomic
from psta.config import FieldError, Section, Seq
from psta.losses import PSTALoss
from psta.solver import WarmupMultiStepLR, build_optimizer

from .checkpoint import (
    CHECKPOINT_NAME,
    MODEL_NAME,
    capture_rng_state,
    find_resume_checkpoint,
    load_training_state,
    model_state_dict,
    restore_rng_state,
    save_final_model,
    save_training_state,
    unwrap_model,
)
from .distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    broadcast_buffers,
    cleanup_distributed,
    init_distributed,
)

log = logging.getLogger("psta.engine")

__all__ = [
    "TrainConfig", "TrainResult", "train", "split_validation", "HeldoutEvaluator",
    "resolve_device", "resolve_autocast_dtype", "seed_everything", "build_criterion",
    "ResumableBatchSampler", "HISTORY_NAME",
]

HISTORY_NAME = "history.json"
# settings that may change between a run and its resumption without changing the result
_RESUME_FREE_KEYS = frozenset({"epochs", "resume", "progress", "log_every_steps", "eval_every",
                               "checkpoint_every_steps", "num_workers"})
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


# ============================================================================ configuration
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


class TrainConfig(Section):
    """Every knob of training; the defaults are the paper's recipe (PSTA_SPEC.md)."""

    # --- schedule (per epoch) and optimiser
    epochs: int = Field(500, ge=1)
    lr: float = Field(3.5e-4, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    warmup_epochs: int = Field(10, ge=0)
    warmup_factor: float = Field(0.01, gt=0, le=1)
    milestones: Seq[Annotated[int, Field(ge=1)]] = (70, 140, 210, 310, 410)
    gamma: float = Field(0.3, gt=0, le=1)
    # --- batches: global batch = batch_size clips (P identities x num_instances), split over ranks
    batch_size: int = Field(32, ge=1)
    num_instances: int = Field(4, ge=1)
    num_workers: int = Field(4, ge=0)
    max_steps_per_epoch: int = Field(0, ge=0)  # 0: the sampler's whole epoch
    # --- loss
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    triplet_margin: float = Field(0.3, ge=0)
    triplet_distance: Literal["cosine", "euclidean"] = "cosine"
    ce_weight: float = Field(1.0, ge=0)
    triplet_weight: float = Field(1.0, ge=0)
    level_weights: Seq[Annotated[float, Field(ge=0)]] = ()  # per pyramid level; empty: 1.0 for every level
    # --- runtime
    device: str = "auto"                  # auto | cpu | cuda | cuda:N
    precision: Literal[PRECISIONS] = "auto"  # fp16: CUDA only
    channels_last: Literal["auto", "on", "off"] = "auto"  # auto: on for CUDA
    seed: int = Field(0, ge=0)
    deterministic: bool = False           # torch.use_deterministic_algorithms, no cudnn.benchmark
    sync_bn: bool = False                 # SyncBatchNorm under DDP (the paper: no)
    find_unused_parameters: bool = False
    # --- checkpoints, logs, validation
    resume: str = Field("auto", min_length=1)  # auto | never | <path to a checkpoint or its folder>
    checkpoint_every_steps: int = Field(0, ge=0)  # 0: only at the end of every epoch
    log_every_steps: int = Field(20, ge=0)
    progress: bool = True                 # tqdm bar (rank 0)
    eval_every: int = Field(10, ge=0)     # epochs; 0: never (except with evaluate at the end)
    val_fraction: float = Field(0.0, ge=0, lt=1)  # share of training identities held out for validation
    val_ids: Seq[Annotated[int, Field(ge=0)]] = ()  # or: these training labels held out

    @field_validator("device")
    @classmethod
    def _device(cls, device: str) -> str:
        if not _DEVICE.fullmatch(device):
            raise ValueError("auto | cpu | cuda | cuda:N")
        return device

    @model_validator(mode="after")
    def _consistent(self) -> "TrainConfig":
        if self.batch_size % self.num_instances:
            raise FieldError("batch_size", self.batch_size,
                             f"a multiple of num_instances ({self.num_instances}): P identities x K tracklets")
        if self.batch_size // self.num_instances < 2:
            raise FieldError("batch_size", self.batch_size, f"at least 2 identities of num_instances "
                             f"({2 * self.num_instances}): the triplet loss needs negatives in the batch")
        if any(b <= a for a, b in zip(self.milestones, self.milestones[1:])):
            raise FieldError("milestones", list(self.milestones), "increasing epochs")
        if self.val_fraction and self.val_ids:
            raise FieldError("val_ids", list(self.val_ids), "[] when val_fraction is set (give either, not both)")
        return self


@dataclass
class TrainResult:
    out_dir: Path
    model_path: Path | None            # None on ranks other than 0
    checkpoint_path: Path | None
    history: list[dict[str, Any]] = field(default_factory=list)
    epochs_completed: int = 0
    resumed_from: Path | None = None
    train_indices: np.ndarray | None = None
    val_indices: np.ndarray | None = None


# ============================================================================ small helpers
def resolve_device(device: str = "auto", dist_info: DistInfo | None = None) -> torch.device:
    """``auto``: ``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``."""
    local = dist_info.local_rank if dist_info is not None else 0
    if device == "auto":
        return torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} but CUDA is not available; use device='auto' or 'cpu'")
        if dev.index is None:
            dev = torch.device("cuda", local)
    return dev


def resolve_autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None = fp32); uses :func:`psta.model.precision.resolve_precision`."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision='fp16' needs a CUDA device (fp16 training uses a GradScaler); "
                         "on the CPU use precision='bf16' or 'fp32'")
    try:
        from psta.model.precision import resolve_precision
    except ImportError:  # pragma: no cover - the model package ships it
        if precision in ("fp32",) or (precision == "auto" and device.type != "cuda"):
            return None
        if precision == "fp16":
            return torch.float16
        return torch.bfloat16
    return resolve_precision(precision, device)


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _seed_worker(worker_id: int) -> None:  # DataLoader worker_init_fn (top level: picklable)
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def build_criterion(config: TrainConfig) -> PSTALoss:
    return PSTALoss(label_smoothing=config.label_smoothing, margin=config.triplet_margin,
                    distance=config.triplet_distance, ce_weight=config.ce_weight,
                    triplet_weight=config.triplet_weight,
                    level_weights=list(config.level_weights) or None)


def split_validation(labels: Sequence[int] | np.ndarray, val_fraction: float = 0.0,
                     val_ids: Sequence[int] = (), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(train_indices, val_indices)``: items of held-out identities go to validation.

    ``val_ids`` names the held-out labels; else ``round(val_fraction * K)`` identities (at least 1,
    at most K - 1) are drawn with ``numpy.random.default_rng(seed)``. Indices are sorted.
    """
    labels = np.asarray(labels, dtype=np.int64)
    everything = np.arange(len(labels), dtype=np.int64)
    ids = np.unique(labels)
    if val_ids:
        held = np.unique(np.asarray(val_ids, dtype=np.int64))
        missing = np.setdiff1d(held, ids)
        if len(missing):
            raise ValueError(f"val_ids {missing.tolist()} are not training labels (0..{ids.max()})")
    elif val_fraction > 0:
        n = min(max(int(round(val_fraction * len(ids))), 1), len(ids) - 1)
        if n < 1:
            raise ValueError("need at least 2 training identities to hold some out for validation")
        held = np.sort(np.random.default_rng(seed).choice(ids, size=n, replace=False))
    else:
        return everything, np.empty(0, dtype=np.int64)
    is_val = np.isin(labels, held)
    if is_val.all():
        raise ValueError("every training identity is held out for validation; nothing left to train on")
    return everything[~is_val], everything[is_val]


class ResumableBatchSampler(Sampler):
    """Groups a sampler's items into batches; an epoch can start at batch ``start`` and stop at ``stop``.

    The inner sampler's ``set_epoch`` is called by :meth:`set_epoch`; skipped batches are drawn
    from the sampler (cheap: indices only) but never loaded. ``index_map`` maps the sampler's
    positions to dataset indices (the train subset after a validation split); keys of the form
    ``(index, epoch, draw)`` keep their extra fields.
    """

    def __init__(self, sampler: Iterable, batch_size: int, index_map: np.ndarray | None = None):
        self.sampler = sampler
        self.batch_size = int(batch_size)
        self.index_map = None if index_map is None else [int(i) for i in index_map]
        self.start = 0
        self.stop: int | None = None

    def set_epoch(self, epoch: int, start: int = 0, stop: int | None = None) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        self.start, self.stop = int(start), stop

    def full_length(self) -> int:
        n = len(self.sampler) // self.batch_size  # type: ignore[arg-type]
        return n if self.stop is None else min(n, self.stop)

    def __len__(self) -> int:
        return max(self.full_length() - self.start, 0)

    def _map(self, item):
        if self.index_map is None:
            return item
        if isinstance(item, tuple):
            return (self.index_map[int(item[0])],) + tuple(item[1:])
        return self.index_map[int(item)]

    def __iter__(self) -> Iterator[list]:
        end = self.full_length()
        batch: list = []
        b = 0
        for item in self.sampler:
            if b >= end:
                break
            batch.append(item)
            if len(batch) == self.batch_size:
                if b >= self.start:
                    yield [self._map(i) for i in batch]
                b += 1
                batch = []


# ============================================================================ held-out evaluation
class HeldoutEvaluator:
    """``evaluate(model, val_indices)`` for :func:`train`: rank-1 / mAP on held-out identities.

    ``dataset[i]`` must return ``(clip T x 3 x H x W, pid, camid, ...)`` for training tracklet ``i``
    with a deterministic (test) transform. Among the held-out tracklets, the first of every
    (identity, camera) pair is a query; the gallery is all held-out tracklets, and gallery items
    with the query's identity and camera (the query itself included) are ignored, as in the MARS
    protocol; cosine distance on the embeddings.
    Returns ``{"rank1", "rank5", "mAP", "num_valid_queries"}`` (fractions in [0, 1], from
    ``psta.evaluation.rank_metrics``).
    """

    def __init__(self, dataset: Dataset, batch_size: int = 32, num_workers: int = 0,
                 precision: str = "fp32"):
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.precision = precision

    @torch.no_grad()
    def embed(self, model: nn.Module, indices: np.ndarray) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        device = next(model.parameters()).device
        dtype = resolve_autocast_dtype(self.precision, device)
        loader = DataLoader(torch.utils.data.Subset(self.dataset, [int(i) for i in indices]),
                            batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)
        feats, pids, camids = [], [], []
        for batch in loader:
            with _autocast(device, dtype):
                f = model(batch[0].to(device, non_blocking=True))
            feats.append(f.float().cpu())
            pids.append(torch.as_tensor(batch[1]).cpu())
            camids.append(torch.as_tensor(batch[2]).cpu())
        return torch.cat(feats), torch.cat(pids).numpy(), torch.cat(camids).numpy()

    def __call__(self, model: nn.Module, indices: np.ndarray) -> dict[str, float]:
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) == 0:
            return {}
        feats, pids, camids = self.embed(model, indices)
        seen: set[tuple[int, int]] = set()
        is_query = np.zeros(len(indices), dtype=bool)
        for k, (p, c) in enumerate(zip(pids.tolist(), camids.tolist())):
            if (p, c) not in seen:
                seen.add((p, c))
                is_query[k] = True
        q, g = np.flatnonzero(is_query), np.arange(len(indices))
        has_match = [bool(np.any((pids[g] == pids[i]) & (camids[g] != camids[i]))) for i in q]
        if not any(has_match):
            log.warning("held-out validation: no query has a same-identity gallery item from another "
                        "camera; no rank-1 / mAP this time")
            return {"num_valid_queries": 0.0}
        from psta.evaluation import rank_metrics  # the project's evaluation library

        fn = torch.nn.functional.normalize(feats, dim=1)
        dist = (1.0 - fn[q] @ fn[g].t()).numpy()
        out = rank_metrics(dist, pids[q], camids[q], pids[g], camids[g], max_rank=min(20, len(g)))
        result = {"rank1": float(out["rank1"]), "mAP": float(out["mAP"]),
                  "num_valid_queries": float(out["num_valid_queries"])}
        if len(g) >= 5:
            result["rank5"] = float(out["rank5"])
        return result


# ============================================================================ the loop
LoaderFactory = Callable[[int, int, DistInfo], Iterable]


def _channels_last(setting: str, device: torch.device) -> bool:
    return device.type == "cuda" if setting == "auto" else setting == "on"


def _model_meta(model: nn.Module, extra: Mapping[str, Any] | None) -> dict[str, Any]:
    config = dict(getattr(model, "config", None) or {})
    meta = {k: config[k] for k in ("arch", "num_classes", "seq_len", "height", "width", "backbone")
            if k in config}
    if hasattr(model, "feature_dim"):
        meta["feature_dim"] = int(model.feature_dim)
    meta.update(dict(extra or {}))
    return meta


def _unpack(batch) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, Mapping):
        return batch["clip"], batch["label"]
    return batch[0], batch[1]


def train(
    config: TrainConfig,
    model: nn.Module,
    train_data: Dataset | LoaderFactory,
    out_dir: str | os.PathLike,
    *,
    labels: Sequence[int] | np.ndarray | None = None,
    sampler_factory: Callable[[np.ndarray, TrainConfig, DistInfo], Sampler] | None = None,
    evaluate: Callable[[nn.Module, np.ndarray], Mapping[str, float]] | None = None,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
    model_meta: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` with the PSTA recipe; write checkpoints and ``model.pt`` to ``out_dir``.

    ``train_data`` is either

    * a map-style dataset whose items start with ``(clip T x 3 x H x W, label)`` (e.g.
      ``psta.data.datasets.TrainClips``); batches are drawn by ``sampler_factory(train_labels,
      config, dist_info)`` (default: ``psta.data.sampling.IdentitySampler`` with
      ``batch_size / world_size`` clips per rank), ``labels`` default to ``train_data.labels``; or
    * a loader factory ``f(epoch, start_batch, dist_info) -> iterable of batches`` that yields the
      rank's batches of ``epoch`` from batch ``start_batch`` on (its own sharding and order).

    ``evaluate(model, val_indices) -> {name: value}`` runs on rank 0 every ``eval_every`` epochs and
    after the last one, with the unwrapped model in eval mode (RNG states are preserved around it);
    its results enter the epoch metrics as ``val_<name>``. ``on_epoch_end(epoch, metrics)`` (rank 0)
    receives the 0-based epoch and ``{"epoch", "lr", "loss_ce", "loss_triplet", "loss_total",
    "clips_per_s", "epoch_time_s", "steps", "val_*"}``.
    """
    out_dir = Path(out_dir)
    device_hint = resolve_device(config.device) if config.device != "auto" else None
    dtype_probe = device_hint or (torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    resolve_autocast_dtype(config.precision, dtype_probe)  # fail fast (fp16 on CPU) before any set-up

    created_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    saved_flags = (torch.are_deterministic_algorithms_enabled(),
                   torch.is_deterministic_algorithms_warn_only_enabled(),
                   torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    dist_info = init_distributed(dtype_probe.type)
    try:
        return _train(config, model, train_data, out_dir, dist_info, labels=labels,
                      sampler_factory=sampler_factory, evaluate=evaluate, on_epoch_end=on_epoch_end,
                      model_meta=model_meta)
    finally:
        torch.use_deterministic_algorithms(saved_flags[0], warn_only=saved_flags[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved_flags[2:]
        if created_group and dist_info.distributed:
            cleanup_distributed()


def _default_sampler_factory(labels: np.ndarray, config: TrainConfig, dist_info: DistInfo) -> Sampler:
    from psta.data.sampling import IdentitySampler

    return IdentitySampler(labels, num_instances=config.num_instances,
                           batch_size=config.batch_size // dist_info.world_size, seed=config.seed,
                           rank=dist_info.rank, world_size=dist_info.world_size)


def _train(config: TrainConfig, model: nn.Module, train_data, out_dir: Path, dist_info: DistInfo, *,
           labels, sampler_factory, evaluate, on_epoch_end, model_meta) -> TrainResult:
    main = dist_info.is_main
    world = dist_info.world_size
    device = resolve_device(config.device, dist_info)
    amp_dtype = resolve_autocast_dtype(config.precision, device)
    use_scaler = amp_dtype == torch.float16
    if config.batch_size % world or (config.batch_size // world) % config.num_instances:
        raise ValueError(f"batch_size={config.batch_size} must split into {world} rank(s) x whole "
                         f"groups of num_instances={config.num_instances}")
    per_rank_batch = config.batch_size // world

    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    # ---------------------------------------------------------------- data
    is_dataset = not callable(train_data) or isinstance(train_data, Dataset)
    train_idx = val_idx = None
    loader = batch_sampler = None
    if is_dataset:
        if labels is None:
            labels = getattr(train_data, "labels", None)
        if labels is None:
            raise ValueError("train(): pass labels= (one identity label per dataset item) or a "
                             "dataset with a .labels attribute")
        labels = np.asarray(labels, dtype=np.int64)
        if len(labels) != len(train_data):
            raise ValueError(f"{len(labels)} labels for a dataset of {len(train_data)} items")
        train_idx, val_idx = split_validation(labels, config.val_fraction, config.val_ids, config.seed)
        make_sampler = sampler_factory or _default_sampler_factory
        sampler = make_sampler(labels[train_idx], config, dist_info)
        batch_sampler = ResumableBatchSampler(
            sampler, per_rank_batch, None if len(val_idx) == 0 else train_idx)
        generator = torch.Generator()
        loader = DataLoader(train_data, batch_sampler=batch_sampler, num_workers=config.num_workers,
                            pin_memory=device.type == "cuda", persistent_workers=config.num_workers > 0,
                            worker_init_fn=_seed_worker, generator=generator)
    else:
        if config.val_fraction or config.val_ids:
            raise ValueError("val_fraction / val_ids need train_data to be a dataset (with labels); a "
                             "loader factory chooses its own batches, so hold identities out in it")
        val_idx = np.empty(0, dtype=np.int64)

    # ---------------------------------------------------------------- model, optimiser, schedule
    model.to(device)
    if _channels_last(config.channels_last, device):
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = WarmupMultiStepLR(optimizer, milestones=config.milestones, gamma=config.gamma,
                                  warmup_epochs=config.warmup_epochs, warmup_factor=config.warmup_factor)
    scaler = torch.amp.GradScaler(device.type) if use_scaler else None
    criterion = build_criterion(config)
    meta = _model_meta(model, model_meta)

    # ---------------------------------------------------------------- resume
    start_epoch, start_step, global_step = 0, 0, 0
    history: list[dict[str, Any]] = []
    accum0: dict[str, float] = {}
    resume_path = find_resume_checkpoint(config.resume, out_dir)
    if resume_path is not None:
        state = load_training_state(resume_path)
        try:
            unwrap_model(model).load_state_dict(state["model"])
        except RuntimeError as exc:
            raise RuntimeError(f"{resume_path} does not fit this model ({str(exc).splitlines()[0]}); "
                               f"train into a fresh out_dir or pass resume='never' to start over") from exc
        changed = sorted(k for k, v in (state.get("config") or {}).items()
                         if k not in _RESUME_FREE_KEYS and config.to_dict().get(k, v) != v)
        if changed and main:
            log.warning("resuming %s with changed settings %s: the run will not repeat the original",
                        resume_path, ", ".join(changed))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, start_step = int(state["epoch"]), int(state["step_in_epoch"])
        global_step = int(state["global_step"])
        history = list(state.get("history") or [])
        accum0 = dict(state.get("epoch_accum") or {})
        rngs = state.get("rng") or []
        if int(state.get("world_size", world)) != world:
            log.warning("resuming a %s-process run with %s processes: the sampler shards and RNG "
                        "streams differ from the original run", state.get("world_size"), world)
        if dist_info.rank < len(rngs):
            restore_rng_state(rngs[dist_info.rank])
        else:
            seed_everything(config.seed + 1000 * dist_info.rank + global_step)
        if main:
            log.info("resuming from %s at epoch %d, step %d", resume_path, start_epoch, start_step)
    else:
        seed_everything(config.seed + dist_info.rank)

    if config.sync_bn and dist_info.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    net: nn.Module = model
    if dist_info.distributed:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=config.find_unused_parameters)
    core = unwrap_model(net)
    ckpt_path = out_dir / CHECKPOINT_NAME

    def save_state(epoch: int, step: int, accum: dict[str, float]) -> None:
        rngs = all_gather_objects(capture_rng_state())  # every rank joins
        if main:
            save_training_state(ckpt_path, {
                "model": model_state_dict(core), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "epoch": epoch, "step_in_epoch": step, "global_step": global_step,
                "epoch_accum": dict(accum), "history": history, "rng": rngs, "world_size": world,
                "config": config.to_dict(), "model_meta": meta,
            })
        barrier()

    # ---------------------------------------------------------------- epochs
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
    bar_cls = None
    if main and config.progress:
        try:
            from tqdm.auto import tqdm as bar_cls
        except ImportError:  # pragma: no cover
            bar_cls = None

    for epoch in range(start_epoch, config.epochs):
        first = epoch == start_epoch
        step0 = start_step if first else 0
        stop = config.max_steps_per_epoch or None
        if is_dataset:
            batch_sampler.set_epoch(epoch, start=step0, stop=stop)
            generator.manual_seed(config.seed * 1_000_003 + epoch * 101 + dist_info.rank)
            n_steps = batch_sampler.full_length()
            iterable: Iterable = loader
        else:
            iterable = train_data(epoch, step0, dist_info)
            try:
                n_steps = step0 + len(iterable)  # type: ignore[arg-type]
            except TypeError:
                n_steps = None
            if stop is not None:
                n_steps = stop if n_steps is None else min(n_steps, stop)
        if dist_info.distributed and n_steps is not None:  # every rank must run the same steps
            n_steps = min(all_gather_objects(n_steps))
        lr = optimizer.param_groups[0]["lr"]
        acc = {k: float(accum0.get(k, 0.0)) for k in ("ce", "triplet", "total", "steps", "clips")} if first \
            else dict.fromkeys(("ce", "triplet", "total", "steps", "clips"), 0.0)
        sums = torch.zeros(3, dtype=torch.float64, device=device)  # ce, triplet, total since last sync
        sess_clips, t0 = 0, time.perf_counter()
        net.train()
        bar = None
        if bar_cls is not None:
            bar = bar_cls(total=n_steps, initial=step0, desc=f"epoch {epoch + 1}/{config.epochs}",
                          unit="step", dynamic_ncols=True, leave=False)

        def flush() -> None:
            vals = sums.tolist()
            sums.zero_()
            for k, v in zip(("ce", "triplet", "total"), vals):
                acc[k] += v
            if not all(math.isfinite(v) for v in vals):
                raise FloatingPointError(f"non-finite loss at epoch {epoch}, step {step + 1}: "
                                         f"ce+triplet sums {vals}; lower the lr or use precision='fp32'")

        step = step0
        for batch in iterable:
            if n_steps is not None and step >= n_steps:
                break
            clips, targets = _unpack(batch)
            clips = clips.to(device, non_blocking=True)
            targets = torch.as_tensor(targets).to(device, non_blocking=True)
            with _autocast(device, amp_dtype):
                logits, feats = net(clips)
            loss, parts = criterion(logits, feats, targets)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            sums += torch.stack([parts["ce"], parts["triplet"], parts["total"]]).double()
            step += 1
            global_step += 1
            acc["steps"] += 1
            acc["clips"] += clips.shape[0] * world
            sess_clips += clips.shape[0] * world
            last_step = n_steps is not None and step >= n_steps
            if config.log_every_steps and step % config.log_every_steps == 0:
                flush()
                if bar is not None:
                    rate = sess_clips / max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix(loss=f"{acc['total'] / max(acc['steps'], 1):.3f}",
                                    clips_s=f"{rate:.1f}", lr=f"{lr:.2e}")
            if bar is not None:
                bar.update(1)
            if config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0 and not last_step:
                flush()
                save_state(epoch, step, acc)
        flush()
        if bar is not None:
            bar.close()
        elapsed = time.perf_counter() - t0

        # ------------------------------------------------------------ epoch metrics
        ce, tri, tot, steps = all_reduce_sum([acc["ce"], acc["triplet"], acc["total"], acc["steps"]], device)
        steps = max(steps, 1.0)
        metrics: dict[str, Any] = {
            "epoch": epoch, "lr": lr, "loss_ce": ce / steps, "loss_triplet": tri / steps,
            "loss_total": tot / steps, "clips_per_s": sess_clips / max(elapsed, 1e-9),
            "epoch_time_s": elapsed, "steps": int(round(acc["steps"])),
        }
        scheduler.step()
        broadcast_buffers(core)  # every rank ends the epoch with rank 0's BN statistics
        done = epoch + 1 == config.epochs
        if evaluate is not None and ((config.eval_every and (epoch + 1) % config.eval_every == 0) or done):
            if main:
                rng = capture_rng_state()
                core.eval()
                try:
                    with torch.no_grad():
                        vals = evaluate(core, val_idx)
                finally:
                    core.train()
                    restore_rng_state(rng)
                metrics.update({f"val_{k}": float(v) for k, v in dict(vals or {}).items()})
            barrier()
        history.append(metrics)
        save_state(epoch + 1, 0, {})
        if main:
            write_text_atomic(out_dir / HISTORY_NAME, json.dumps(history, indent=1) + "\n")
            log.info("epoch %d/%d: %s", epoch + 1, config.epochs,
                     ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in metrics.items() if k != "epoch"))
            if on_epoch_end is not None:
                on_epoch_end(epoch, dict(metrics))
        barrier()

    model_path = None
    if main:
        model_path = save_final_model(out_dir / MODEL_NAME, core, meta,
                                      epochs=int(config.epochs), train_config=config.to_dict())
    barrier()
    return TrainResult(out_dir=out_dir, model_path=model_path, checkpoint_path=ckpt_path if main else None,
                       history=history, epochs_completed=len(history) if history else start_epoch,
                       resumed_from=resume_path, train_indices=train_idx, val_indices=val_idx)
