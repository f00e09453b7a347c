"""The files an evaluation leaves behind (layout: docs/CONTRACTS.md, "Evaluation outputs")."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from psta.atomic import atomic_dir, atomic_path

SCALARS = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")
COUNTS = ("num_queries", "num_gallery", "num_valid_queries", "num_skipped_queries")
RANKED_SCHEMA = pa.schema([
    ("protocol", pa.string()), ("query_tracklet_id", pa.int64()), ("rank", pa.int32()),
    ("gallery_tracklet_id", pa.int64()), ("match", pa.bool_()), ("distance", pa.float64()),
    ("query_ap", pa.float64()), ("query_first_match_rank", pa.int64()),
    ("query_first_match_tracklet_id", pa.int64()), ("query_first_match_distance", pa.float64()),
    ("query_margin", pa.float64()),
])
ROC_POINTS = 200      # ROC corners kept in results.json (the figure needs no more)
AP_BINS = 20


def _roc_points(fpr: np.ndarray, tpr: np.ndarray, limit: int = ROC_POINTS) -> dict[str, list[float]]:
    """At most ``limit`` of the ROC's corners, spread evenly over log FPR (ends kept)."""
    if len(fpr) > limit:
        grid = np.geomspace(max(float(fpr[fpr > 0].min()), 1e-7), 1.0, limit - 2)
        keep = np.unique(np.r_[0, np.searchsorted(fpr, grid, side="right") - 1, len(fpr) - 1])
        fpr, tpr = fpr[keep], tpr[keep]
    return {"fpr": [float(v) for v in fpr], "tpr": [float(v) for v in tpr]}


def verification_record(v: dict) -> dict[str, Any]:
    """JSON-friendly verification metrics: scalars, a thinned ROC and the two histograms."""
    return {
        "target_fpr": v["target_fpr"], "threshold": v["threshold"],
        "threshold_tpr": v["threshold_tpr"], "threshold_fpr": v["threshold_fpr"],
        "tpr_at_fpr": {f"{f:g}": t for f, t in v["tpr_at_fpr"].items()},
        "eer": v["eer"], "auc": v["auc"],
        "num_positive_pairs": v["num_positive_pairs"], "num_negative_pairs": v["num_negative_pairs"],
        "roc": _roc_points(v["fpr"], v["tpr"]),
        "histogram": {"edges": [float(e) for e in v["hist_edges"]],
                      "matching": [int(c) for c in v["hist_pos"]],
                      "non_matching": [int(c) for c in v["hist_neg"]]},
    }


def protocol_record(result: dict, full: bool = True) -> dict[str, Any]:
    """JSON-friendly numbers of one psta.evaluation.evaluate_protocol result; ``full`` adds the
    per-camera numbers, the per-query AP histogram and the verification metrics."""
    record: dict[str, Any] = {k: float(result[k]) for k in SCALARS}
    record.update({k: int(result[k]) for k in COUNTS})
    record["cmc"] = [float(v) for v in result["cmc"]]
    for key in ("rank1_ci", "mAP_ci"):
        if key in result:
            record[key] = [float(v) for v in result[key]]
    if not full:
        return record
    record["per_camera"] = {
        str(cam): {"num_queries": m["num_queries"], "rank1": m["rank1"], "mAP": m["mAP"]}
        for cam, m in result["per_camera"].items()
    }
    ap = np.asarray(result["ap"], np.float64)[np.asarray(result["valid"], bool)]
    counts, edges = np.histogram(ap, bins=AP_BINS, range=(0.0, 1.0))
    record["ap_histogram"] = {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}
    if "verification" in result:
        record["verification"] = verification_record(result["verification"])
    return record


def ranked_table(results: dict[str, dict]) -> pa.Table:
    parts = []
    for name, res in results.items():
        ranked = np.asarray(res["ranked_tracklet_ids"])
        nq, k = ranked.shape
        keep = ranked >= 0

        def per_query(values, dtype, k=k, keep=keep):
            return np.repeat(np.asarray(values, dtype), k)[keep.ravel()]

        first_d = np.asarray(res["first_match_distance"], np.float64)
        margin = np.asarray(res["first_nonmatch_distance"], np.float64) - first_d
        parts.append(pd.DataFrame({
            "protocol": name,
            "query_tracklet_id": per_query(res["query_tracklet_ids"], np.int64),
            "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), nq)[keep.ravel()],
            "gallery_tracklet_id": ranked[keep],
            "match": np.asarray(res["ranked_matches"], bool)[keep],
            "distance": np.asarray(res["ranked_distances"], np.float64)[keep],
            "query_ap": per_query(res["ap"], np.float64),
            "query_first_match_rank": per_query(res["first_match_rank"], np.int64),
            "query_first_match_tracklet_id": per_query(res["first_match_tracklet_ids"], np.int64),
            "query_first_match_distance": per_query(np.where(np.isfinite(first_d), first_d, np.nan), np.float64),
            "query_margin": per_query(np.where(np.isfinite(margin), margin, np.nan), np.float64),
        }))
    frame = pd.concat(parts, ignore_index=True)
    return pa.Table.from_pandas(frame, schema=RANKED_SCHEMA, preserve_index=False)


