"""Model files: the authors' released PSTA checkpoints (read) and our own format (written and read here only).

Our checkpoints hold only tensors, strings, numbers, lists and dicts, so they load with
``torch.load(path, weights_only=True)``:
``{"format": "psta-reid/model-v1", "config": {build_model kwargs}, "state_dict": {...}, **extra}``.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from psta.atomic import atomic_path
from psta.errors import IntegrityError, MissingFileError
from psta.integrity import check_digest

from .psta import build_model, model_from_config
from .state_dict import (
    CheckpointMismatchError,
    model_state_dict,
    strict_load_state_dict,
    to_cpu,
    unwrap_model,
    unwrap_state_dict,
)

CHECKPOINT_FORMAT = "psta-reid/model-v1"
# how to get a good model.pt back, for the messages about a damaged one
MODEL_FIX = ("re-create it with the train stage (`dvc repro train` or `python -m pipeline train`), "
             "or restore the tracked copy with `dvc checkout data/models` / `dvc pull`")


def _torch_load(path: Path, map_location, allow_pickle: bool, fix: str = MODEL_FIX,
                require_digest: bool = False):
    """torch.load (weights only) of a checkpoint checked first: there, not empty, and matching
    its ``.sha256`` when one is beside it (ours always are; ``require_digest``: it must be)."""
    if not path.is_file():
        raise MissingFileError(f"checkpoint file {path} is missing; {fix}")
    if path.stat().st_size == 0:
        raise IntegrityError(f"{path} is empty (0 bytes): not a checkpoint; {fix}")
    check_digest(path, required=require_digest, fix=fix)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (EOFError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and "PytorchStreamReader" not in str(exc):
            raise
        detail = str(exc).split(". ")[0] or type(exc).__name__
        raise IntegrityError(f"{path} is truncated or not a torch checkpoint ({detail}); "
                             f"{fix}") from None
    except pickle.UnpicklingError as exc:
        if not allow_pickle:
            raise ValueError(
                f"{path} holds Python objects other than tensors and cannot be read with "
                f"weights_only=True ({str(exc).splitlines()[0]}). If you trust the file, pass "
                f"allow_pickle=True (it runs arbitrary pickle code)."
            ) from exc
    return torch.load(path, map_location=map_location, weights_only=False)


def load_released_psta(
    path: str | os.PathLike,
    num_classes: int | None = None,
    seq_len: int | None = None,
    height: int = 256,
    width: int = 128,
    map_location: str | torch.device = "cpu",
    allow_pickle: bool = False,
) -> nn.Module:
    """Build a resnet50 PSTA and strictly load the authors' released checkpoint into it.

    The file is a state dict saved from ``nn.DataParallel`` (keys prefixed ``module.``), possibly
    wrapped as ``{"state_dict": ...}``. ``num_classes`` defaults to the classifier's size and
    ``seq_len`` to 2 ** (number of pyramid levels) found in the file. Returns the model in eval mode.
    """
    path = Path(path)
    loaded = _torch_load(path, map_location, allow_pickle, fix="download the authors' checkpoint again")
    state = unwrap_state_dict(loaded, source=str(path))
    if num_classes is None:
        w = state.get("classifier.0.weight")
        if not isinstance(w, torch.Tensor) or w.ndim != 2:
            raise CheckpointMismatchError(
                f"{path}: cannot infer num_classes (no 2-d 'classifier.0.weight'); pass num_classes"
            )
        num_classes = int(w.shape[0])
    if seq_len is None:
        levels = 0
        while any(k.startswith(f"layer{levels + 1}.") for k in state):
            levels += 1
        seq_len = 2 ** max(levels, 1)
    model = build_model("psta", num_classes, seq_len=seq_len, height=height, width=width,
                        backbone="resnet50", pretrained="none")
    strict_load_state_dict(model, state, source=str(path))
    return model.eval()


# flat keys beside "config" that tell what a model.pt holds without rebuilding it
META_KEYS = ("arch", "num_classes", "seq_len", "height", "width", "backbone", "feature_dim")


def save_checkpoint(path: str | os.PathLike, model: nn.Module, meta: Mapping[str, Any] | None = None,
                    **extra: Any) -> Path:
    """Atomically write ``model`` (unwrapped from DDP / DataParallel / compile) in our format.

    ``config`` is the model's build config (``model.config``; for a model without one, the
    ``meta`` entries); the flat :data:`META_KEYS` come from ``meta``, else the config, else
    ``model.feature_dim``. ``extra`` values must be tensors, numbers, strings, bools, None, or
    lists / dicts of them, so that the file loads with ``torch.load(..., weights_only=True)``.
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
    reserved = {"format", "config", "state_dict"} & set(extra)
    if reserved:
        raise ValueError(f"extra key {sorted(reserved)[0]!r} is reserved")
    payload = {"format": CHECKPOINT_FORMAT, "config": config, "state_dict": model_state_dict(inner),
               **info, **to_cpu(extra)}
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    require_digest: bool = False) -> dict[str, Any]:
    """The dict :func:`save_checkpoint` wrote, checked (see :func:`load_checkpoint`), not rebuilt."""
    path = Path(path)
    ckpt = _torch_load(path, map_location, allow_pickle=False, require_digest=require_digest)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint "
                         f"(for the authors' released files use load_released_psta)")
    return ckpt


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    require_digest: bool = False) -> tuple[nn.Module, dict]:
    """Rebuild the model saved by :func:`save_checkpoint` and load it strictly.

    The file is checked first: a missing, empty, truncated or damaged file (against the
    ``.sha256`` beside it; ``require_digest``: refused without one) is one :class:`UserError`
    naming it and how to get it back. Returns ``(model, checkpoint)``; the model is in eval
    mode, ``checkpoint`` is the whole dict.
    """
    ckpt = read_checkpoint(path, map_location, require_digest)
    model = model_from_config(ckpt["config"], pretrained="none")
    strict_load_state_dict(model, ckpt["state_dict"], source=str(path))
    return model.eval(), ckpt
