"""Row-wise k smallest entries, faster than ``np.argpartition`` when k << row length."""
from __future__ import annotations

import numpy as np


def smallest_k(d: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` smallest entries of each row of ``d`` (``k <= d.shape[1]``),
    ordered by (value, column index): deterministic under ties.

    An upper bound of each row's k-th smallest value is taken from an evenly strided sample
    of columns (the k-th smallest of a subset can only be larger); only entries <= that
    bound are then sorted. Exact for any input; fast when the bound is selective.
    """
    c, n = d.shape
    k = int(k)
    sample_step = n // max(4 * k, 1024)
    if sample_step < 4:
        part = np.argpartition(d, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (c, 1))
        vals = np.take_along_axis(d, part, axis=1)
        return np.take_along_axis(part, np.lexsort((part, vals), axis=1), axis=1)
    bound = np.partition(d[:, ::sample_step], k - 1, axis=1)[:, k - 1]
    rr, cc = np.nonzero(d <= bound[:, None])
    order = np.lexsort((cc, d[rr, cc], rr))
    rr, cc = rr[order], cc[order]
    starts = np.searchsorted(rr, np.arange(c))
    keep = (np.arange(len(rr)) - starts[rr]) < k
    return cc[keep].reshape(c, k)
