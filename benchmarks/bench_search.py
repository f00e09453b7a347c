"""Benchmark: gallery search with FAISS (flat / HNSW / IVF) against a plain numpy search.

Data: random gallery embeddings of the model's size (1,024-d), L2-normalised, with the
structure of re-ID embeddings: identities (10 tracklets each) around random centres, cosine
~0.67 within an identity and ~0 across; queries are fresh tracklets of gallery identities.
Sizes 100k and 1M vectors. Ground truth: the exact top-10 by a numpy matrix product.

Measured in the same process on the same vectors, one query at a time (what a user's search
costs) and, for flat, also batched:
* plain: ``xb @ q`` then ``argpartition`` (numpy, exact), ms per query;
* ours: the index built by ``psta.search.vectors.build_index`` and searched by
  ``psta.search.vectors.search`` (as the gallery stage and `pipeline search` do), ms per query,
  recall@10 against the exact top-10, build time, and memory (the serialised index size per
  million vectors). HNSW and IVF are swept over their search knob.

Run niced: nice -n 10 .venv/bin/python -m benchmarks.bench_search [--sizes 100000 1000000]
Writes benchmarks/results/search.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from psta.atomic import write_text_atomic
from psta.search.vectors import IndexConfig, build_index, search, write_index

RESULTS = Path(__file__).resolve().parent / "results" / "search.json"
K = 10


def clustered(n: int, dim: int, seed: int, per_id: int = 10, noise: float = 0.7,
              n_queries: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """(gallery ``n x dim``, queries ``n_queries x dim``), float32, L2-normalised, built in chunks."""
    rng = np.random.default_rng(seed)
    n_ids = max(1, n // per_id)
    centres = rng.standard_normal((n_ids, dim), dtype=np.float32)
    xb = np.empty((n, dim), np.float32)
    for a in range(0, n, 65536):
        b = min(a + 65536, n)
        x = centres[np.arange(a, b) % n_ids] + noise * rng.standard_normal((b - a, dim), dtype=np.float32)
        xb[a:b] = x / np.linalg.norm(x, axis=1, keepdims=True)
    q = centres[rng.integers(0, n_ids, n_queries)] + noise * rng.standard_normal((n_queries, dim), dtype=np.float32)
    return xb, q / np.linalg.norm(q, axis=1, keepdims=True)


def exact_topk(xb: np.ndarray, q: np.ndarray, k: int = K) -> np.ndarray:
    sims = q @ xb.T
    top = np.argpartition(-sims, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(sims, top, 1), axis=1)
    return np.take_along_axis(top, order, 1)


def plain_ms(xb: np.ndarray, q: np.ndarray, n: int) -> float:
    t = time.perf_counter()
    for row in q[:n]:
        s = xb @ row
        top = np.argpartition(-s, K)[:K]
        top[np.argsort(-s[top])]
    return 1000 * (time.perf_counter() - t) / n


def per_query_ms(index, config: IndexConfig, q: np.ndarray, n: int) -> tuple[float, np.ndarray]:
    search(index, config, q[:1], K)  # warm-up
    rows = []
    t = time.perf_counter()
    for row in q[:n]:
        rows.append(search(index, config, row[None], K)[1][0])
    return 1000 * (time.perf_counter() - t) / n, np.stack(rows)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth)]))


def index_mb_per_million(index, n: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        write_index(index, Path(tmp) / "index.faiss")
        return (Path(tmp) / "index.faiss").stat().st_size / 2**20 * 1e6 / n


def measure(kind: str, xb, q, truth, knob: str, values, n_timed: int, **config) -> dict:
    base = IndexConfig(index=kind, **config)
    t = time.perf_counter()
    index = build_index(xb, base)
    built = time.perf_counter() - t
    out = {"build_s": round(built, 1), "mb_per_million": round(index_mb_per_million(index, len(xb)), 1),
           "config": base.to_dict(), "sweep": []}
    for v in values:
        cfg = base.model_copy(update={knob: v}) if knob else base
        ms, rows = per_query_ms(index, cfg, q, n_timed)
        hit = round(recall(rows, truth[:n_timed]), 4)
        out["sweep"].append({knob or "exact": v, "ms_per_query": round(ms, 3), "recall_at_10": hit})
        print(f"  {kind:5s} {knob or '':15s} {v!s:>5}: {ms:8.3f} ms/query, recall@10 {hit:.4f}", flush=True)
    if kind == "flat":
        t = time.perf_counter()
        search(index, base, q, K)
        out["batched_ms_per_query"] = round(1000 * (time.perf_counter() - t) / len(q), 3)
    del index
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--hnsw-max", type=int, default=100_000, help="largest size HNSW is built at (its build is slow)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    result = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "load_average_at_start": os.getloadavg()},
              "dim": args.dim, "k": K, "sizes": {}}
    for n in args.sizes:
        print(f"{n:,} vectors x {args.dim}", flush=True)
        xb, q = clustered(n, args.dim, seed=n)
        truth = exact_topk(xb, q)
        n_timed = 100 if n <= 200_000 else 50
        entry = {"plain_numpy_ms_per_query": round(plain_ms(xb, q, n_timed), 3)}
        print(f"  plain numpy: {entry['plain_numpy_ms_per_query']:.3f} ms/query", flush=True)
        entry["flat"] = measure("flat", xb, q, truth, "", [None], n_timed)
        entry["ivf"] = measure("ivf", xb, q, truth, "ivf_nprobe", [8, 16, 32, 64], n_timed)
        if n <= args.hnsw_max:
            entry["hnsw"] = measure("hnsw", xb, q, truth, "hnsw_ef_search", [32, 64, 128, 256], n_timed)
        result["sizes"][str(n)] = entry
        write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")  # partial results survive a kill
        del xb
    return result


if __name__ == "__main__":
    main()
