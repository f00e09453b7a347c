"""Verification metrics: "same person or not" for a query x gallery pair of tracklets.

Pairs follow the ranking protocols' rules (:mod:`psta.evaluation.metrics`): for a query, gallery
items with its identity **and** camera are ignored (this removes the query itself where it is
in the gallery); items with its identity from another camera are **matching** pairs; items of
another identity (pid 0 distractors included) are **non-matching** pairs. Every query counts,
also one without a valid match (its non-matching pairs are real impostor pairs).

A pair is called "same person" when its distance is **at most** a threshold ``t``:
``TPR(t)`` is the share of matching pairs with ``d <= t``, ``FPR(t)`` that of non-matching
pairs. The numbers:

* ``tpr_at_fpr[f]``: the highest TPR of any threshold whose FPR is at most ``f`` (a point of
  the ROC, no interpolation): ``#{matching d < v} / P`` with ``v`` the
  ``(floor(f N) + 1)``-th smallest non-matching distance.
* ``threshold``: a threshold with that TPR at ``f = target_fpr``, halfway between the largest
  distance it accepts and ``v`` (the first it rejects), so on the data it was fitted on its
  FPR is at most ``target_fpr`` and no larger threshold keeps that.
* ``fpr`` / ``tpr`` / ``thresholds``: the ROC's corner points (every point where the curve
  changes direction; the full curve is these points joined by straight lines, exactly what
  ``sklearn.metrics.roc_curve`` gives on scores ``-d``), ``auc`` its area, ``eer`` the rate where
  it meets FPR = 1 - TPR (linear between corners).
* ``hist_edges`` / ``hist_pos`` / ``hist_neg``: histograms of the two distance distributions.

Algorithm: two passes over chunks of query rows, never more than one ``chunk x gallery``
block of distances at a time and never a sort of the non-matching pairs. Pass 1 keeps the
(few) matching distances and the ``K`` smallest non-matching ones (``K = floor(max f N) + 1``;
``np.partition`` per chunk). Pass 2 places every non-matching distance among the sorted
distinct matching distances (one ``searchsorted``) and counts them per interval, which gives
the ROC's corners exactly, ties included.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ._validate import check_positive_int
from .distance import DistanceRows, _check_metric, as_distance_matrix, iter_distance_blocks
from .metrics import GalleryIndex, _check_block_finite, _check_ids, query_gallery_features

__all__ = ["FPR_POINTS", "verification_metrics", "verification_metrics_from_features"]

FPR_POINTS = (1e-4, 1e-3, 1e-2)
Blocks = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]


def _pair_masks(qp, qc, gp, gc) -> tuple[np.ndarray, np.ndarray]:
    """Matching and non-matching pairs of a block of queries (``c x G`` booleans)."""
    same_pid = qp[:, None] == gp[None, :]
    return same_pid & (qc[:, None] != gc[None, :]), ~same_pid


def _smallest(values: np.ndarray, k: int) -> np.ndarray:
    return np.partition(values, k - 1)[:k] if len(values) > k else values


def _first_pass(blocks: Blocks, ids, keep: int):
    """Matching distances, the ``keep`` smallest non-matching ones, and the largest distance."""
    qp, qc, gp, gc = ids
    pos, neg, top = [], np.empty(0), -np.inf
    for idx, D in blocks():
        is_pos, is_neg = _pair_masks(qp[idx], qc[idx], gp, gc)
        pos.append(D[is_pos].astype(np.float64))
        block_neg = D[is_neg]
        if len(block_neg):
            top = max(top, float(block_neg.max()))
            neg = _smallest(np.concatenate([neg, _smallest(block_neg, keep).astype(np.float64)]), keep)
    pos = np.sort(np.concatenate(pos)) if pos else np.empty(0)
    if len(pos):
        top = max(top, float(pos[-1]))
    return pos, np.sort(neg), top


def _second_pass(blocks: Blocks, ids, uniq: np.ndarray, edges: np.ndarray):
    """Per distinct matching distance ``u_j``: non-matching pairs ``< u_j`` and ``<= u_j``;
    and the histogram of non-matching distances."""
    qp, qc, gp, gc = ids
    n_u = len(uniq)
    below = np.zeros(n_u + 1, np.int64)     # below[j]: non-matching d with #{u < d} == j
    upto = np.zeros(n_u + 1, np.int64)      # upto[j]: non-matching d with #{u <= d} == j
    hist = np.zeros(len(edges) - 1, np.int64)
    for idx, D in blocks():
        _, is_neg = _pair_masks(qp[idx], qc[idx], gp, gc)
        d = D[is_neg]
        left = np.searchsorted(uniq, d, side="left")
        equal = uniq[np.minimum(left, n_u - 1)] == d
        below += np.bincount(left, minlength=n_u + 1)
        upto += np.bincount(left + equal, minlength=n_u + 1)
        hist += np.histogram(d, bins=len(edges) - 1, range=(edges[0], edges[-1]))[0]
    # d < u_j  <=>  #{u <= d} <= j ;  d <= u_j  <=>  #{u < d} <= j
    return np.cumsum(upto)[:n_u], np.cumsum(below)[:n_u], hist


def _roc_corners(uniq, counts, neg_lt, neg_le, num_pos, num_neg, dtype):
    """The ROC's corners in order: (0, 0), for every distinct matching distance u_j the point
    just below it and the point at it, then (1, 1); repeated points dropped."""
    tp_le = np.cumsum(counts)
    tp_lt = tp_le - counts
    fp = np.concatenate([[0], np.stack([neg_lt, neg_le], 1).ravel(), [num_neg]])
    tp = np.concatenate([[0], np.stack([tp_lt, tp_le], 1).ravel(), [num_pos]])
    below = np.nextafter(uniq.astype(dtype), -np.inf).astype(np.float64)
    thr = np.concatenate([[-np.inf], np.stack([below, uniq], 1).ravel(), [np.inf]])
    keep = np.r_[True, (np.diff(fp) != 0) | (np.diff(tp) != 0)]
    return fp[keep] / num_neg, tp[keep] / num_pos, thr[keep]


def _equal_error_rate(fpr: np.ndarray, tpr: np.ndarray) -> float:
    gap = fpr + tpr - 1.0                   # rises from -1 at (0, 0) to 1 at (1, 1)
    i = int(np.argmax(gap >= 0))
    if gap[i] == 0 or i == 0:
        return float(fpr[i])
    t = -gap[i - 1] / (gap[i] - gap[i - 1])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def _operating_point(pos: np.ndarray, neg_small: np.ndarray, f: float, num_pos: int,
                     num_neg: int, dtype) -> dict[str, float]:
    """The best threshold with FPR <= f on these pairs, and its TPR / FPR."""
    m = int(math.floor(f * num_neg + 1e-9))   # non-matching pairs allowed in (< len(neg_small))
    v = neg_small[m]                          # the first non-matching distance rejected
    accepted_neg = neg_small[:m][neg_small[:m] < v]
    accepted_pos = pos[pos < v]
    largest = max(accepted_neg[-1] if len(accepted_neg) else -np.inf,
                  accepted_pos[-1] if len(accepted_pos) else -np.inf)
    # no pair lies strictly between `largest` and v: the midpoint accepts exactly the same ones
    threshold = (float(np.nextafter(np.asarray(v, dtype), -np.inf)) if math.isinf(largest)
                 else float((largest + v) / 2.0))
    return {"threshold": threshold, "tpr": len(accepted_pos) / num_pos,
            "fpr": len(accepted_neg) / num_neg}


def _pair_counts(qp, qc, gp, gc) -> tuple[int, int]:
    """(matching, non-matching) pairs over all queries, from the identity counts alone."""
    npos, n_junk = GalleryIndex(gp, gc).counts(qp, qc)
    return int(npos.sum()), int(len(qp) * len(gp) - (npos + n_junk).sum())


def _check_fprs(target_fpr: float, fpr_points: Sequence[float]) -> tuple[float, ...]:
    for name, f in [("target_fpr", target_fpr)] + [("fpr_points", f) for f in fpr_points]:
        if not (isinstance(f, (int, float)) and 0.0 < float(f) < 1.0):
            raise ValueError(f"{name} must be a false-positive rate in (0, 1), got {f!r} "
                             "(evaluate.target_fpr: e.g. 0.001 for one wrong 'same person' in 1,000)")
    return tuple(dict.fromkeys([*map(float, fpr_points), float(target_fpr)]))


def _verify(blocks: Blocks, ids, target_fpr: float, fpr_points: Sequence[float], bins: int,
            dtype) -> dict[str, Any]:
    fprs = _check_fprs(target_fpr, fpr_points)
    bins = check_positive_int(bins, "bins")
    num_pos, num_neg = _pair_counts(*ids)
    if num_pos == 0 or num_neg == 0:
        raise ValueError(f"verification needs matching and non-matching pairs; found {num_pos} "
                         f"matching (same identity, other camera) and {num_neg} non-matching: "
                         "the gallery holds too few identities or cameras")
    keep = int(math.floor(max(fprs) * num_neg + 1e-9)) + 1
    pos, neg_small, top = _first_pass(blocks, ids, keep)
    lo = float(min(pos[0], neg_small[0]))
    edges = np.linspace(lo, top if top > lo else lo + 1.0, bins + 1)
    uniq, counts = np.unique(pos, return_counts=True)
    neg_lt, neg_le, hist_neg = _second_pass(blocks, ids, uniq, edges)
    fpr, tpr, thr = _roc_corners(uniq, counts, neg_lt, neg_le, num_pos, num_neg, dtype)
    points = {f: _operating_point(pos, neg_small, f, num_pos, num_neg, dtype) for f in fprs}
    target = points[float(target_fpr)]
    return {
        "num_positive_pairs": num_pos, "num_negative_pairs": num_neg,
        "target_fpr": float(target_fpr), "threshold": target["threshold"],
        "threshold_tpr": target["tpr"], "threshold_fpr": target["fpr"],
        "tpr_at_fpr": {f: points[f]["tpr"] for f in fpr_points},
        "threshold_at_fpr": {f: points[f]["threshold"] for f in fpr_points},
        "eer": _equal_error_rate(fpr, tpr), "auc": float(np.trapezoid(tpr, fpr)),
        "fpr": fpr, "tpr": tpr, "thresholds": thr,
        "hist_edges": edges, "hist_pos": np.histogram(pos, bins=bins, range=(edges[0], edges[-1]))[0],
        "hist_neg": hist_neg,
    }


def verification_metrics(dist: Any, q_pids: Any, q_camids: Any, g_pids: Any, g_camids: Any, *,
                         target_fpr: float = 1e-3, fpr_points: Sequence[float] = FPR_POINTS,
                         bins: int = 60, chunk_size: int = 256) -> dict[str, Any]:
    """Verification metrics of a ``num_query x num_gallery`` distance matrix (module doc).

    Returns a dict: ``num_positive_pairs``, ``num_negative_pairs``, ``target_fpr``,
    ``threshold`` ("same person" iff distance <= threshold), ``threshold_tpr``,
    ``threshold_fpr``, ``tpr_at_fpr`` / ``threshold_at_fpr`` ({fpr: value}), ``eer``, ``auc``,
    the ROC corners ``fpr``, ``tpr``, ``thresholds`` and the histograms ``hist_edges``,
    ``hist_pos``, ``hist_neg``. Rates are fractions.
    """
    D = as_distance_matrix(dist)
    nq, ng = D.shape
    if nq == 0 or ng == 0:
        raise ValueError(f"dist is {nq} x {ng}: the query set and the gallery must not be empty")
    ids = _check_ids(q_pids, q_camids, g_pids, g_camids, nq, ng, "dist")
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    _check_block_finite(D, np.arange(nq), "dist")

    def blocks():
        for a in range(0, nq, chunk_size):
            yield np.arange(a, min(a + chunk_size, nq)), D[a:a + chunk_size]

    return _verify(blocks, ids, target_fpr, fpr_points, bins, D.dtype)


def verification_metrics_from_features(q_feats: Any, g_feats: Any, q_pids: Any, q_camids: Any,
                                       g_pids: Any, g_camids: Any, *, metric: str = "cosine",
                                       target_fpr: float = 1e-3,
                                       fpr_points: Sequence[float] = FPR_POINTS, bins: int = 60,
                                       chunk_size: int = 1024, squared: bool = True) -> dict[str, Any]:
    """:func:`verification_metrics` on distances computed one chunk of queries at a time (twice:
    one per pass) and never stored; the same result as computing the matrix first."""
    _check_metric(metric)
    qf, gf = query_gallery_features(q_feats, g_feats)
    ids = _check_ids(q_pids, q_camids, g_pids, g_camids, qf.shape[0], gf.shape[0], "features")
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    dtype = np.float64 if (qf.dtype == np.float64 and gf.dtype == np.float64) else np.float32
    rows = DistanceRows(gf, metric, squared, dtype=dtype)
    order = np.arange(qf.shape[0])

    def blocks():
        return iter_distance_blocks(qf, rows, order, chunk_size)

    return _verify(blocks, ids, target_fpr, fpr_points, bins, dtype)
