"""Strict state-dict loading, the authors' released PSTA checkpoints, and our own checkpoints.

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

from psta.errors import IntegrityError, MissingFileError, UserError
from psta.integrity import check_digest

CHECKPOINT_FORMAT = "psta-reid/model-v1"
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")


class CheckpointMismatchError(UserError, RuntimeError):
    """A state dict does not fit a model: missing / unexpected keys or shape mismatches."""


def _shorten(items: list[str], limit: int = 40) -> str:
    if len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit]) + f", ... ({len(items) - limit} more)"


def strict_load_state_dict(model: nn.Module, state_dict: Mapping[str, Any], source: str = "state dict") -> None:
    """Load ``state_dict`` into ``model``: every key used, every model key present, every shape equal.

    On any mismatch, raise one :class:`CheckpointMismatchError` listing all missing keys,
    unexpected keys and shape mismatches (nothing is loaded in that case).
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    bad_shapes = []
    not_tensors = []
    for k, v in state_dict.items():
        if k not in expected:
            continue
        if not isinstance(v, torch.Tensor):
            not_tensors.append(f"{k} ({type(v).__name__})")
        elif tuple(v.shape) != tuple(expected[k].shape):
            bad_shapes.append(f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}")
    if missing or unexpected or bad_shapes or not_tensors:
        parts = [f"{source} does not match the model ({type(model).__name__}):"]
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_shorten(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_shorten(unexpected)}")
        if bad_shapes:
            parts.append(f"shape mismatches ({len(bad_shapes)}): {_shorten(bad_shapes)}")
        if not_tensors:
            parts.append(f"values that are not tensors ({len(not_tensors)}): {_shorten(not_tensors)}")
        raise CheckpointMismatchError("\n  ".join(parts))
    model.load_state_dict(state_dict, strict=True)


def unwrap_state_dict(obj: Any, source: str = "checkpoint", strip_prefix: str = "module.") -> dict[str, Any]:
    """The state dict inside ``obj`` (a bare one, or under 'state_dict' / 'model' / ...), prefix stripped."""
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise ValueError(f"{source}: expected a state dict (or a dict wrapping one), got {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        if strip_prefix and isinstance(k, str) and k.startswith(strip_prefix):
            k = k[len(strip_prefix):]
        out[k] = v
    return out


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
    from .psta import build_model

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


def save_checkpoint(path: str | os.PathLike, model: nn.Module, **extra: Any) -> None:
    """Atomically save ``model`` (its state dict and build config) plus ``extra`` entries.

    ``extra`` values must be tensors, numbers, strings, bools, None, or lists / dicts of them,
    so that the file loads with ``torch.load(..., weights_only=True)``.
    """
    from psta.atomic import atomic_path

    config = getattr(model, "config", None)
    if config is None:
        raise ValueError("model has no .config (not a psta.model PSTA / TAP)")
    payload = {"format": CHECKPOINT_FORMAT, "config": dict(config),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    for k in extra:
        if k in payload:
            raise ValueError(f"extra key {k!r} is reserved")
    payload.update(extra)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    require_digest: bool = False) -> tuple[nn.Module, dict]:
    """Rebuild the model saved by :func:`save_checkpoint` and load it strictly.

    The file is checked first: a missing, empty, truncated or damaged file (against the
    ``.sha256`` beside it; ``require_digest``: refused without one) is one :class:`UserError`
    naming it and how to get it back. Returns ``(model, checkpoint)``; the model is in eval
    mode, ``checkpoint`` is the whole dict.
    """
    from .psta import model_from_config

    path = Path(path)
    ckpt = _torch_load(path, map_location, allow_pickle=False, require_digest=require_digest)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint "
                         f"(for the authors' released files use load_released_psta)")
    model = model_from_config(ckpt["config"], pretrained="none")
    strict_load_state_dict(model, ckpt["state_dict"], source=str(path))
    return model.eval(), ckpt
