"""k-reciprocal re-ranking (Zhong, Zheng, Cao, Li: "Re-ranking Person Re-identification with
k-reciprocal Encoding", CVPR 2017), memory-conscious.

Same algorithm and same outputs as the authors' public ``re_ranking`` code, given the same
original distances: over the ``N = num_query + num_gallery`` items,

1. original distances ``d`` (``metric``; squared Euclidean by default, as the authors' code),
   each row divided by its maximum;
2. k-reciprocal sets ``R(i, k1)``: items j among i's ``k1 + 1`` nearest that also have i among
   their ``k1 + 1`` nearest; expanded by ``R(c, round(k1 / 2))`` of each candidate c in
   ``R(i, k1)`` when more than 2/3 of that set lies in ``R(i, k1)``;
3. ``V[i, j] = exp(-d[i, j]) / sum`` over the expanded set, then local query expansion: each
   row of V replaced by the mean of the rows of its ``k2`` nearest items (if ``k2 != 1``);
4. Jaccard distance ``1 - sum_j min(V_q, V_g) / sum_j max(V_q, V_g)`` (V rows sum to 1, so the
   denominator is ``2 - sum min``);
5. ``final = (1 - lambda_value) * jaccard + lambda_value * d`` for the query x gallery block.

Memory: the authors' code holds several dense ``N x N`` matrices (distances, argsort ranks,
V and its expansion: about ``N^2 x 14`` bytes, 2.5 GB for MARS' N = 13,290). This one never
holds an ``N x N`` matrix: distances are computed ``chunk_size`` rows at a time (only each
row's maximum and ``max(k1 + 1, k2)`` nearest neighbours are kept), V is a scipy sparse
matrix (about ``k1`` to ``k2 * k1`` non-zeros per row), and the Jaccard sums are accumulated
over the non-zeros only. Peak memory is the ``num_query x num_gallery`` result plus
``O(chunk_size x N + N x k2 x k1)``. Time is dominated by one ``N x N x D`` distance pass.

Differences from the authors' code, documented: V is stored in float32 (they use float16, so
results differ at the 1e-3 level); ties in the neighbour order are broken by item index
(their unstable argsort breaks them arbitrarily); a row whose distances are all zero is left
unnormalised instead of becoming NaN.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from ._topk import smallest_k
from ._validate import as_feature_pair, check_positive_int
from .distance import DistanceRows, _check_metric

__all__ = ["re_rank"]


def _paired_distance(rows: DistanceRows, prep: np.ndarray, sq: np.ndarray | None,
                     a: np.ndarray, b: np.ndarray, block: int = 8192) -> np.ndarray:
    """``d(prep[a[t]], prep[b[t]])`` for each t, in blocks, with the distance's formula."""
    out = np.empty(len(a), dtype=prep.dtype)
    for s in range(0, len(a), block):
        ia, ib = a[s:s + block], b[s:s + block]
        dot = np.einsum("ij,ij->i", prep[ia], prep[ib])
        if rows.metric == "cosine":
            out[s:s + block] = 1.0 - dot
        else:
            d = np.maximum(sq[ia] + sq[ib] - 2.0 * dot, 0.0)
            out[s:s + block] = d if rows.squared else np.sqrt(d)
    return out


def re_rank(q: Any, g: Any, k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
            metric: str = "euclidean", chunk_size: int = 512, squared: bool = True) -> np.ndarray:
    """Re-ranked ``num_query x num_gallery`` distance matrix (Zhong et al. 2017).

    Args:
        q, g: query and gallery embeddings (numpy or torch, ``N x D`` and ``M x D``).
        k1, k2, lambda_value: the paper's parameters (defaults are the paper's 20, 6, 0.3).
        metric, squared: the original distance (see :func:`pairwise_distance`); the authors'
            code uses the squared Euclidean distance.
        chunk_size: rows of the ``N x N`` distance computed at once.

    Returns:
        float32 array (float64 if both inputs are float64), smaller = closer; feed it to
        :func:`rank_metrics`.
    """
    _check_metric(metric)
    k1 = check_positive_int(k1, "k1")
    k2 = check_positive_int(k2, "k2")
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    if not 0.0 <= float(lambda_value) <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")
    qa, ga, dtype = as_feature_pair(q, g)
    feats = np.concatenate([qa.astype(dtype, copy=False), ga.astype(dtype, copy=False)])
    nq = qa.shape[0]
    N = len(feats)
    rows = DistanceRows(feats, metric, squared, dtype=dtype)
    K1 = min(k1 + 1, N)
    KH = min(int(np.around(k1 / 2)) + 1, N)         # round half to even, like np.around
    KK = min(max(K1, k2), N)
    nn, rowmax, orig_qg = _neighbours(rows, nq, KK, chunk_size, dtype)
    V = _expanded_weights(rows, metric, nn, rowmax, K1, KH)
    if k2 != 1:                                     # query expansion: mean of the k2 neighbours' rows
        kq = min(k2, N)
        A = sp.csr_matrix((np.full(N * kq, 1.0 / kq, dtype=np.float32),
                           (np.repeat(np.arange(N), kq), nn[:, :kq].ravel())), shape=(N, N))
        V = (A @ V).tocsr()
    V.eliminate_zeros()
    return _blend_jaccard(V, nq, orig_qg, float(lambda_value))


