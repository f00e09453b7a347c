"""Training-state checkpoints (resumable, mid-epoch); the names of the files in a run folder.

Both files of a run folder hold only tensors, numbers, strings, bools, ``None`` and lists / tuples / dicts of
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

Final model, ``<out_dir>/model.pt``: written and read only by :mod:`psta.model.checkpoints`
(``save_checkpoint`` / ``read_checkpoint`` / ``load_checkpoint``), with the training's
``epochs``, ``train_config`` and ``selection``: ``{"rule": "last" | "best_val", "epoch":
0-based epoch of the weights[, "val_rank1", "val_mAP"]}``.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from psta.atomic import atomic_path
from psta.model.state_dict import to_cpu

__all__ = [
    "TRAIN_STATE_FORMAT", "CHECKPOINT_NAME", "MODEL_NAME",
    "capture_rng_state", "restore_rng_state", "save_training_state", "load_training_state",
    "find_resume_checkpoint",
]

TRAIN_STATE_FORMAT = "psta-reid/train-state-v1"
CHECKPOINT_NAME = "checkpoint.pt"
MODEL_NAME = "model.pt"


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


# ----------------------------------------------------------------------------- training state
def save_training_state(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Atomically write a training-state dict (see the module docstring); tensors moved to CPU."""
    payload = {"format": TRAIN_STATE_FORMAT, **to_cpu(dict(state))}
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
