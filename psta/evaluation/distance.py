"""Query x gallery distances, computed in chunks of query rows.

Conventions (the same as torchreid's ``compute_distance_matrix``):

* ``"cosine"``: ``1 - cos(q, g)`` computed on L2-normalised features, in ``[0, 2]``. This is the
  distance PSTA reports for MARS and DukeMTMC-VideoReID.
* ``"euclidean"``: the **squared** Euclidean distance ``|q|^2 + |g|^2 - 2 q.g`` (clamped at 0
  against round-off) by default, as torchreid and the k-reciprocal re-ranking code use; pass
  ``squared=False`` for the plain Euclidean distance. Rankings are identical either way.

The result is a numpy array (float32, or float64 when both inputs are float64). Only one
``chunk_size x num_gallery`` block of temporaries exists at a time besides the output. Torch
tensors on a GPU are computed on that GPU and the result copied back.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch

from ._validate import as_feature_pair, check_positive_int, to_numpy

METRICS = ("cosine", "euclidean")

__all__ = ["METRICS", "pairwise_distance", "DistanceRows"]


def _check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return metric


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    return x / np.maximum(norms, 1e-12)[:, None].astype(x.dtype)


class DistanceRows:
    """Pre-processed gallery; ``rows(q_block)`` returns the distances of a block of queries.

    Used by :func:`pairwise_distance` and by the fused evaluation
    (:func:`psta.evaluation.rank_metrics_from_features`), which never materialises the whole
    query x gallery matrix.
    """

    def __init__(self, g: np.ndarray, metric: str = "cosine", squared: bool = True,
                 dtype: np.dtype | None = None):
        self.metric = _check_metric(metric)
        self.squared = bool(squared)
        self.dtype = np.dtype(dtype or g.dtype)
        g = g.astype(self.dtype, copy=False)
        if metric == "cosine":
            self.g = _l2_normalise(g)
        else:
            self.g = np.ascontiguousarray(g)
            self.g_sq = np.einsum("ij,ij->i", g, g)
        self.num_gallery = g.shape[0]

    def prepare_queries(self, q: np.ndarray) -> np.ndarray:
        q = q.astype(self.dtype, copy=False)
        return _l2_normalise(q) if self.metric == "cosine" else q

    def rows(self, q_prepared: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Distances of prepared query rows to the whole gallery (``len(q) x num_gallery``)."""
        d = np.matmul(q_prepared, self.g.T, out=out)
        if self.metric == "cosine":
            np.subtract(1.0, d, out=d)
        else:
            q_sq = np.einsum("ij,ij->i", q_prepared, q_prepared)
            d *= -2.0
            d += q_sq[:, None]
            d += self.g_sq[None, :]
            np.maximum(d, 0.0, out=d)
            if not self.squared:
                np.sqrt(d, out=d)
        return d


def _torch_cuda_distance(q: torch.Tensor, g: torch.Tensor, metric: str, squared: bool,
                         chunk_size: int) -> np.ndarray:
    dtype = torch.float64 if (q.dtype == torch.float64 and g.dtype == torch.float64) else torch.float32
    q = q.detach().to(dtype)
    g = g.detach().to(device=q.device, dtype=dtype)
    for name, x in (("query features", q), ("gallery features", g)):
        if not torch.isfinite(x).all():
            bad = (~torch.isfinite(x)).any(dim=1).nonzero().flatten()
            raise ValueError(f"{name} contains NaN/inf in {len(bad)} row(s) (first at row "
                             f"{int(bad[0])}); the model produced NaN/inf embeddings (diverged "
                             "training, or fp16 overflow); fix the model or drop those rows")
    if metric == "cosine":
        q = torch.nn.functional.normalize(q, dim=1, eps=1e-12)
        g = torch.nn.functional.normalize(g, dim=1, eps=1e-12)
    else:
        g_sq = (g * g).sum(1)
    out = np.empty((q.shape[0], g.shape[0]), dtype=np.float64 if dtype == torch.float64 else np.float32)
    for a in range(0, q.shape[0], chunk_size):
        qb = q[a:a + chunk_size]
        if metric == "cosine":
            d = 1.0 - qb @ g.T
        else:
            d = ((qb * qb).sum(1)[:, None] + g_sq[None, :] - 2.0 * (qb @ g.T)).clamp_(min=0)
            if not squared:
                d = d.sqrt_()
        out[a:a + chunk_size] = d.cpu().numpy()
    return out


def pairwise_distance(q: Any, g: Any, metric: str = "cosine", chunk_size: int = 1024,
                      squared: bool = True) -> np.ndarray:
    """Distance matrix ``len(q) x len(g)`` between query and gallery embeddings.

    Args:
        q, g: ``N x D`` and ``M x D`` embeddings (numpy arrays or torch tensors).
        metric: ``"cosine"`` (``1 - cos``) or ``"euclidean"`` (squared unless ``squared=False``).
        chunk_size: query rows per block; bounds the temporaries to ``chunk_size x M``.
        squared: for ``"euclidean"`` only: return squared distances (torchreid's convention).

    Raises:
        ValueError: empty query set / gallery, mismatched feature dimensions, NaN/inf
            embeddings, an unknown metric.
    """
    _check_metric(metric)
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    if torch.is_tensor(q) and q.device.type == "cuda":
        g_t = g if torch.is_tensor(g) else torch.as_tensor(np.asarray(g))
        if q.ndim != 2 or g_t.ndim != 2:
            raise ValueError("q and g must be 2-D (num_items x feature_dim), got shapes "
                             f"{tuple(q.shape)} and {tuple(g_t.shape)}")
        if q.shape[0] == 0 or g_t.shape[0] == 0:
            raise ValueError("empty query set or gallery: both q and g need at least one row")
        if q.shape[1] != g_t.shape[1]:
            raise ValueError(f"feature dimensions differ: query features have {q.shape[1]} "
                             f"columns, gallery features {g_t.shape[1]}; embed both with the same model")
        return _torch_cuda_distance(q, g_t, metric, squared, chunk_size)
    qa, ga, dtype = as_feature_pair(q, g)
    rows = DistanceRows(ga, metric, squared, dtype=dtype)
    out = np.empty((qa.shape[0], ga.shape[0]), dtype=dtype)
    for a in range(0, qa.shape[0], chunk_size):
        rows.rows(rows.prepare_queries(qa[a:a + chunk_size]), out=out[a:a + chunk_size])
    return out


def iter_distance_blocks(q: np.ndarray, rows: DistanceRows, order: np.ndarray,
                         chunk_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(query_indices, distance_block)`` for ``order`` split into chunks."""
    buf = np.empty((min(chunk_size, len(order)), rows.num_gallery), dtype=rows.dtype)
    for a in range(0, len(order), chunk_size):
        idx = order[a:a + chunk_size]
        yield idx, rows.rows(rows.prepare_queries(q[idx]), out=buf[:len(idx)])


def as_distance_matrix(dist: Any) -> np.ndarray:
    d = to_numpy(dist)
    if d.ndim != 2:
        raise ValueError(f"dist must be a 2-D num_query x num_gallery matrix, got shape {tuple(d.shape)}")
    if d.dtype.kind not in "fiu":
        raise ValueError(f"dist must be numeric, got dtype {d.dtype}")
    if d.dtype != np.float64 and d.dtype != np.float32:
        d = d.astype(np.float32 if d.dtype.kind == "f" else np.float64)
    return d
