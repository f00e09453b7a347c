"""The PSTA training loop: set-up, resume, one epoch, end-of-epoch work.

    from psta.engine import TrainConfig, train
    result = train(TrainConfig(epochs=500), model, train_clips, "data/train",
                   on_epoch_end=lambda epoch, metrics: print(epoch, metrics))

:func:`train` reads as the steps of a run, each a function of its own: :func:`build_run` (loader,
model on its device, optimiser, schedule, loss), :func:`restore_state` (the checkpoint to
resume from), :func:`wrap_for_distributed`, then per epoch :func:`train_one_epoch` and
:func:`end_of_epoch` (validation, model selection, checkpoint, history, the summary line), and
:func:`save_model`.

* Device: CUDA when present (``cuda:LOCAL_RANK`` under torchrun), else CPU.
* Precision: ``auto | fp32 | bf16 | fp16`` through ``torch.autocast``; fp16 adds a
  ``torch.amp.GradScaler`` and is CUDA-only (a clear error on the CPU). The losses are computed
  in float32 outside autocast.
* BatchNorm groups: ``bn_groups = G`` forwards the batch as G DataParallel replicas would
  (:mod:`psta.engine.bn_groups`); the loss sees the whole batch.
* DDP: launched by ``torchrun --nproc_per_node N`` (``WORLD_SIZE > 1``), every process trains its
  shard of the identity sampler (``batch_size / N`` clips per step) in a
  ``DistributedDataParallel`` model; only rank 0 writes checkpoints, logs and calls callbacks.
* Checkpoints: ``<out_dir>/checkpoint.pt`` at every epoch end and every
  ``checkpoint_every_steps`` steps (see :mod:`psta.engine.checkpoint`), ``resume="auto"``
  continues from it exactly: the sampler order is a function of ``(seed, epoch)``, the consumed
  batches of a half-done epoch are skipped without being loaded, and the RNG states are restored.
  The final model goes to ``<out_dir>/model.pt``: the last epoch's weights, or with
  ``select="best_val"`` those of the epoch with the best held-out rank-1 (then mAP).
* Validation: identities held out of training (``val_fraction`` / ``val_ids``) and a caller's
  ``evaluate(model, val_indices) -> dict`` run every ``eval_every`` epochs (see
  :class:`~psta.engine.validation.HeldoutEvaluator` for a ready-made rank-1 / mAP one).
* Logs: one line per epoch on the ``psta.engine`` logger (losses, lr, clips/s, validation);
  tqdm bars only when ``progress`` is set and stderr is a terminal.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from psta.atomic import write_text_atomic
from psta.losses import PSTALoss
from psta.model.checkpoints import save_checkpoint
from psta.model.precision import autocast_context, resolve_precision
from psta.model.state_dict import model_state_dict, unwrap_model
from psta.solver import WarmupMultiStepLR, build_optimizer

from .bn_groups import forward_in_groups
from .checkpoint import (
    CHECKPOINT_NAME,
    MODEL_NAME,
    capture_rng_state,
    find_resume_checkpoint,
    load_training_state,
    restore_rng_state,
    save_training_state,
)
from .config import RESUME_FREE_KEYS, TrainConfig
from .distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    broadcast_buffers,
    cleanup_distributed,
    init_distributed,
)
from .loader import SamplerFactory, TrainLoader, build_train_loader, dataset_labels
from .runtime import determinism, resolve_device, seed_everything, use_channels_last

log = logging.getLogger("psta.engine")

__all__ = ["TrainResult", "train", "build_criterion", "epoch_summary", "HISTORY_NAME"]

HISTORY_NAME = "history.json"
_ACCUM_KEYS = ("ce", "triplet", "total", "steps", "clips")
Evaluate = Callable[[nn.Module, np.ndarray], Mapping[str, float]]


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
    selected_epoch: int | None = None  # 0-based epoch whose weights model.pt holds


@dataclass
class Progress:
    """Where a run stands: what a checkpoint saves and a resume restores."""

    epoch: int = 0                      # the epoch in progress (0-based) ...
    step: int = 0                       # ... and its batches already trained
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    accum: dict[str, float] = field(default_factory=dict)   # partial sums of a half-done epoch
    best: dict[str, Any] = field(default_factory=dict)      # select=best_val: epoch, val_rank1, val_mAP
    best_state: dict[str, torch.Tensor] | None = None       # ... and that epoch's weights


@dataclass
class Run:
    """Everything one training run works with."""

    config: TrainConfig
    dist: DistInfo
    device: torch.device
    amp_dtype: torch.dtype | None
    data: TrainLoader
    model: nn.Module                    # the unwrapped model
    net: nn.Module                      # what the forward pass goes through (DDP or the model)
    optimizer: torch.optim.Optimizer
    scheduler: WarmupMultiStepLR
    scaler: torch.amp.GradScaler | None
    criterion: PSTALoss
    out_dir: Path
    meta: dict[str, Any]
    evaluate: Evaluate | None = None
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None
    progress: Progress = field(default_factory=Progress)

    @property
    def main(self) -> bool:
        return self.dist.is_main

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME


# ============================================================================ the run
def train(
    config: TrainConfig,
    model: nn.Module,
    train_data: Dataset,
    out_dir: str | os.PathLike,
    *,
    labels: Sequence[int] | np.ndarray | None = None,
    sampler_factory: SamplerFactory | None = None,
    evaluate: Evaluate | None = None,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
    model_meta: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` with the PSTA recipe; write checkpoints and ``model.pt`` to ``out_dir``.

    ``train_data`` is a map-style dataset whose items start with ``(clip T x 3 x H x W, label)``
    (e.g. ``psta.data.datasets.TrainClips``); ``labels`` default to ``train_data.labels``.
    Batches are drawn by ``sampler_factory(train_labels, config, dist_info)`` (default: the
    P x K ``psta.data.sampling.IdentitySampler``, ``batch_size / world_size`` clips per rank).

    ``evaluate(model, val_indices) -> {name: value}`` runs on rank 0 every ``eval_every`` epochs and
    after the last one, with the unwrapped model in eval mode (RNG states are preserved around it);
    its results enter the epoch metrics as ``val_<name>``. ``on_epoch_end(epoch, metrics)`` (rank 0)
    receives the 0-based epoch and ``{"epoch", "lr", "loss_ce", "loss_triplet", "loss_total",
    "clips_per_s", "epoch_time_s", "steps", "val_*"}``. With ``select="best_val"`` the model
    ends (on rank 0) with the selected epoch's weights, the ones model.pt holds.
    """
    if not isinstance(train_data, Dataset):
        raise TypeError(f"train_data must be a map-style torch Dataset, got {type(train_data).__name__}")
    if config.select == "best_val" and evaluate is None:
        raise ValueError("select='best_val' needs an evaluate= callback (e.g. HeldoutEvaluator) to rank epochs")
    out_dir = Path(out_dir)
    probe = resolve_device(config.device) if config.device != "auto" else \
        torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolve_precision(config.precision, probe)  # fail fast (fp16 on CPU) before any set-up
    labels = dataset_labels(train_data, labels)

    created_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    dist_info = init_distributed(probe.type)
    try:
        device = resolve_device(config.device, dist_info)
        with determinism(config.deterministic, device):
            run = build_run(config, model, train_data, labels, out_dir, dist_info, device,
                            sampler_factory, model_meta)
            run.evaluate, run.on_epoch_end = evaluate, on_epoch_end
            resumed_from = restore_state(run)
            wrap_for_distributed(run)
            if run.main:
                out_dir.mkdir(parents=True, exist_ok=True)
            start = run.progress.epoch
            for epoch in range(start, config.epochs):
                metrics = train_one_epoch(run, epoch)
                end_of_epoch(run, epoch, metrics)
            model_path, selected = save_model(run)
    finally:
        if created_group and dist_info.distributed:
            cleanup_distributed()
    history = run.progress.history
    return TrainResult(out_dir=out_dir, model_path=model_path,
                       checkpoint_path=run.checkpoint_path if run.main else None, history=history,
                       epochs_completed=len(history) if history else start, resumed_from=resumed_from,
                       train_indices=run.data.train_indices, val_indices=run.data.val_indices,
                       selected_epoch=selected)


