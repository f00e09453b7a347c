"""FAISS indexes of L2-normalised embeddings: inner product = cosine similarity.

``flat`` is exact (IndexFlatIP). ``hnsw`` (IndexHNSWFlat) and ``ivf`` (IndexIVFFlat with an
exact coarse quantizer) are approximate and keep millions of vectors searchable in
milliseconds; their knobs are in :class:`IndexConfig`. A search can be restricted to a subset
of rows (cameras, the protocol's ignore rules), so the k results are the k best *allowed* rows,
not the k best rows filtered afterwards.

A flat index answers a small batch of queries (at most :data:`BLAS_MAX_QUERIES`, what a user's
search sends) with one BLAS product over a zero-copy numpy view of the vectors FAISS stores:
FAISS's own one-query path is a loop of SIMD dot products that runs 2-3x slower than a BLAS
matrix-vector product on this kind of CPU (benchmarks/bench_search.py). The answer is FAISS's
exact search: the same rows in the same order (ties: the higher row first, as FAISS orders
them) and the same similarities up to float rounding. Larger batches go to FAISS.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from psta.config import FieldError, Section

INDEX_TYPES = ("flat", "hnsw", "ivf")
TRAIN_POINTS_PER_LIST = 64
BLAS_MAX_QUERIES = 64  # flat: batches up to this size are searched by numpy's BLAS, larger ones by FAISS
BLAS_BLOCK_SCORES = 1 << 26  # similarities held at once (256 MiB: 64 queries of a 1M gallery in one product)


class IndexConfig(Section):
    """``index``: flat | hnsw | ivf. hnsw: ``hnsw_m`` links per node, ``hnsw_ef_construction``,
    ``hnsw_ef_search`` (the search beam). ivf: ``ivf_nlist`` lists (0: 4 sqrt(N), at most N/39 so
    k-means has 39 points per list), ``ivf_nprobe`` lists visited per query."""

    index: Literal[INDEX_TYPES] = "flat"
    hnsw_m: int = Field(32, ge=2, le=256)
    hnsw_ef_construction: int = Field(80, ge=1, le=4096)
    hnsw_ef_search: int = Field(128, ge=1, le=4096)
    ivf_nlist: int = Field(0, ge=0, le=1_000_000)
    ivf_nprobe: int = Field(32, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _probe_at_most_the_lists(self):
        if self.ivf_nlist and self.ivf_nprobe > self.ivf_nlist:
            raise FieldError("ivf_nprobe", self.ivf_nprobe, f"at most ivf_nlist ({self.ivf_nlist}): the lists "
                             "visited per query are some of the lists")
        return self


def ivf_lists(config: IndexConfig, num_vectors: int) -> int:
    wanted = config.ivf_nlist or int(round(4 * math.sqrt(num_vectors)))
    return max(1, min(wanted, num_vectors // 39))


def build_index(vectors: np.ndarray, config: IndexConfig, seed: int = 0):
    """A FAISS index over ``vectors`` (``N x D`` float32, L2-normalised), rows 0..N-1."""
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"need a non-empty N x D array of embeddings, got shape {x.shape}")
    d = x.shape[1]
    if config.index == "flat":
        index = faiss.IndexFlatIP(d)
    elif config.index == "hnsw":
        index = faiss.IndexHNSWFlat(d, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = config.hnsw_ef_construction
    else:
        nlist = ivf_lists(config, len(x))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed, index.cp.niter = seed, 10
        # k-means on a sample of 64 points per list (FAISS wants >= 39): minutes, not hours, at 1M
        take = min(len(x), TRAIN_POINTS_PER_LIST * nlist)
        sample = x if take == len(x) else x[np.sort(np.random.default_rng(seed).choice(len(x), take, replace=False))]
        index.train(sample)
    index.add(x)
    return index


def write_index(index, path: str | Path) -> None:
    import faiss

    faiss.write_index(index, str(path))


def read_index(path: str | Path):
    import faiss

    return faiss.read_index(str(path))


def _search_parameters(config: IndexConfig, selector):
    import faiss

    if config.index == "hnsw":
        return faiss.SearchParametersHNSW(sel=selector, efSearch=config.hnsw_ef_search)
    if config.index == "ivf":
        return faiss.SearchParametersIVF(sel=selector, nprobe=config.ivf_nprobe)
    return faiss.SearchParameters(sel=selector) if selector is not None else None


def stored_vectors(index) -> np.ndarray:
    """The ``N x D`` float32 vectors a flat index stores, as a numpy view (no copy). Valid while
    ``index`` lives and nothing is added to it."""
    import faiss

    n, d = index.ntotal, index.d
    if n == 0:
        return np.zeros((0, d), np.float32)
    return faiss.rev_swig_ptr(index.get_xb(), n * d).reshape(n, d)


def blas_search(xb: np.ndarray, queries: np.ndarray, k: int,
                allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-``k`` of ``queries`` over ``xb`` as FAISS answers it: ``(sims,
    rows)``, best first, ties the higher row first, -inf / -1 past the allowed rows."""
    block = max(1, BLAS_BLOCK_SCORES // max(1, len(xb)))
    if len(queries) > block:
        parts = [blas_search(xb, queries[a:a + block], k, allowed) for a in range(0, len(queries), block)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    sims = queries @ xb.T
    if allowed is not None:
        sims[:, ~np.asarray(allowed, bool)] = -np.inf
    n, kk = xb.shape[0], min(k, xb.shape[0])
    if kk < n:  # row by row: argpartition's N int64 positions for one row at a time, not for the block
        top = np.stack([np.argpartition(row, n - kk)[n - kk:] for row in sims])
    else:
        top = np.tile(np.arange(n), (len(sims), 1))
    top_sims = np.take_along_axis(sims, top, 1)
    order = np.lexsort((-top, -top_sims), axis=1)  # by similarity, then the higher row
    rows, out = np.take_along_axis(top, order, 1), np.take_along_axis(top_sims, order, 1)
    rows = np.where(np.isneginf(out), -1, rows)
    if kk < k:
        rows = np.pad(rows, ((0, 0), (0, k - kk)), constant_values=-1)
        out = np.pad(out, ((0, 0), (0, k - kk)), constant_values=-np.inf)
    return out.astype(np.float32), rows.astype(np.int64)


def search(index, config: IndexConfig, queries: np.ndarray, k: int,
           allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(similarities, rows)``, each ``len(queries) x k``, best first; rows -1 (similarity
    -inf) where fewer than k allowed rows were found. ``allowed``: a boolean mask over the rows
    (None: all)."""
    import faiss

    q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    if config.index == "flat" and len(q) <= BLAS_MAX_QUERIES:
        return blas_search(stored_vectors(index), q, k, allowed)
    selector, bitmap = None, None
    if allowed is not None and not np.all(allowed):
        bitmap = np.packbits(np.asarray(allowed, bool), bitorder="little")
        selector = faiss.IDSelectorBitmap(bitmap)
    params = _search_parameters(config, selector)
    sims, rows = index.search(q, k, params=params) if params is not None else index.search(q, k)
    del bitmap  # the selector reads it during the search only
    sims = np.where(rows >= 0, sims, -np.inf).astype(np.float32)
    return sims, rows.astype(np.int64)
