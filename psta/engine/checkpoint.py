"""Training-state checkpoints (resumable, mid-epoch) and the final ``model.pt``.

Both files hold only tensors, numbers, strings, bools, ``None`` and lists / tuples / dicts of
them, so both load with ``torch.load(path, weights_only=True)``: no pickled Python objects.

Training state, ``<out_dir>/checkpoint.pt`` (written atomically, at the end of every epoch and
every ``checkpoint_every_steps`` optimiser steps)::

    {
      "format": "psta-reid/train-state-v1",
      "model": {name: tensor},            # unwrapped (no "module." prefix), on CPU
      "optimizer": optimizer.state_dict(),
      "scheduler": scheduler.state_dict(),
      "scaler": GradScaler.state_dict() or None,
      "epoch": int,                       # the epoch in progress (0-based) ...
      "step_in_epoch": int,               # ... and the batches of it already trained (0: none)
      "global_step": int,                 # optimiser steps since the start of training
      "epoch_accum": {"ce", "triplet", "total": float sums, "steps": int, "clips": int},
      "history": [per-epoch metrics dicts],
      "rng": [one dict per rank: {"torch": ByteTensor, "cuda": [ByteTensor] , "numpy": {...}, "python": {...}}],
      "world_size": int,
      "config": TrainConfig.to_dict(),
      "model_meta": {arch, num_classes, seq_len, height, width, backbone, feature_dim, ...},
      "best": {"epoch", "val_rank1", "val_mAP"} or {},   # select=best_val: the best epoch so far
      "best_model": {name: tensor} or None,              # ... and its weights
    }

Final model, ``<out_dir>/model.pt``: the model package's checkpoint format
(``{"format": "psta-reid/model-v1", "config": build_model kwargs, "state_dict": ...}``, readable by
``psta.model.checkpoints.load_checkpoint``) plus the flat metadata keys ``arch``, ``num_classes``,
``seq_len``, ``height``, ``width``, ``backbone``, ``feature_dim``, and ``selection``:
``{"rule": "last" | "best_val", "epoch": 0-based epoch of the weights[, "val_rank1", "val_mAP"]}``.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from psta.atomic import atomic_path

__all__ = [
    "TRAIN_STATE_FORMAT", "MODEL_FORMAT", "CHECKPOINT_NAME", "MODEL_NAME",
    "capture_rng_state", "restore_rng_state", "save_training_state", "load_training_state",
    "find_resume_checkpoint", "unwrap_model", "model_state_dict", "save_final_model", "load_final_model",
]

TRAIN_STATE_FORMAT = "psta-reid/train-state-v1"
MODEL_FORMAT = "psta-reid/model-v1"  # the same as psta.model.checkpoints.CHECKPOINT_FORMAT
CHECKPOINT_NAME = "checkpoint.pt"
MODEL_NAME = "model.pt"
META_KEYS = ("arch", "num_classes", "seq_len", "height", "width", "backbone", "feature_dim")


# ----------------------------------------------------------------------------- RNG states
def capture_rng_state() -> dict[str, Any]:
    """This process's torch / CUDA / numpy / python RNG states as tensors and numbers."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64).copy()),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {
            "version": int(py_version),
            "internal": torch.tensor(py_internal, dtype=torch.int64),
            "gauss_next": py_gauss,
        },
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    npst = state["numpy"]
    np.random.set_state((npst["name"], npst["keys"].numpy().astype(np.uint32), int(npst["pos"]),
                         int(npst["has_gauss"]), float(npst["cached_gaussian"])))
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["internal"].tolist()), py["gauss_next"]))
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        n = min(len(cuda), torch.cuda.device_count())
        torch.cuda.set_rng_state_all([s.cpu().to(torch.uint8) for s in cuda[:n]])


# ----------------------------------------------------------------------------- model helpers
def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def model_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached CPU copies of the unwrapped model's state dict (contiguous, any memory format)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in unwrap_model(model).state_dict().items()}


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_to_cpu(v) for v in obj)
    return obj


# ----------------------------------------------------------------------------- training state
def save_training_state(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Atomically write a training-state dict (see the module docstring); tensors moved to CPU."""
    payload = {"format": TRAIN_STATE_FORMAT, **_to_cpu(dict(state))}
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_training_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training-state checkpoint with ``weights_only=True`` (CPU tensors)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training checkpoint not found: '{path}'")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != TRAIN_STATE_FORMAT:
        raise ValueError(f"{path} is not a {TRAIN_STATE_FORMAT} training checkpoint "
                         f"(format {state.get('format') if isinstance(state, dict) else type(state).__name__!r})")
    return state


def find_resume_checkpoint(resume: str | os.PathLike | None, out_dir: str | os.PathLike) -> Path | None:
    """The checkpoint to resume from.

    ``resume``: ``"auto"`` -> ``<out_dir>/checkpoint.pt`` if it exists, else ``None`` (fresh start);
    ``"never"`` / ``None`` / ``""`` -> ``None``; anything else is a path (a file, or a directory holding
    ``checkpoint.pt``) that must exist.
    """
    if resume is None or str(resume) in ("", "never", "none"):
        return None
    if str(resume) == "auto":
        candidate = Path(out_dir) / CHECKPOINT_NAME
        return candidate if candidate.is_file() else None
    p = Path(resume)
    if p.is_dir():
        p = p / CHECKPOINT_NAME
    if not p.is_file():
        raise FileNotFoundError(f"resume={str(resume)!r}: no checkpoint at '{p}'; use resume='auto' "
                                f"(continue from {Path(out_dir) / CHECKPOINT_NAME} if present) or 'never'")
    return p


# ----------------------------------------------------------------------------- final model
def save_final_model(path: str | os.PathLike, model: nn.Module, meta: Mapping[str, Any] | None = None,
                     **extra: Any) -> Path:
    """Atomically write ``model.pt``: the model-package checkpoint format + flat arch metadata.

    ``meta`` supplies or overrides ``arch, num_classes, seq_len, height, width, backbone,
    feature_dim`` (taken from ``model.config`` / ``model.feature_dim`` when the model has them).
    """
    inner = unwrap_model(model)
    config = dict(getattr(inner, "config", None) or {})
    meta = dict(meta or {})
    info: dict[str, Any] = {}
    for key in META_KEYS:
        if key in meta:
            info[key] = meta[key]
        elif key in config:
            info[key] = config[key]
        elif key == "feature_dim" and hasattr(inner, "feature_dim"):
            info[key] = int(inner.feature_dim)
    if not config:
        config = {k: v for k, v in info.items() if k != "feature_dim"}
    for key in ("format", "config", "state_dict"):
        if key in extra:
            raise ValueError(f"extra key {key!r} is reserved")
    payload = {"format": MODEL_FORMAT, "config": config, "state_dict": model_state_dict(inner),
               **info, **_to_cpu(extra)}
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_final_model(path: str | os.PathLike) -> dict[str, Any]:
    """The raw ``model.pt`` dict (``weights_only=True``); rebuild with ``psta.model.checkpoints.load_checkpoint``."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)