def build_criterion(config: TrainConfig) -> PSTALoss:
    return PSTALoss(label_smoothing=config.label_smoothing, margin=config.triplet_margin,
                    distance=config.triplet_distance, ce_weight=config.ce_weight,
                    triplet_weight=config.triplet_weight,
                    level_weights=list(config.level_weights) or None)


def _model_meta(model: nn.Module, extra: Mapping[str, Any] | None) -> dict[str, Any]:
    config = dict(getattr(model, "config", None) or {})
    meta = {k: config[k] for k in ("arch", "num_classes", "seq_len", "height", "width", "backbone")
            if k in config}
    if hasattr(model, "feature_dim"):
        meta["feature_dim"] = int(model.feature_dim)
    meta.update(dict(extra or {}))
    return meta


def build_run(config: TrainConfig, model: nn.Module, dataset: Dataset, labels: np.ndarray, out_dir: Path,
              dist_info: DistInfo, device: torch.device, sampler_factory: SamplerFactory | None,
              model_meta: Mapping[str, Any] | None) -> Run:
    """The rank's loader, the model on its device, optimiser, schedule, scaler and loss."""
    world = dist_info.world_size
    per_rank = config.batch_size // world
    if config.batch_size % world or per_rank % config.num_instances:
        raise ValueError(f"batch_size={config.batch_size} must split into {world} rank(s) x whole "
                         f"groups of num_instances={config.num_instances}")
    if per_rank % config.bn_groups:
        raise ValueError(f"bn_groups={config.bn_groups} must divide the {per_rank} clips each rank "
                         f"trains on per step (batch_size {config.batch_size} / {world} rank(s))")
    amp_dtype = resolve_precision(config.precision, device)
    data = build_train_loader(config, dataset, labels, dist_info, device, sampler_factory)
    model.to(device)
    if use_channels_last(config.channels_last, device):
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = WarmupMultiStepLR(optimizer, milestones=config.milestones, gamma=config.gamma,
                                  warmup_epochs=config.warmup_epochs, warmup_factor=config.warmup_factor)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    return Run(config=config, dist=dist_info, device=device, amp_dtype=amp_dtype, data=data, model=model,
               net=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
               criterion=build_criterion(config), out_dir=out_dir, meta=_model_meta(model, model_meta))