def _neighbours(rows: DistanceRows, nq: int, KK: int, chunk_size: int, dtype):
    """Pass 1 over the N x N distance: every row's ``KK`` nearest neighbours (ordered by
    distance, then index), its maximum, and the query x gallery block divided by it."""
    N = len(rows.g)
    prep = rows.g                                   # prepared features (normalised for cosine)
    nn = np.empty((N, KK), dtype=np.int64)
    rowmax = np.empty(N, dtype=np.float64)
    orig_qg = np.empty((nq, N - nq), dtype=dtype)
    for a in range(0, N, chunk_size):
        b = min(a + chunk_size, N)
        d = rows.rows(prep[a:b])
        m = d.max(axis=1).astype(np.float64)
        rowmax[a:b] = np.where(m > 0, m, 1.0)
        nn[a:b] = smallest_k(d, KK)
        if a < nq:
            e = min(b, nq)
            orig_qg[a:e] = d[:e - a, nq:] / rowmax[a:e, None].astype(dtype)
        del d
    return nn, rowmax, orig_qg


def _reciprocal_masks(nn: np.ndarray, K1: int, KH: int) -> tuple[np.ndarray, np.ndarray]:
    """recip[i, a] = i in nn[nn[i, a], :K1] (k-reciprocal); hrecip likewise for KH."""
    N = len(nn)
    recip = np.empty((N, K1), dtype=bool)
    hrecip = np.empty((N, KH), dtype=bool)
    rblock = max(1, 4_000_000 // (K1 * K1 + 1))
    for a in range(0, N, rblock):
        r = np.arange(a, min(a + rblock, N))
        recip[r] = (nn[nn[r, :K1], :K1] == r[:, None, None]).any(axis=-1)
        hrecip[r] = (nn[nn[r, :KH], :KH] == r[:, None, None]).any(axis=-1)
    return recip, hrecip


def _expanded_weights(rows: DistanceRows, metric: str, nn: np.ndarray, rowmax: np.ndarray,
                      K1: int, KH: int) -> sp.csr_matrix:
    """V: each row's expanded k-reciprocal set weighted by exp(-distance), rows summing to 1."""
    N = len(nn)
    prep = rows.g
    sq = rows.g_sq if metric == "euclidean" else None
    recip, hrecip = _reciprocal_masks(nn, K1, KH)
    v_rows, v_cols, v_data = [], [], []
    eblock = max(1, 2_000_000 // (K1 * KH * K1 + 1))
    for a in range(0, N, eblock):
        r = np.arange(a, min(a + eblock, N))
        fw = nn[r, :K1]
        rc = recip[r]
        rset = np.where(rc, fw, -1)                               # R(i, k1), -1 = absent
        H = nn[fw, :KH]                                           # candidates' half sets
        Hm = hrecip[fw]
        hsize = Hm.sum(axis=-1)
        inter = ((H[..., None] == rset[:, None, None, :]).any(axis=-1) & Hm).sum(axis=-1)
        accept = rc & (inter > 2.0 / 3.0 * hsize)
        ext = np.where(accept[..., None] & Hm, H, -1).reshape(len(r), K1 * KH)
        cand = np.sort(np.concatenate([rset, ext], axis=1), axis=1)
        keep = cand >= 0
        keep[:, 1:] &= cand[:, 1:] != cand[:, :-1]
        li, lj = np.nonzero(keep)
        ri, cj = r[li], cand[li, lj]
        w = np.exp(-(_paired_distance(rows, prep, sq, ri, cj) / rowmax[ri]))
        w = w / np.bincount(li, weights=w, minlength=len(r))[li]
        v_rows.append(ri)
        v_cols.append(cj)
        v_data.append(w.astype(np.float32))
    return sp.csr_matrix((np.concatenate(v_data), (np.concatenate(v_rows), np.concatenate(v_cols))),
                         shape=(N, N))


def _blend_jaccard(V: sp.csr_matrix, nq: int, orig_qg: np.ndarray, lam: float) -> np.ndarray:
    """(1 - lam) x Jaccard distance + lam x original distance, query rows x gallery columns,
    the Jaccard term over the non-zeros of V only, in blocks of queries."""
    ng = orig_qg.shape[1]
    Vq = V[:nq]
    Vg = V[nq:].tocsc()                                        # ng x N, by column
    col_nnz = np.diff(Vg.indptr)
    q_nnz_rows = np.repeat(np.arange(nq), np.diff(Vq.indptr))
    pairs_per_q = np.bincount(q_nnz_rows, weights=col_nnz[Vq.indices], minlength=nq)
    budget = max(4_000_000, int(pairs_per_q.max()))
    out = np.empty((nq, ng), dtype=orig_qg.dtype)
    a = 0
    while a < nq:
        # as many queries as fit the pair budget (and a bounded dense block)
        cum = np.cumsum(pairs_per_q[a:])
        b = a + max(1, int(np.searchsorted(cum, budget, side="right")))
        b = min(b, a + max(1, 4_000_000 // max(ng, 1)), nq)
        lo, hi = Vq.indptr[a], Vq.indptr[b]
        i_loc = q_nnz_rows[lo:hi] - a
        j = Vq.indices[lo:hi]
        vij = Vq.data[lo:hi]
        cnt = col_nnz[j]
        src = np.repeat(np.arange(hi - lo), cnt)
        starts = Vg.indptr[j]
        offs = np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        pos = np.repeat(starts, cnt) + offs
        k = Vg.indices[pos]
        mins = np.minimum(vij[src], Vg.data[pos]).astype(np.float64)
        temp_min = np.bincount(i_loc[src] * ng + k, weights=mins,
                               minlength=(b - a) * ng).reshape(b - a, ng)
        jac = 1.0 - temp_min / (2.0 - temp_min)
        out[a:b] = jac * (1.0 - lam) + orig_qg[a:b] * lam
        a = b
    return out
