"""State dicts: strict loading with one clear message, unwrapping, detached CPU copies.

The low-level helpers every model file format and the backbone's weight loader share; they
import nothing else of ours, so every module can import them at its top.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from psta.errors import UserError

__all__ = ["CheckpointMismatchError", "strict_load_state_dict", "unwrap_state_dict", "unwrap_model",
           "model_state_dict", "to_cpu"]

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


def to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor in it (nested dicts, lists, tuples) detached and moved to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_cpu(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(to_cpu(v) for v in obj)
    return obj