def restore_state(run: Run) -> Path | None:
    """Continue from the checkpoint ``config.resume`` names (weights, optimiser, schedule, position,
    RNG states), or seed a fresh start. Returns the checkpoint used, if any."""
    config, rank, world = run.config, run.dist.rank, run.dist.world_size
    path = find_resume_checkpoint(config.resume, run.out_dir)
    if path is None:
        seed_everything(config.seed + rank)
        return None
    state = load_training_state(path)
    try:
        unwrap_model(run.model).load_state_dict(state["model"])
    except RuntimeError as exc:
        raise RuntimeError(f"{path} does not fit this model ({str(exc).splitlines()[0]}); "
                           f"train into a fresh out_dir or pass resume='never' to start over") from exc
    changed = sorted(k for k, v in (state.get("config") or {}).items()
                     if k not in RESUME_FREE_KEYS and config.to_dict().get(k, v) != v)
    if changed and run.main:
        log.warning("resuming %s with changed settings %s: the run will not repeat the original",
                    path, ", ".join(changed))
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if run.scaler is not None and state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    run.progress = Progress(epoch=int(state["epoch"]), step=int(state["step_in_epoch"]),
                            global_step=int(state["global_step"]), history=list(state.get("history") or []),
                            accum=dict(state.get("epoch_accum") or {}), best=dict(state.get("best") or {}),
                            best_state=state.get("best_model"))
    if int(state.get("world_size", world)) != world:
        log.warning("resuming a %s-process run with %s processes: the sampler shards and RNG "
                    "streams differ from the original run", state.get("world_size"), world)
    rngs = state.get("rng") or []
    if rank < len(rngs):
        restore_rng_state(rngs[rank])
    else:
        seed_everything(config.seed + 1000 * rank + run.progress.global_step)
    if run.main:
        log.info("resuming from %s at epoch %d, step %d", path, run.progress.epoch, run.progress.step)
    return path


def wrap_for_distributed(run: Run) -> None:
    """SyncBatchNorm (if asked) and DistributedDataParallel under torchrun; nothing otherwise."""
    if not run.dist.distributed:
        return
    model = run.model
    if run.config.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # bn_groups > 1 forwards several times per step, and DDP's per-forward buffer broadcast would
    # overwrite running statistics that autograd saved; rank 0's statistics are the same without
    # it (the broadcast only ever sends them out), and every epoch ends with them broadcast anyway
    run.net = nn.parallel.DistributedDataParallel(
        model, device_ids=[run.device.index] if run.device.type == "cuda" else None,
        find_unused_parameters=run.config.find_unused_parameters,
        broadcast_buffers=run.config.bn_groups == 1)
    run.model = unwrap_model(run.net)


