"""Bootstrap confidence intervals over queries for rank-1 and mAP.

The queries with a valid match are resampled with replacement ``num_samples`` times (a seeded
``numpy.random.default_rng``); each resample's rank-1 and mAP are recomputed and the interval
is their ``(1 - level) / 2`` and ``(1 + level) / 2`` percentiles. The same resamples serve both
metrics. This measures how much the numbers would move with another draw of test queries of
the same kind, not the variation between training runs.
"""
from __future__ import annotations

import numpy as np

from ._validate import check_positive_int

__all__ = ["bootstrap_intervals"]

_BATCH_ELEMENTS = 4_000_000  # resampled indices held at once (32 MB of int64)


def bootstrap_intervals(first_match_rank, ap, valid, num_samples: int = 1000, seed: int = 0,
                        level: float = 0.95) -> dict[str, tuple[float, float]]:
    """``{"rank1": (low, high), "mAP": (low, high)}`` (fractions) from per-query results.

    Args:
        first_match_rank: 1-based rank of each query's first valid match.
        ap: each query's average precision.
        valid: which queries have a valid match (the others are left out, as in the metrics).
        num_samples: bootstrap resamples. seed: their random generator's seed.
        level: coverage of the interval, in (0, 1).
    """
    num_samples = check_positive_int(num_samples, "num_samples")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    valid = np.asarray(valid, bool)
    hit = (np.asarray(first_match_rank)[valid] == 1).astype(np.float64)
    ap = np.asarray(ap, np.float64)[valid]
    n = len(ap)
    if n == 0:
        raise ValueError("no valid query to resample: every query lacks a valid match")
    rng = np.random.default_rng(seed)
    rank1, mean_ap = np.empty(num_samples), np.empty(num_samples)
    step = max(1, _BATCH_ELEMENTS // n)
    for a in range(0, num_samples, step):
        b = min(a + step, num_samples)
        idx = rng.integers(0, n, size=(b - a, n))
        rank1[a:b] = hit[idx].mean(axis=1)
        mean_ap[a:b] = ap[idx].mean(axis=1)
    q = [50 * (1 - level), 50 * (1 + level)]
    return {name: tuple(float(v) for v in np.percentile(values, q))
            for name, values in (("rank1", rank1), ("mAP", mean_ap))}
