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
  million vectors, counted without writing it). HNSW and IVF are swept over their search knob;
  flat also reports FAISS's own ``index.search`` one query at a time (what flat search was).
Each entry records the load average before and after it (the machine is shared).

Run niced: nice -n 10 .venv/bin/python -m benchmarks.bench_search [--sizes 100000 1000000]
[--kinds flat ivf hnsw] [--ivf-nlist N --ivf-nprobes ...]. Updates
benchmarks/results/search.json: the entries measured replace their earlier ones, the others are
kept (an explicit --ivf-nlist N goes to its own entry ``ivf_nlist_N``).
"""
from __future__ import annotations

import argparse
import json
import time
from datetime import date
from pathlib import Path

import numpy as np

from benchmarks.common import load_average, machine
from psta.atomic import write_text_atomic
from psta.search import vectors
from psta.search.vectors import IndexConfig, build_index, search

RESULTS = Path(__file__).resolve().parent / "results" / "search.json"
K = 10
SWEEPS = {"flat": ("", [None]), "ivf": ("ivf_nprobe", [8, 16, 32, 64]),
          "hnsw": ("hnsw_ef_search", [32, 64, 128, 256])}


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


def exact_topk(xb: np.ndarray, q: np.ndarray, k: int = K, chunk: int = 16) -> np.ndarray:
    """The exact top-k rows (numpy), ``chunk`` queries at a time to bound the memory."""
    out = []
    for a in range(0, len(q), chunk):
        sims = q[a:a + chunk] @ xb.T
        top = np.argpartition(-sims, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, top, 1), axis=1)
        out.append(np.take_along_axis(top, order, 1))
    return np.concatenate(out)


def plain_ms(xb: np.ndarray, q: np.ndarray, n: int) -> float:
    t = time.perf_counter()
    for row in q[:n]:
        s = xb @ row
        top = np.argpartition(-s, K)[:K]
        top[np.argsort(-s[top])]
    return 1000 * (time.perf_counter() - t) / n


def per_query_ms(searcher, q: np.ndarray, n: int) -> tuple[float, np.ndarray]:
    """ms per query of ``searcher(one query row) -> rows`` one query at a time, and the rows."""
    searcher(q[:1])  # warm-up
    rows = []
    t = time.perf_counter()
    for row in q[:n]:
        rows.append(searcher(row[None])[0])
    return 1000 * (time.perf_counter() - t) / n, np.stack(rows)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth)]))


def index_mb_per_million(index, n: int) -> float:
    """Size of the index as FAISS writes it (``index.faiss``), counted as it streams out."""
    import faiss

    size = [0]

    def count(chunk: bytes) -> int:
        size[0] += len(chunk)
        return len(chunk)

    faiss.write_index(index, faiss.PyCallbackIOWriter(count))
    return size[0] / 2**20 * 1e6 / n


def batched_ms(index, config: IndexConfig, q: np.ndarray, batches=(16, vectors.BLAS_MAX_QUERIES, 200)) -> dict:
    out = {}
    for b in batches:
        search(index, config, q[:b], K)  # warm-up
        t = time.perf_counter()
        search(index, config, q[:b], K)
        out[str(b)] = round(1000 * (time.perf_counter() - t) / b, 3)
    return out


def measure(kind: str, xb, q, truth, n_timed: int, args) -> dict:
    knob, values = SWEEPS[kind]
    base = IndexConfig(index=kind)
    if kind == "ivf":
        values = args.ivf_nprobes
        base = IndexConfig(index=kind, ivf_nlist=args.ivf_nlist, ivf_nprobe=min(values))
    load_before = load_average()
    t = time.perf_counter()
    index = build_index(xb, base)
    built = time.perf_counter() - t
    out = {"build_s": round(built, 1), "mb_per_million": round(index_mb_per_million(index, len(xb)), 1),
           "config": base.to_dict(), "sweep": []}
    if kind == "ivf":
        out["config"]["ivf_nlist"] = int(index.nlist)
        out["train_points"] = min(len(xb), vectors.TRAIN_POINTS_PER_LIST * int(index.nlist))
    print(f"  {kind}: built in {built:.1f} s", flush=True)
    if kind == "flat":
        ms, rows = per_query_ms(lambda one: index.search(one, K)[1], q, n_timed)
        out["faiss_own_search_one_query"] = {"ms_per_query": round(ms, 3),
                                             "recall_at_10": recall(rows, truth[:n_timed])}
        print(f"  flat  FAISS's own index.search: {ms:8.3f} ms/query", flush=True)
    for v in values:
        cfg = base.model_copy(update={knob: v}) if knob else base
        ms, rows = per_query_ms(lambda one, cfg=cfg: search(index, cfg, one, K)[1], q, n_timed)
        hit = round(recall(rows, truth[:n_timed]), 4)
        out["sweep"].append({knob or "exact": v, "ms_per_query": round(ms, 3), "recall_at_10": hit})
        print(f"  {kind:5s} {knob or '':15s} {v!s:>5}: {ms:8.3f} ms/query, recall@10 {hit:.4f}", flush=True)
    if kind == "flat":
        out["batched_ms_per_query"] = batched_ms(index, base, q)
        print(f"  flat  batched (queries: ms/query): {out['batched_ms_per_query']}", flush=True)
    out["load_average_before_after"] = [load_before, load_average()]
    return out  # the index is freed here: the next kind builds its own


def entry_key(kind: str, args) -> str:
    """Where a kind's numbers go: ``ivf`` at the default lists, ``ivf_nlist_N`` at ``--ivf-nlist N``."""
    return f"ivf_nlist_{args.ivf_nlist}" if kind == "ivf" and args.ivf_nlist else kind