def save_state(run: Run, epoch: int, step: int, accum: Mapping[str, float]) -> None:
    """Write the training state (every rank joins: the RNG states of all ranks are kept)."""
    rngs = all_gather_objects(capture_rng_state())
    p = run.progress
    if run.main:
        save_training_state(run.checkpoint_path, {
            "model": model_state_dict(run.model), "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "scaler": run.scaler.state_dict() if run.scaler is not None else None,
            "epoch": epoch, "step_in_epoch": step, "global_step": p.global_step,
            "epoch_accum": dict(accum), "history": p.history, "rng": rngs,
            "world_size": run.dist.world_size, "config": run.config.to_dict(), "model_meta": run.meta,
            "best": dict(p.best), "best_model": p.best_state,
        })
    barrier()


# ============================================================================ one epoch
def _unpack(batch) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(batch, Mapping):
        return batch["clip"], batch["label"]
    return batch[0], batch[1]


def training_step(run: Run, clips: torch.Tensor, targets) -> torch.Tensor:
    """One optimiser step; returns the detached (ce, triplet, total) losses as float64."""
    clips = clips.to(run.device, non_blocking=True)
    targets = torch.as_tensor(targets).to(run.device, non_blocking=True)
    with autocast_context(run.device, run.amp_dtype):
        logits, feats = forward_in_groups(run.net, clips, run.config.bn_groups)
    loss, parts = run.criterion(logits, feats, targets)
    run.optimizer.zero_grad(set_to_none=True)
    if run.scaler is not None:
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
    else:
        loss.backward()
        run.optimizer.step()
    return torch.stack([parts["ce"], parts["triplet"], parts["total"]]).double()


def _flush(sums: torch.Tensor, acc: dict[str, float], epoch: int, step: int) -> None:
    """Move the on-device loss sums into ``acc`` (one device sync); stop on a non-finite loss."""
    vals = sums.tolist()
    sums.zero_()
    for k, v in zip(("ce", "triplet", "total"), vals):
        acc[k] += v
    if not all(math.isfinite(v) for v in vals):
        raise FloatingPointError(f"non-finite loss at epoch {epoch}, step {step}: "
                                 f"ce+triplet sums {vals}; lower the lr or use precision='fp32'")


def train_one_epoch(run: Run, epoch: int) -> dict[str, Any]:
    """Train the (rest of the) epoch; returns its metrics, averaged over steps and ranks."""
    c, p = run.config, run.progress
    step = p.step
    n_steps = run.data.start_epoch(epoch, step, c.max_steps_per_epoch or None, c.seed, run.dist.rank)
    if run.dist.distributed:  # every rank must run the same steps
        n_steps = min(all_gather_objects(n_steps))
    lr = run.optimizer.param_groups[0]["lr"]
    acc = {k: float(p.accum.get(k, 0.0)) for k in _ACCUM_KEYS}
    sums = torch.zeros(3, dtype=torch.float64, device=run.device)  # ce, triplet, total since last flush
    clips_seen, t0 = 0, time.perf_counter()
    run.net.train()
    bar = tqdm(total=n_steps, initial=step, desc=f"epoch {epoch + 1}/{c.epochs}", unit="step",
               dynamic_ncols=True, leave=False, disable=None if run.main and c.progress else True)
    for batch in run.data.loader:
        if step >= n_steps:
            break
        clips, targets = _unpack(batch)
        sums += training_step(run, clips, targets)
        step += 1
        p.global_step += 1
        n = clips.shape[0] * run.dist.world_size
        acc["steps"] += 1
        acc["clips"] += n
        clips_seen += n
        if c.log_every_steps and step % c.log_every_steps == 0:
            _flush(sums, acc, epoch, step)
            bar.set_postfix(loss=f"{acc['total'] / max(acc['steps'], 1):.3f}", lr=f"{lr:.2e}",
                            clips_s=f"{clips_seen / max(time.perf_counter() - t0, 1e-9):.1f}")
        bar.update(1)
        if c.checkpoint_every_steps and step % c.checkpoint_every_steps == 0 and step < n_steps:
            _flush(sums, acc, epoch, step)
            save_state(run, epoch, step, acc)
    _flush(sums, acc, epoch, step)
    bar.close()
    elapsed = time.perf_counter() - t0
    ce, tri, tot, steps = all_reduce_sum([acc["ce"], acc["triplet"], acc["total"], acc["steps"]], run.device)
    steps = max(steps, 1.0)
    return {"epoch": epoch, "lr": lr, "loss_ce": ce / steps, "loss_triplet": tri / steps,
            "loss_total": tot / steps, "clips_per_s": clips_seen / max(elapsed, 1e-9),
            "epoch_time_s": elapsed, "steps": int(round(acc["steps"]))}


