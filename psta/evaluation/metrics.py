"""Ranking metrics for re-identification: CMC, mAP and mINP.

Definitions (those of torchreid's ``eval_market1501`` and AGW's ``eval_func``):

* For a query, gallery items with the query's identity **and** camera are ignored (removed
  from its ranking); this also removes the query itself when it is in the gallery. Items of
  other identities (including pid 0 distractors) stay as negatives.
* A query with no valid match left (no same-identity item from another camera) is skipped
  and counted in ``num_skipped_queries``; the averages are over the valid queries.
* With ``r_1 < ... < r_n`` the 1-based ranks of the n valid matches in the filtered ranking:
  ``AP = mean_k k / r_k``; ``INP = n / r_n`` (mean inverse negative penalty, Ye et al.'s
  "Deep Learning for Person Re-identification: A Survey and Outlook"); ``CMC[r-1] = 1`` if
  ``r_1 <= r``. ``cmc``, ``mAP`` and ``mINP`` are fractions in [0, 1].
* ``max_rank`` larger than the gallery is clipped to the gallery size (with a warning), as in
  torchreid. Where a query's filtered ranking is shorter than ``max_rank``, its CMC stays at
  its last value (1) instead of being truncated.
* **Ties**: an item of another identity at exactly the same distance as a true match is
  counted as ranked *before* it (pessimistic), whatever the gallery order. The reference
  code's argsort puts ties in an arbitrary / positional order instead, so results agree
  exactly whenever distances are distinct, and with exact ties ours can only be lower. A
  degenerate model (all embeddings equal, all distances tied) thus cannot score well by
  accident. Exact ties are not rare in float32: at MARS scale (1,980 x 11,310 cosine
  distances) they move mAP by ~1e-7 and mINP by ~1e-6 (benchmarks/bench_evaluation.py).

Algorithm: no sort of the gallery (a full argsort of 1,980 x 11,310 alone takes 0.8-1 s on
a 2-core CPU). Queries are processed in chunks (``chunk_size`` rows of the distance matrix
at a time, so memory is ``O(chunk_size x num_gallery)``). For each query the distances of its
own identity's gallery items are gathered (a pid -> gallery index built once), and the rank
of its k-th closest valid match is the number of gallery items at a distance <= that
match's, minus the ignored same-identity items: one vectorised compare-and-count pass over
the chunk per match rank k, i.e. ``O(num_matches x num_gallery)`` cheap SIMD work per query.
Queries are ordered by their number of matches so each pass only touches the queries that
still have a k-th match. Queries with very many matches (more than ``_SORT_ABOVE``, e.g.
pid 0 used as a query) fall back to sorting their row, which is cheaper for them.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Iterable

import numpy as np

from ._topk import smallest_k
from ._validate import as_features, as_ids, check_positive_int
from .distance import DistanceRows, _check_metric, as_distance_matrix, iter_distance_blocks

__all__ = ["rank_metrics", "rank_metrics_from_features", "cmc_at"]

_SORT_ABOVE = 96  # matches per query above which sorting the row beats one pass per match
_SUB_ROWS = 64    # query rows scored together (a 64 x 11,310 float32 block is 2.9 MB)


class GalleryIndex:
    """Gallery identities grouped by pid, to find a query's same-identity items quickly."""

    def __init__(self, g_pids: np.ndarray, g_camids: np.ndarray):
        self.pids = g_pids
        self.camids = g_camids
        self.order = np.argsort(g_pids, kind="stable")
        self.uniq, self.start, self.count = np.unique(g_pids[self.order], return_index=True,
                                                      return_counts=True)
        # (pid, camera) pair counts, to know each query's number of ignored items up front.
        self._cmin = int(g_camids.min())
        self._ncam = int(g_camids.max()) - self._cmin + 1
        pair = (g_pids - int(g_pids.min())) * self._ncam + (g_camids - self._cmin)
        self._pair_uniq, self._pair_count = np.unique(pair, return_counts=True)
        self._pmin = int(g_pids.min())

    def _lookup(self, keys: np.ndarray, uniq: np.ndarray, counts: np.ndarray):
        pos = np.searchsorted(uniq, keys)
        pos_c = np.minimum(pos, len(uniq) - 1)
        found = uniq[pos_c] == keys
        return pos_c, np.where(found, counts[pos_c], 0)

    def counts(self, q_pids: np.ndarray, q_camids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(number of valid matches, number of ignored same-pid-and-camera items) per query."""
        _, n_same = self._lookup(q_pids, self.uniq, self.count)
        cam_ok = (q_camids >= self._cmin) & (q_camids < self._cmin + self._ncam)
        key = np.where(cam_ok, (q_pids - self._pmin) * self._ncam + (q_camids - self._cmin), -1)
        _, n_junk = self._lookup(key, self._pair_uniq, self._pair_count)
        n_junk = np.where(cam_ok & (q_pids >= self._pmin), n_junk, 0)
        return n_same - n_junk, n_junk

    def members(self, q_pids: np.ndarray, q_camids: np.ndarray):
        """Padded ``c x P`` gallery indices of each query's identity, with validity masks."""
        pos, n_same = self._lookup(q_pids, self.uniq, self.count)
        width = int(n_same.max()) if len(n_same) else 0
        ar = np.arange(width)
        in_group = ar[None, :] < n_same[:, None]
        flat = np.minimum(self.start[pos][:, None] + ar[None, :], len(self.order) - 1)
        members = self.order[flat]
        junk = in_group & (self.camids[members] == q_camids[:, None])
        return members, in_group & ~junk, junk


def cmc_at(result: dict, rank: int) -> float:
    """CMC value at 1-based ``rank`` (NaN if ``rank`` exceeds the computed curve)."""
    cmc = result["cmc"]
    return float(cmc[rank - 1]) if 1 <= rank <= len(cmc) else float("nan")


def _count_le(D: np.ndarray, s: np.ndarray, npos: np.ndarray) -> np.ndarray:
    """``cnt[r, k]`` = number of entries of row r of D that are <= ``s[r, k]``, for k < npos[r].

    Rows are ordered by ``npos`` descending, so the rows that still have a k-th threshold are
    a prefix: one vectorised compare-and-count pass over that prefix per k.
    """
    c, G = D.shape
    width = s.shape[1]
    cnt = np.zeros((c, width), dtype=np.int64)
    heavy = int(np.count_nonzero(npos > _SORT_ABOVE))
    for r in range(heavy):  # rare: queries with very many matches; sorting the row is cheaper
        n = int(npos[r])
        cnt[r, :n] = np.searchsorted(np.sort(D[r]), s[r, :n], side="right")
    if heavy < c:
        light = npos[heavy:]
        mask = np.empty((c - heavy, G), dtype=bool)
        for k in range(int(light[0])):
            m = int(np.count_nonzero(light > k))  # rows (after the heavy ones) with a k-th match
            blk = mask[:m]
            np.less_equal(D[heavy:heavy + m], s[heavy:heavy + m, k, None], out=blk)
            cnt[heavy:heavy + m, k] = np.add.reduce(blk.view(np.uint8), axis=1, dtype=np.int64)
    return cnt


def _rank_block(D: np.ndarray, members: np.ndarray, is_pos: np.ndarray, junk: np.ndarray,
                npos: np.ndarray) -> np.ndarray:
    """Ranks (1-based, ignored items removed) of each query's valid matches, ``c x max(npos)``.

    ``D`` rows must be ordered by ``npos`` descending. Entries beyond a row's npos are 0.
    """
    c = D.shape[0]
    width = int(npos[0])
    dm = np.take_along_axis(D, members, axis=1)
    inf = np.array(np.inf, dtype=D.dtype)
    s = np.sort(np.where(is_pos, dm, inf), axis=1)[:, :width]            # match distances
    same = np.where(is_pos | junk, dm, inf)                              # all same-pid items
    # number of same-identity items (matches + ignored) at distance <= each match distance
    if c * width * same.shape[1] <= 4_000_000:
        same_le = np.count_nonzero(same[:, None, :] <= s[:, :, None], axis=2)
    else:
        same_sorted = np.sort(same, axis=1)
        same_le = np.stack([np.searchsorted(same_sorted[r], s[r], side="right") for r in range(c)])
    cnt = _count_le(D, s, npos)
    ranks = cnt - same_le + np.arange(1, width + 1)[None, :]
    ranks[np.arange(width)[None, :] >= npos[:, None]] = 0
    return ranks


def _topk_block(D: np.ndarray, qp: np.ndarray, qc: np.ndarray, n_junk: np.ndarray,
                gal: GalleryIndex, topk: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``topk`` gallery indices per row with ignored items skipped (-1 padded)."""
    c, G = D.shape
    kk = min(G, topk + int(n_junk.max()))
    cand = smallest_k(D, kk)                                  # by distance, then gallery index
    ignored = (gal.pids[cand] == qp[:, None]) & (gal.camids[cand] == qc[:, None])
    keep = np.argsort(ignored, axis=1, kind="stable")[:, :topk]  # valid ones first, in order
    idx = np.take_along_axis(cand, keep, axis=1)
    idx[np.take_along_axis(ignored, keep, axis=1)] = -1
    out = np.full((c, topk), -1, dtype=np.int64)
    out[:, :idx.shape[1]] = idx
    match = (out >= 0) & (gal.pids[np.maximum(out, 0)] == qp[:, None])
    return out, match


def _closest_block(D: np.ndarray, qp: np.ndarray, qc: np.ndarray, gal: GalleryIndex):
    """Per row: gallery index and distance of the closest valid match (-1 / inf if none), and
    the distance of the closest item of another identity (inf if none). Ties: lowest index."""
    same = gal.pids[None, :] == qp[:, None]
    is_pos = same & (gal.camids[None, :] != qc[:, None])
    inf = np.array(np.inf, dtype=D.dtype)
    d_pos = np.where(is_pos, D, inf)
    first = d_pos.argmin(axis=1)
    first_d = d_pos[np.arange(len(first)), first]
    first = np.where(np.isfinite(first_d), first, -1)
    return first, first_d, np.where(same, inf, D).min(axis=1)


def _check_block_finite(D: np.ndarray, idx: np.ndarray, name: str) -> None:
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(D.sum()):
            return
    bad_rows = np.nonzero(~np.isfinite(D).all(axis=1))[0]
    if len(bad_rows):
        q = np.sort(idx[bad_rows])
        raise ValueError(f"{name} contains NaN/inf values (queries {q[:5].tolist()}"
                         f"{'...' if len(q) > 5 else ''}); NaN/inf embeddings or a broken "
                         "distance computation produce them: check the model's features")


def _evaluate(blocks: Callable[[np.ndarray], Iterable[tuple[np.ndarray, np.ndarray]]],
              num_query: int, num_gallery: int, qp: np.ndarray, qc: np.ndarray,
              gp: np.ndarray, gc: np.ndarray, max_rank: int, topk: int, dist_name: str,
              check_blocks: bool = True) -> dict:
    max_rank = check_positive_int(max_rank, "max_rank")
    if topk < 0:
        raise ValueError(f"topk must be >= 0, got {topk}")
    if max_rank > num_gallery:
        warnings.warn(f"max_rank={max_rank} exceeds the gallery size {num_gallery}; "
                      f"clipping it to {num_gallery} (as torchreid does)", stacklevel=3)
        max_rank = num_gallery
    gal = GalleryIndex(gp, gc)
    npos, n_junk = gal.counts(qp, qc)
    valid = npos > 0
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise ValueError(f"none of the {num_query} queries has a valid match in the gallery "
                         "(a same-identity item from another camera); check that q_pids/g_pids "
                         "and the camera ids refer to the same identities and that the protocol "
                         "builds the gallery you expect")
    # Valid queries by number of matches (descending), then skipped ones (needed only for topk).
    order = np.argsort(-npos, kind="stable")
    if not topk:
        order = order[:num_valid]

    ap = np.full(num_query, np.nan)
    inp = np.full(num_query, np.nan)
    first = np.full(num_query, -1, dtype=np.int64)
    last = np.full(num_query, -1, dtype=np.int64)
    ranked = np.full((num_query, topk), -1, dtype=np.int64) if topk else None
    ranked_match = np.zeros((num_query, topk), dtype=bool) if topk else None
    ranked_dist = np.full((num_query, topk), np.nan) if topk else None
    closest = [np.full(num_query, -1, np.int64), np.full(num_query, np.inf),
               np.full(num_query, np.inf)] if topk else None

    for idx, D in blocks(order):
        if check_blocks:
            _check_block_finite(D, idx, dist_name)
        if topk:
            ranked[idx], ranked_match[idx] = _topk_block(D, qp[idx], qc[idx], n_junk[idx], gal, topk)
            ranked_dist[idx] = np.where(ranked[idx] >= 0, np.take_along_axis(
                D, np.maximum(ranked[idx], 0), axis=1), np.nan)
            for out, value in zip(closest, _closest_block(D, qp[idx], qc[idx], gal)):
                out[idx] = value
        v = npos[idx] > 0
        nv = int(v.sum())  # valid rows form a prefix of the block (order is by npos descending)
        if nv == 0:
            continue
        for a in range(0, nv, _SUB_ROWS):  # sub-blocks small enough to stay in cache
            b = min(a + _SUB_ROWS, nv)
            idx_v = idx[a:b]
            members, is_pos, junk = gal.members(qp[idx_v], qc[idx_v])
            n = npos[idx_v]
            ranks = _rank_block(D[a:b], members, is_pos, junk, n)
            kpos = np.arange(1, ranks.shape[1] + 1)[None, :]
            prec = np.where(ranks > 0, kpos / np.maximum(ranks, 1), 0.0)
            # sequential sum (cumsum): the result does not depend on the block's padding width
            ap[idx_v] = np.cumsum(prec, axis=1)[:, -1] / n
            first[idx_v] = ranks[:, 0]
            last[idx_v] = ranks[np.arange(b - a), n - 1]
            inp[idx_v] = n / last[idx_v]

    hist = np.bincount(np.minimum(first[valid] - 1, max_rank), minlength=max_rank + 1)[:max_rank]
    cmc = np.cumsum(hist) / num_valid
    out = {
        "cmc": cmc.astype(np.float64),
        "mAP": float(ap[valid].mean()),
        "mINP": float(inp[valid].mean()),
        "num_queries": int(num_query),
        "num_gallery": int(num_gallery),
        "num_valid_queries": num_valid,
        "num_skipped_queries": int(num_query - num_valid),
        "max_rank": int(max_rank),
        "valid": valid,
        "ap": ap,
        "inp": inp,
        "first_match_rank": first,
        "last_match_rank": last,
        "num_matches": npos.astype(np.int64),
        "num_ignored": n_junk.astype(np.int64),
    }
    for r in (1, 5, 10, 20):
        out[f"rank{r}"] = cmc_at(out, r)
    if topk:
        out["ranked_indices"] = ranked
        out["ranked_matches"] = ranked_match
        out["ranked_distances"] = ranked_dist
        out["first_match_index"], out["first_match_distance"], out["first_nonmatch_distance"] = closest
    return out


def query_gallery_features(q_feats: Any, g_feats: Any) -> tuple[np.ndarray, np.ndarray]:
    """The query and gallery feature matrices, checked, with the same number of columns."""
    qf = as_features(q_feats, "query features (q_feats)")
    gf = as_features(g_feats, "gallery features (g_feats)")
    if qf.shape[1] != gf.shape[1]:
        raise ValueError(f"feature dimensions differ: q_feats has {qf.shape[1]} columns, "
                         f"g_feats {gf.shape[1]}; embed both with the same model")
    return qf, gf


def _check_ids(q_pids, q_camids, g_pids, g_camids, nq: int, ng: int, what: str):
    if what == "dist":
        qs, qu = "dist rows (num_query)", "row of dist (dist is num_query x num_gallery)"
        gs, gu = "dist columns (num_gallery)", "column of dist (dist is num_query x num_gallery)"
    else:
        qs, qu = "q_feats rows", "query embedding"
        gs, gu = "g_feats rows", "gallery embedding"
    qp = as_ids(q_pids, "q_pids", nq, qs, qu)
    qc = as_ids(q_camids, "q_camids", nq, qs, qu)
    gp = as_ids(g_pids, "g_pids", ng, gs, gu)
    gc = as_ids(g_camids, "g_camids", ng, gs, gu)
    return qp, qc, gp, gc


def rank_metrics(dist: Any, q_pids: Any, q_camids: Any, g_pids: Any, g_camids: Any,
                 max_rank: int = 50, chunk_size: int = 256, topk: int = 0) -> dict:
    """CMC / mAP / mINP from a ``num_query x num_gallery`` distance matrix (smaller = closer).

    Args:
        dist: distances, numpy array or torch tensor (any float dtype; no NaN/inf).
        q_pids, q_camids: identity and camera of each query (one per row of ``dist``).
        g_pids, g_camids: identity and camera of each gallery item (one per column).
        max_rank: length of the CMC curve (clipped to the gallery size, as torchreid).
        chunk_size: query rows processed at once; memory is ``O(chunk_size x num_gallery)``.
            Results do not depend on it.
        topk: if > 0, also return each query's ``topk`` closest gallery indices with the
            ignored items skipped (``ranked_indices``, -1 padded), whether each is a true
            match (``ranked_matches``) and its distance (``ranked_distances``, NaN padded),
            and per query the gallery index and distance of its closest valid match
            (``first_match_index``, -1 if none; ``first_match_distance``, inf if none) and
            the distance of its closest item of another identity
            (``first_nonmatch_distance``), for visualisation.

    Returns:
        dict with ``cmc`` (float64 array, length ``max_rank``), ``mAP``, ``mINP``,
        ``rank1/5/10/20``, ``num_valid_queries``, ``num_skipped_queries``, and per-query
        arrays: ``valid``, ``ap`` and ``inp`` (NaN for skipped queries),
        ``first_match_rank`` / ``last_match_rank`` (1-based in the filtered ranking, -1 if
        skipped), ``num_matches``, ``num_ignored``.

    Raises:
        ValueError: length mismatches, NaN/inf distances, empty query set or gallery, no
            valid query at all, bad ``max_rank`` / ``chunk_size``.
    """
    D = as_distance_matrix(dist)
    nq, ng = D.shape
    if nq == 0:
        raise ValueError("dist has 0 rows: the query set is empty; pass at least one query")
    if ng == 0:
        raise ValueError("dist has 0 columns: the gallery is empty; check the protocol / "
                         "split that builds the gallery")
    qp, qc, gp, gc = _check_ids(q_pids, q_camids, g_pids, g_camids, nq, ng, "dist")
    chunk_size = check_positive_int(chunk_size, "chunk_size")

    # every row, including those of queries that will be skipped
    _check_block_finite(D, np.arange(nq), "dist")

    def blocks(order: np.ndarray):
        buf = np.empty((min(chunk_size, len(order)), ng), dtype=D.dtype)  # reused: no page faults
        for a in range(0, len(order), chunk_size):
            idx = order[a:a + chunk_size]
            yield idx, np.take(D, idx, axis=0, out=buf[:len(idx)])

    return _evaluate(blocks, nq, ng, qp, qc, gp, gc, max_rank, topk, "dist", check_blocks=False)


def rank_metrics_from_features(q_feats: Any, g_feats: Any, q_pids: Any, q_camids: Any,
                               g_pids: Any, g_camids: Any, metric: str = "cosine",
                               max_rank: int = 50, chunk_size: int = 1024, topk: int = 0,
                               squared: bool = True) -> dict:
    """:func:`rank_metrics` fused with :func:`pairwise_distance`: distances are computed one
    chunk of queries at a time and never stored, so memory is ``O(chunk_size x num_gallery)``
    (46 MB for 1,024 x 11,310 float32) even for very large query sets. Same result as
    computing the matrix first. Large chunks keep the matrix product efficient; the ranking
    work inside a chunk is done in cache-sized sub-blocks anyway."""
    _check_metric(metric)
    qf, gf = query_gallery_features(q_feats, g_feats)
    nq, ng = qf.shape[0], gf.shape[0]
    qp, qc, gp, gc = _check_ids(q_pids, q_camids, g_pids, g_camids, nq, ng, "features")
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    dtype = np.float64 if (qf.dtype == np.float64 and gf.dtype == np.float64) else np.float32
    rows = DistanceRows(gf, metric, squared, dtype=dtype)

    def blocks(order: np.ndarray):
        return iter_distance_blocks(qf, rows, order, chunk_size)

    return _evaluate(blocks, nq, ng, qp, qc, gp, gc, max_rank, topk, "distances")
