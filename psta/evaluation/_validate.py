"""Input conversion and validation shared by the evaluation modules.

Every check raises ``ValueError`` with a message that names the offending argument and says
how to fix it, so a bad call fails at the boundary instead of deep inside numpy.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch


def to_numpy(x: Any) -> np.ndarray:
    """numpy view of a numpy array, torch tensor (any device) or array-like; no copy if possible."""
    if torch.is_tensor(x):
        x = x.detach()
        if x.device.type != "cpu":
            x = x.cpu()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def as_ids(x: Any, name: str, expected_len: int | None = None, source: str = "",
           unit: str = "") -> np.ndarray:
    """A 1-D int64 array of identities or cameras, of length ``expected_len`` if given."""
    a = to_numpy(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of integers, got shape {tuple(a.shape)}")
    if a.dtype.kind not in "iub":
        if a.dtype.kind == "f" and np.isfinite(a).all() and np.all(a == np.round(a)):
            a = a.astype(np.int64)
        else:
            raise ValueError(f"{name} must hold integers (identities / camera ids), got dtype {a.dtype}")
    a = a.astype(np.int64, copy=False)
    if expected_len is not None and len(a) != expected_len:
        raise ValueError(f"{name} has {len(a)} entries but {source} has {expected_len}; "
                         f"pass exactly one {name} value per {unit}")
    return a


def as_features(x: Any, name: str) -> np.ndarray:
    """A 2-D floating (float32 or float64) feature matrix with only finite values."""
    a = to_numpy(x)
    if a.ndim == 1:
        raise ValueError(f"{name} must be 2-D (num_items x feature_dim), got a 1-D array of "
                         f"length {a.shape[0]}; reshape a single embedding with x[None, :]")
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (num_items x feature_dim), got shape {tuple(a.shape)}")
    if a.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be numeric, got dtype {a.dtype}")
    if a.dtype != np.float64:
        a = a.astype(np.float32, copy=False)
    if a.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 rows); "
                         + ("the query set is empty: the split has no 'query' rows"
                            if "query" in name or name.startswith("q") else
                            "the gallery is empty: the split has no 'gallery' rows")
                         + " (check the tracklet table / protocol)")
    check_finite(a, name, what="embeddings", hint="the model produced NaN/inf embeddings "
                 "(diverged training, or fp16 overflow); fix the model or drop those rows")
    return a


def check_finite(a: np.ndarray, name: str, what: str, hint: str, row_offset: int = 0) -> None:
    """Raise if ``a`` holds NaN/inf. Fast path: the sum of finite values is finite."""
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(a.sum()):
            return
    bad = ~np.isfinite(a)
    if not bad.any():  # the sum overflowed but every value is finite
        return
    rows = np.nonzero(bad.reshape(a.shape[0], -1).any(axis=1))[0]
    raise ValueError(f"{name} contains {int(bad.sum())} NaN/inf value(s) in {len(rows)} row(s) "
                     f"(first at row {int(rows[0]) + row_offset}); {hint}")


def check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def as_feature_pair(q: Any, g: Any) -> tuple[np.ndarray, np.ndarray, type]:
    """Validated query and gallery features and the dtype to compute in (float64 only if both are)."""
    qa = as_features(q, "query features (q)")
    ga = as_features(g, "gallery features (g)")
    if qa.shape[1] != ga.shape[1]:
        raise ValueError(f"feature dimensions differ: query features (q) have {qa.shape[1]} "
                         f"columns, gallery features (g) {ga.shape[1]}; embed both with the same model")
    dtype = np.float64 if (qa.dtype == np.float64 and ga.dtype == np.float64) else np.float32
    return qa, ga, dtype