def measure_size(n: int, args) -> dict:
    xb, q = clustered(n, args.dim, seed=n)
    truth = exact_topk(xb, q)
    n_timed = 100 if n <= 200_000 else 50
    entry = {"measured": date.today().isoformat(), "load_average_at_start": load_average(),
             "plain_numpy_ms_per_query": round(plain_ms(xb, q, n_timed), 3)}
    print(f"  plain numpy: {entry['plain_numpy_ms_per_query']:.3f} ms/query", flush=True)
    for kind in args.kinds:
        if kind == "hnsw" and n > args.hnsw_max:
            print(f"  hnsw skipped above {args.hnsw_max:,} vectors (--hnsw-max): its build is too slow here",
                  flush=True)
            continue
        entry[entry_key(kind, args)] = measure(kind, xb, q, truth, n_timed, args)
        if kind == "flat":  # the numpy baseline again, right after ours, in case the load changed
            entry["flat"]["plain_numpy_ms_per_query_after"] = round(plain_ms(xb, q, n_timed), 3)
    return entry


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--kinds", nargs="+", choices=list(SWEEPS), default=list(SWEEPS))
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--hnsw-max", type=int, default=100_000, help="largest size HNSW is built at (its build is slow)")
    p.add_argument("--ivf-nlist", type=int, default=0, help="ivf lists (0: the default 4 sqrt(N))")
    p.add_argument("--ivf-nprobes", type=int, nargs="+", default=SWEEPS["ivf"][1], help="ivf_nprobe values swept")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    result = json.loads(args.out.read_text()) if args.out.is_file() else {}
    earlier_load = result.get("machine", {}).get("load_average_at_start")
    result.update(machine=machine(), dim=args.dim, k=K)
    result.setdefault("sizes", {})
    for n in args.sizes:
        print(f"{n:,} vectors x {args.dim}", flush=True)
        previous = result["sizes"].get(str(n), {})
        rerun = {entry_key(kind, args) for kind in args.kinds}
        kept = {k: v if "load_average_before_after" in v else {"load_average_at_start_of_its_run": earlier_load, **v}
                for k, v in previous.items() if k.split("_")[0] in SWEEPS and k not in rerun}
        result["sizes"][str(n)] = {**measure_size(n, args), **kept}
        write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")  # partial results survive a kill
    return result


if __name__ == "__main__":
    main()
