"""The report's figure sections: CMC, verification (ROC, distances), per-query AP, an
embedding projection and the training curves."""
from __future__ import annotations

import numpy as np
import pandas as pd

from . import figures as F
from .content import Figure, fmt, fpr_text, pct

__all__ = ["cmc_section", "verification_section", "ap_section", "embedding_section",
           "training_section", "embedding_projection"]

PROJECTION_IDS = 10   # identities drawn in the embedding projection


def _cmc_curves(records: dict) -> dict[str, list]:
    return {n: r["cmc"] for n, r in records.items() if isinstance(r.get("cmc"), list) and r["cmc"]}


def cmc_section(results: dict, untrained: dict, headline: str, paper_row: dict | None) -> dict:
    curves = _cmc_curves(results["protocols"])
    figure = None
    if curves:
        paper = None
        if paper_row and paper_row.get("rank1") is not None:
            paper = {"rank1": float(paper_row["rank1"]),
                     "label": f"paper ({paper_row.get('protocol', headline)})"}
        figure = Figure("cmc.png", F.cmc_figure(curves, _cmc_curves(untrained), paper), "CMC curve",
                        id="cmc-plot",
                        caption="Cumulative matching characteristic: the share of queries whose "
                                "first correct match is within the top k, for every protocol "
                                "evaluated; dashed: the same model untrained.")
    return {"key": "cmc", "title": "CMC curve", "figure": figure}


def verification_section(results: dict, headline: str) -> dict:
    section = {"key": "verification", "title": "Verification: same person or not",
               "roc": None, "distances": None, "rule": None, "protocol": headline}
    v = results["protocols"][headline].get("verification")
    if not v:
        return section
    metric = str(results.get("metric", "cosine"))
    rocs = {n: r["verification"]["roc"] for n, r in results["protocols"].items() if r.get("verification")}
    target = fpr_text(v["target_fpr"])
    point = {"fpr": v["threshold_fpr"], "tpr": v["threshold_tpr"], "target_fpr": v["target_fpr"],
             "label": f"threshold {v['threshold']:.4f} ({headline}): TPR {fmt(pct(v['threshold_tpr']))}%"}
    section["roc"] = Figure("roc.png", F.roc_figure(rocs, point), "ROC curve", id="roc-plot",
                            caption=f"True- against false-positive rate of 'same person' over every "
                                    f"query x gallery pair the protocol keeps; the circle is the "
                                    f"threshold calibrated to FPR ≤ {target}.")
    hist = v["histogram"]
    section["distances"] = Figure(
        "distances.png", F.distance_figure(hist["edges"], hist["matching"], hist["non_matching"],
                                           v["threshold"], metric),
        "Distance distributions", id="distance-plot",
        caption=f"{headline}: distances of matching pairs (same identity, another camera) and "
                "non-matching pairs; the dashed line is the calibrated threshold.")
    section["rule"] = (f"A pair is the same person when its {metric} distance is at most "
                       f"{v['threshold']:.6g}: on these test pairs ({headline}) that accepts "
                       f"{fmt(pct(v['threshold_tpr']))}% of the matching pairs and "
                       f"{100 * v['threshold_fpr']:.3g}% of the non-matching ones (target "
                       f"{target}). The same value is reports/metrics.json's "
                       f"{headline}.verification.threshold and the registered model version's "
                       "tag verification_threshold.")
    if v["num_negative_pairs"] * v["target_fpr"] < 10:
        section["rule"] += (f" Only {v['num_negative_pairs']:,} non-matching pairs: too few to "
                            f"calibrate an FPR of {target} reliably.")
    return section


def ap_section(results: dict, headline: str) -> dict:
    rec = results["protocols"][headline]
    hist = rec.get("ap_histogram")
    figure = None
    if hist:
        figure = Figure("ap_hist.png", F.ap_histogram_figure(hist["edges"], hist["counts"], rec.get("mAP")),
                        "Per-query AP histogram", id="ap-plot",
                        caption=f"{headline}: how the average precision spreads over the queries "
                                "with a valid match; mAP is their mean.")
    return {"key": "ap", "title": "Per-query average precision", "figure": figure}


def embedding_projection(features: np.ndarray, tracklets: pd.DataFrame, max_ids: int = PROJECTION_IDS,
                         seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The first two principal components of a sample of gallery embeddings: ``max_ids``
    identities (seeded draw among those with at least two gallery tracklets), L2-normalised as
    the cosine distance sees them. Returns (points, pids, explained variance ratios) or None."""
    rows = tracklets.reset_index(drop=True)
    gallery = rows[(rows["split"] == "gallery") & (rows["pid"] > 0)]
    counts = gallery["pid"].value_counts()
    candidates = np.sort(counts[counts >= 2].index.to_numpy())
    if len(candidates) < 2 or len(features) != len(rows):
        return None
    pick = np.sort(np.random.default_rng(seed).choice(candidates, min(max_ids, len(candidates)),
                                                      replace=False))
    sample = gallery[gallery["pid"].isin(pick)]
    x = np.asarray(features, np.float64)[sample.index.to_numpy()]
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    x -= x.mean(axis=0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    explained = s ** 2 / max(float((s ** 2).sum()), 1e-12)
    return x @ vt[:2].T, sample["pid"].to_numpy(), explained[:2]


def embedding_section(features: np.ndarray | None, tracklets: pd.DataFrame | None) -> dict:
    section = {"key": "embedding", "title": "Embeddings", "figure": None}
    if features is None or tracklets is None:
        return section
    projection = embedding_projection(features, tracklets)
    if projection is not None:
        points, pids, explained = projection
        section["figure"] = Figure(
            "embedding.png", F.embedding_figure(points, pids, explained), "Embedding projection",
            id="embedding-plot",
            caption=f"Gallery tracklets of {len(set(pids.tolist()))} identities drawn at random, "
                    "projected on the first two principal components of their (L2-normalised) "
                    "embeddings, one colour per identity: tight, separate clusters are what "
                    "ranking and verification need.")
    return section


def _best_validation(history: pd.DataFrame) -> str | None:
    best = []
    for column, label in (("val_rank1", "rank-1"), ("val_mAP", "mAP")):
        if column not in history.columns:
            continue
        v = pd.to_numeric(history[column], errors="coerce")
        if v.notna().any():
            v = v * 100 if v.abs().max() <= 1 else v
            at = history["epoch"].loc[v.idxmax()] if "epoch" in history.columns else v.idxmax()
            best.append(f"best {label} {v.max():.1f}% (epoch {at})")
    return "Validation: " + ", ".join(best) + "." if best else None


def training_section(history: pd.DataFrame | None, missing: str | None) -> dict:
    section = {"key": "training", "title": "Training curves", "figure": None,
               "missing": missing or "not given", "validation": None, "throughput": None}
    if history is None:
        return section
    section["figure"] = Figure(
        "training.png", F.training_figure(history), "Training curves", id="training-plot",
        caption="Mean losses per epoch, the learning-rate schedule and, when the run held out "
                "identities, validation rank-1 / mAP.")
    section["validation"] = _best_validation(history)
    if "clips_per_s" in history.columns:
        section["throughput"] = fmt(history.iloc[-1].get("clips_per_s"))
    return section