def write_eval_outputs(
    out_dir: str | Path,
    tracklets: pd.DataFrame,
    features: np.ndarray,
    results: dict[str, dict],
    untrained: dict[str, dict] | None = None,
    **info: Any,
) -> dict[str, Any]:
    """Write features.npy, tracklets.parquet, results.json and ranked.parquet atomically.

    ``results`` / ``untrained`` map protocol name -> evaluate_protocol result (with topk).
    Returns the results.json content.
    """
    summary = {
        **info,
        "protocols": {name: protocol_record(res) for name, res in results.items()},
        "untrained": {name: protocol_record(res, full=False) for name, res in (untrained or {}).items()},
    }
    with atomic_dir(out_dir) as tmp:
        np.save(tmp / "features.npy", np.asarray(features, np.float32))
        pq.write_table(pa.Table.from_pandas(tracklets.reset_index(drop=True), preserve_index=False),
                       tmp / "tracklets.parquet")
        pq.write_table(ranked_table(results), tmp / "ranked.parquet")
        (tmp / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _percent_record(rec: dict) -> dict[str, Any]:
    """One protocol's metrics.json entry: percent, with the 95% intervals beside rank-1 / mAP."""
    out: dict[str, Any] = {k: round(100 * rec[k], 2) for k in SCALARS if k in rec}
    for key in ("rank1", "mAP"):
        if f"{key}_ci" in rec:
            out[f"{key}_ci95_low"], out[f"{key}_ci95_high"] = (round(100 * v, 2) for v in rec[f"{key}_ci"])
    return out


def verification_metrics_json(v: dict, metric: str | None) -> dict[str, Any]:
    """metrics.json's ``verification`` block: rates in percent, the threshold as a distance."""
    out: dict[str, Any] = {
        "threshold": v["threshold"],
        "distance": metric or "cosine",
        "target_fpr": v["target_fpr"],
        "tpr_at_target_fpr": round(100 * v["threshold_tpr"], 2),
        "fpr_at_threshold": round(100 * v["threshold_fpr"], 4),
    }
    out.update({f"tpr_at_fpr_{f}": round(100 * t, 2) for f, t in v["tpr_at_fpr"].items()})
    out.update({"eer": round(100 * v["eer"], 2), "auc": round(100 * v["auc"], 2),
                "num_positive_pairs": v["num_positive_pairs"],
                "num_negative_pairs": v["num_negative_pairs"]})
    return out


def write_metrics(summary: dict, metrics_json: str | Path, cmc_csv: str | Path) -> dict:
    """reports/metrics.json (percent, for `dvc metrics`) and reports/cmc.csv (for `dvc plots`).

    Per protocol: rank-1/5/10/20, mAP, mINP, the 95% bootstrap intervals of rank-1 and mAP
    (``rank1_ci95_low`` / ``_high``, ``mAP_ci95_low`` / ``_high``) and ``verification``, whose
    ``threshold`` is the calibrated "same person" distance: a pair is the same person when its
    ``distance`` (the evaluation metric) is at most ``threshold``; on the test pairs that
    gives a false-positive rate of at most ``target_fpr``.
    """
    metrics: dict[str, Any] = {}
    for name, rec in summary["protocols"].items():
        metrics[name] = _percent_record(rec)
        if "verification" in rec:
            metrics[name]["verification"] = verification_metrics_json(rec["verification"],
                                                                      summary.get("metric"))
    if summary.get("untrained"):
        metrics["untrained"] = {
            name: {k: v for k, v in _percent_record(rec).items() if k.split("_")[0] in ("rank1", "mAP")}
            for name, rec in summary["untrained"].items()
        }
    with atomic_path(metrics_json) as tmp:
        tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    # a gallery smaller than max_rank shortens its curve; beyond the gallery the CMC stays flat.
    # Long format (rank, protocol, cmc): one dvc.yaml plot draws every protocol's curve.
    curves = {name: 100 * np.asarray(rec["cmc"]) for name, rec in summary["protocols"].items()}
    length = max(len(c) for c in curves.values())
    cmc = pd.concat([
        pd.DataFrame({"rank": np.arange(1, length + 1), "protocol": name,
                      "cmc": np.round(np.pad(c, (0, length - len(c)), mode="edge"), 3)})
        for name, c in curves.items()
    ], ignore_index=True)
    with atomic_path(cmc_csv) as tmp:
        cmc.to_csv(tmp, index=False)
    return metrics