# ============================================================================ end of an epoch
def validate(run: Run) -> dict[str, float]:
    """``evaluate`` on rank 0 with the model in eval mode, RNG states untouched; ``val_*`` metrics."""
    values: dict[str, float] = {}
    if run.main:
        rng = capture_rng_state()
        run.model.eval()
        try:
            with torch.no_grad():
                out = run.evaluate(run.model, run.data.val_indices)
        finally:
            run.model.train()
            restore_rng_state(rng)
        values = {f"val_{k}": float(v) for k, v in dict(out or {}).items()}
    barrier()
    return values


def keep_if_best(run: Run, epoch: int, metrics: Mapping[str, Any]) -> None:
    """select=best_val: remember this epoch's weights if its held-out (rank-1, mAP) is the best yet."""
    if not run.main or "val_rank1" not in metrics:
        return
    score = (metrics["val_rank1"], metrics.get("val_mAP", 0.0))
    best = run.progress.best
    if best and score <= (best["val_rank1"], best["val_mAP"]):
        return
    run.progress.best = {"epoch": epoch, "val_rank1": score[0], "val_mAP": score[1]}
    run.progress.best_state = model_state_dict(run.model)


def end_of_epoch(run: Run, epoch: int, metrics: dict[str, Any]) -> None:
    """Schedule step, validation (and model selection), checkpoint, history, summary line, callback."""
    c, p = run.config, run.progress
    run.scheduler.step()
    broadcast_buffers(run.model)  # every rank ends the epoch with rank 0's BN statistics
    last = epoch + 1 == c.epochs
    if run.evaluate is not None and ((c.eval_every and (epoch + 1) % c.eval_every == 0) or last):
        metrics.update(validate(run))
        if c.select == "best_val":
            keep_if_best(run, epoch, metrics)
    p.history.append(metrics)
    p.epoch, p.step, p.accum = epoch + 1, 0, {}
    save_state(run, epoch + 1, 0, {})
    if run.main:
        write_text_atomic(run.out_dir / HISTORY_NAME, json.dumps(p.history, indent=1) + "\n")
        log.info(epoch_summary(metrics, c.epochs))
        if run.on_epoch_end is not None:
            run.on_epoch_end(epoch, dict(metrics))
    barrier()


def epoch_summary(metrics: Mapping[str, Any], epochs: int) -> str:
    """One line: ``epoch 3/14: loss 4.123 (ce 3.210, triplet 0.913), lr 1.00e-03, 210.5 clips/s,
    12.3 s[, val rank-1 45.2% mAP 50.1%]``."""
    m = metrics
    line = (f"epoch {m['epoch'] + 1}/{epochs}: loss {m['loss_total']:.4f} (ce {m['loss_ce']:.4f}, "
            f"triplet {m['loss_triplet']:.4f}), lr {m['lr']:.2e}, {m['clips_per_s']:.1f} clips/s, "
            f"{m['epoch_time_s']:.1f} s")
    if "val_rank1" in m:
        line += f", val rank-1 {100 * m['val_rank1']:.1f}% mAP {100 * m.get('val_mAP', 0.0):.1f}%"
    return line


def save_model(run: Run) -> tuple[Path | None, int | None]:
    """Write model.pt on rank 0: the last epoch's weights, or the best validation epoch's."""
    c, p = run.config, run.progress
    selected = (p.epoch - 1) if p.epoch else None
    selection: dict[str, Any] = {"rule": c.select}
    if c.select == "best_val":
        if p.best_state is None:
            if run.main:
                log.warning("select='best_val': no validation produced a rank-1; model.pt holds the last epoch")
        else:
            run.model.load_state_dict(p.best_state)
            selected = int(p.best["epoch"])
            selection.update(val_rank1=p.best["val_rank1"], val_mAP=p.best["val_mAP"])
    selection["epoch"] = selected
    path = None
    if run.main:
        path = save_checkpoint(run.out_dir / MODEL_NAME, run.model, run.meta, epochs=int(c.epochs),
                               train_config=c.to_dict(), selection=selection)
        if c.select == "best_val" and selected is not None:
            log.info("model.pt holds epoch %d (best held-out rank-1 %.1f%%)", selected + 1,
                     100 * selection.get("val_rank1", float("nan")))
    barrier()
    return path, selected
