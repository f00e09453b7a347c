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
    ("gallery_tracklet_id", pa.int64()), ("match", pa.bool_()), ("query_ap", pa.float64()),
    ("query_first_match_rank", pa.int64()),
])


def protocol_record(result: dict, full: bool = True) -> dict[str, Any]:
    """JSON-friendly numbers of one psta.evaluation.evaluate_protocol result."""
    record: dict[str, Any] = {k: float(result[k]) for k in SCALARS}
    record.update({k: int(result[k]) for k in COUNTS})
    if full:
        record["cmc"] = [float(v) for v in result["cmc"]]
        record["per_camera"] = {
            str(cam): {"num_queries": m["num_queries"], "rank1": m["rank1"], "mAP": m["mAP"]}
            for cam, m in result["per_camera"].items()
        }
    return record


def ranked_table(results: dict[str, dict]) -> pa.Table:
    parts = []
    for name, res in results.items():
        ranked = np.asarray(res["ranked_tracklet_ids"])
        nq, k = ranked.shape
        keep = ranked >= 0
        parts.append(pd.DataFrame({
            "protocol": name,
            "query_tracklet_id": np.repeat(res["query_tracklet_ids"], k)[keep.ravel()],
            "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), nq)[keep.ravel()],
            "gallery_tracklet_id": ranked[keep],
            "match": np.asarray(res["ranked_matches"], bool)[keep],
            "query_ap": np.repeat(np.asarray(res["ap"], np.float64), k)[keep.ravel()],
            "query_first_match_rank": np.repeat(np.asarray(res["first_match_rank"], np.int64), k)[keep.ravel()],
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


def write_metrics(summary: dict, metrics_json: str | Path, cmc_csv: str | Path) -> dict:
    """reports/metrics.json (percent, for `dvc metrics`) and reports/cmc.csv (for `dvc plots`)."""
    metrics: dict[str, Any] = {
        name: {k: round(100 * rec[k], 2) for k in SCALARS} for name, rec in summary["protocols"].items()
    }
    if summary.get("untrained"):
        metrics["untrained"] = {
            name: {k: round(100 * rec[k], 2) for k in ("rank1", "mAP")}
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
