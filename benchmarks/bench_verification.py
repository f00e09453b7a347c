"""Benchmark: verification metrics at MARS scale, ours vs sklearn on every pair.

Data: the evaluation benchmark's MARS-like set (1,980 queries x 11,310 gallery, 1,024-d,
cosine; ``benchmarks.bench_evaluation.mars_like``): about 22 million query x gallery pairs.

Compared, in the same process on the same distance matrix:
* ours: ``verification_metrics`` (two chunked passes, no sort of the non-matching pairs), and
  ``verification_metrics_from_features`` (distances recomputed per chunk, never stored);
* plain: the pairs the protocol keeps gathered into two flat arrays, then
  ``sklearn.metrics.roc_curve`` + ``roc_auc_score``, TPR at each FPR read off the curve and the
  EER by a loop over its points.
Both must give the same numbers (checked). Writes benchmarks/results/verification.json.

Run: .venv/bin/python -m benchmarks.bench_verification [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_evaluation import mars_like
from benchmarks.common import load_average, timed
from psta.atomic import write_text_atomic
from psta.evaluation import FPR_POINTS, pairwise_distance, verification_metrics, verification_metrics_from_features

RESULTS = Path(__file__).resolve().parent / "results" / "verification.json"


def plain_verification(D, qp, qc, gp, gc) -> dict:
    from sklearn.metrics import roc_auc_score, roc_curve

    same = qp[:, None] == gp[None, :]
    keep = ~(same & (qc[:, None] == gc[None, :]))
    labels, scores = same[keep], -D[keep]
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    out = {"auc": roc_auc_score(labels, scores),
           "tpr_at_fpr": {f: float(tpr[np.searchsorted(fpr, f, side="right") - 1]) for f in FPR_POINTS}}
    for i in range(1, len(fpr)):
        g0, g1 = fpr[i - 1] + tpr[i - 1] - 1, fpr[i] + tpr[i] - 1
        if g1 >= 0:
            out["eer"] = fpr[i] if g1 == 0 else fpr[i - 1] + (-g0 / (g1 - g0)) * (fpr[i] - fpr[i - 1])
            break
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    load_start = load_average()  # the machine is shared: record it
    qf, qp, qc, gf, gp, gc = mars_like()
    D = pairwise_distance(qf, gf, "cosine")
    print(f"MARS-scale: {D.shape[0]} x {D.shape[1]} pairs, load average {load_start}")
    ours, t_ours = timed(lambda: verification_metrics(D, qp, qc, gp, gc), args.repeats)
    fused, t_fused = timed(lambda: verification_metrics_from_features(qf, gf, qp, qc, gp, gc),
                           args.repeats)
    t0 = time.perf_counter()
    plain = plain_verification(D, qp, qc, gp, gc)
    t_plain = time.perf_counter() - t0

    agree = {"auc_abs_diff": abs(ours["auc"] - plain["auc"]), "eer_abs_diff": abs(ours["eer"] - plain["eer"]),
             "tpr_at_fpr_equal": all(ours["tpr_at_fpr"][f] == plain["tpr_at_fpr"][f] for f in FPR_POINTS),
             "fused_equals_matrix": fused["tpr_at_fpr"] == ours["tpr_at_fpr"] and fused["auc"] == ours["auc"]}
    assert agree["auc_abs_diff"] < 1e-9 and agree["eer_abs_diff"] < 1e-9 and agree["tpr_at_fpr_equal"], agree

    med = statistics.median
    rows = [("ours: verification_metrics (distance matrix given)", med(t_ours)),
            ("ours: verification_metrics_from_features (fused)", med(t_fused)),
            ("plain: gather pairs + sklearn roc_curve / roc_auc_score", t_plain)]
    for name, t in rows:
        print(f"{name:58s} {t:8.2f} s")
    ratios = {"plain_over_ours_matrix": t_plain / med(t_ours), "plain_over_ours_fused": t_plain / med(t_fused)}
    print(f"speed-up: {ratios['plain_over_ours_matrix']:.1f}x (matrix), "
          f"{ratios['plain_over_ours_fused']:.1f}x (fused, distances included)")
    result = {
        "benchmark": "verification",
        "data": {"num_query": int(D.shape[0]), "num_gallery": int(D.shape[1]),
                 "pairs": ours["num_positive_pairs"] + ours["num_negative_pairs"],
                 "matching_pairs": ours["num_positive_pairs"]},
        "seconds": {name: t for name, t in rows}, "ratios": ratios, "agreement": agree,
        "numbers": {"auc": ours["auc"], "eer": ours["eer"],
                    "tpr_at_fpr": {str(f): v for f, v in ours["tpr_at_fpr"].items()}},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_average_start": load_start, "load_average_end": load_average()},
    }
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
