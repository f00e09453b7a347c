"""Verification metrics (psta.evaluation.verification) against sklearn's roc_curve on the same
pairs, and the bootstrap intervals (psta.evaluation.bootstrap)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from psta.evaluation import evaluate_protocol, pairwise_distance, protocol_split
from psta.evaluation.bootstrap import bootstrap_intervals
from psta.evaluation.verification import verification_metrics, verification_metrics_from_features

FPRS = (1e-4, 1e-3, 1e-2, 0.05, 0.2)


# --------------------------------------------------------------------------- the plain way

def plain_pairs(D, qp, qc, gp, gc):
    """Every pair the protocol keeps, as sklearn input: labels and scores (-distance)."""
    same = qp[:, None] == gp[None, :]
    keep = ~(same & (qc[:, None] == gc[None, :]))
    return same[keep], -D[keep].astype(np.float64)


def straight_corners(fps, tps):
    """Drop every ROC point that lies on the straight line through its neighbours (integer
    counts, exact), so two descriptions of one piecewise-linear curve compare equal."""
    pts = list(dict.fromkeys(zip(fps.tolist(), tps.tolist())))
    out = [pts[0]]
    for i in range(1, len(pts) - 1):
        (x0, y0), (x1, y1), (x2, y2) = out[-1], pts[i], pts[i + 1]
        if (x1 - x0) * (y2 - y1) != (y1 - y0) * (x2 - x1):
            out.append(pts[i])
    return out + [pts[-1]]


def plain_eer(fpr, tpr):
    for i in range(1, len(fpr)):
        g0, g1 = fpr[i - 1] + tpr[i - 1] - 1, fpr[i] + tpr[i] - 1
        if g1 >= 0:
            if g1 == 0:
                return fpr[i]
            return fpr[i - 1] + (-g0 / (g1 - g0)) * (fpr[i] - fpr[i - 1])


def check_against_sklearn(D, qp, qc, gp, gc, target_fpr=1e-2):
    res = verification_metrics(D, qp, qc, gp, gc, target_fpr=target_fpr, fpr_points=FPRS,
                               chunk_size=7)
    y, s = plain_pairs(D, qp, qc, gp, gc)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    P, N = int(y.sum()), int((~y).sum())
    assert (res["num_positive_pairs"], res["num_negative_pairs"]) == (P, N)
    assert res["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    for f in FPRS:  # the best TPR among sklearn's thresholds with FPR <= f
        assert res["tpr_at_fpr"][f] == tpr[np.searchsorted(fpr, f, side="right") - 1], f
    ours = straight_corners(np.round(res["fpr"] * N).astype(int), np.round(res["tpr"] * P).astype(int))
    theirs = straight_corners(np.round(fpr * N).astype(int), np.round(tpr * P).astype(int))
    assert ours == theirs
    assert res["eer"] == pytest.approx(plain_eer(fpr, tpr), abs=1e-12)
    # the threshold gives the target FPR on the data it was fitted on, and the best TPR there
    d = -s
    t = res["threshold"]
    accepted = d <= t
    assert (accepted & ~y).sum() / N <= target_fpr
    assert (accepted & ~y).sum() / N == res["threshold_fpr"]
    assert (accepted & y).sum() / P == res["threshold_tpr"] == res["tpr_at_fpr"][target_fpr]
    rejected_neg = d[~y & ~accepted]
    if len(rejected_neg):  # the next threshold up lets in too many non-matching pairs
        assert ((d <= rejected_neg.min()) & ~y).sum() / N > target_fpr
    assert res["hist_pos"].sum() == P and res["hist_neg"].sum() == N
    assert np.histogram(d[y], bins=res["hist_edges"])[0].tolist() == res["hist_pos"].tolist()
    return res


def random_ids(rng, nq, ng, num_ids=25, num_cams=4):
    qp = rng.integers(1, num_ids, nq)
    gp = np.concatenate([qp, rng.integers(0, num_ids, ng - nq)])  # every query has matches
    return qp, rng.integers(0, num_cams, nq), gp, rng.integers(0, num_cams, ng)


# --------------------------------------------------------------------------- against sklearn

@pytest.mark.parametrize("seed", [0, 1])
def test_random_distances_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    qp, qc, gp, gc = random_ids(rng, 60, 400)
    D = rng.random((60, 400)).astype(np.float32)
    check_against_sklearn(D, qp, qc, gp, gc)


@pytest.mark.parametrize("levels", [0, 40, 8])
def test_planted_distances_with_ties_equal_sklearn(levels):
    """Matching pairs closer than the others, overlapping; quantised so that many distances tie,
    within and across the two classes (levels 0: no quantisation)."""
    rng = np.random.default_rng(levels)
    qp, qc, gp, gc = random_ids(rng, 80, 500)
    same = qp[:, None] == gp[None, :]
    D = np.where(same, rng.normal(0.35, 0.12, same.shape), rng.normal(0.75, 0.12, same.shape))
    D = np.clip(D, 0, 2)
    if levels:
        D = np.round(D * levels) / levels
    res = check_against_sklearn(D.astype(np.float32), qp, qc, gp, gc, target_fpr=1e-3)
    assert res["auc"] > 0.9 and res["eer"] < 0.2  # the planted separation shows


def test_every_distance_tied():
    """A collapsed model: one distance for every pair. No threshold separates anything."""
    rng = np.random.default_rng(3)
    qp, qc, gp, gc = random_ids(rng, 20, 100)
    res = check_against_sklearn(np.full((20, 100), 0.5, np.float32), qp, qc, gp, gc)
    assert res["tpr_at_fpr"][0.2] == 0.0 and res["auc"] == pytest.approx(0.5)
    assert res["eer"] == pytest.approx(0.5)


def test_ignore_rules_follow_the_protocol():
    """mars_official puts the queries in the gallery: a query against itself (same identity and
    camera) is ignored, another camera of its identity is a match, pid 0 is a non-match."""
    t = pd.DataFrame({"split": ["query", "gallery", "gallery", "gallery", "query", "gallery"],
                      "pid": [1, 1, 1, 0, 2, 2], "camid": [0, 0, 1, 1, 0, 1],
                      "tracklet_id": range(6)})
    feats = np.random.default_rng(0).normal(size=(6, 8)).astype(np.float32)
    split = protocol_split("mars_official", t)
    q, g = split.query_rows, split.gallery_rows
    res = evaluate_protocol("mars_official", feats, t, topk=0, bootstrap=0, target_fpr=0.1)["verification"]
    # query 1: matches g(1, cam1); ignores itself and g(1, cam0); non-matches: pid 0, pid 2 x 2
    # query 2: matches g(2, cam1); ignores itself; non-matches: pid 1 x 3 (twice the query), pid 0
    assert (res["num_positive_pairs"], res["num_negative_pairs"]) == (2, 3 + 4)
    pid, cam = t["pid"].to_numpy(), t["camid"].to_numpy()
    D = pairwise_distance(feats[q], feats[g])
    check_against_sklearn(D, pid[q], cam[q], pid[g], cam[g])


def same_numbers(a, b) -> bool:
    """Equal, floats to float32 rounding: a 16-row chunk's BLAS product and the whole matrix's may
    round differently (the kernel depends on the shape and the thread count)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_numbers(a[k], b[k]) for k in a)
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind == "f" or b.dtype.kind == "f":
        return a.shape == b.shape and np.allclose(a, b, rtol=1e-6, atol=1e-7)
    return np.array_equal(a, b)


def test_features_and_matrix_give_the_same_numbers():
    rng = np.random.default_rng(5)
    qp, qc, gp, gc = random_ids(rng, 50, 300, num_ids=12)
    centres = rng.normal(size=(12, 16))
    qf = (centres[qp] + 0.8 * rng.normal(size=(50, 16))).astype(np.float32)
    gf = (centres[gp] + 0.8 * rng.normal(size=(300, 16))).astype(np.float32)
    for metric in ("cosine", "euclidean"):
        fused = verification_metrics_from_features(qf, gf, qp, qc, gp, gc, metric=metric, chunk_size=16)
        matrix = verification_metrics(pairwise_distance(qf, gf, metric), qp, qc, gp, gc, chunk_size=300)
        for key, value in fused.items():
            assert same_numbers(value, matrix[key]), key
        check_against_sklearn(pairwise_distance(qf, gf, metric), qp, qc, gp, gc)


def test_bad_inputs_are_clear_errors():
    D = np.random.default_rng(0).random((3, 5))
    qp, qc, gp, gc = np.array([1, 2, 3]), np.zeros(3, int), np.array([1, 2, 3, 1, 2]), np.ones(5, int)
    for bad in (0, 1, 1.5, -1e-3):
        with pytest.raises(ValueError, match=r"target_fpr must be a false-positive rate in \(0, 1\)"):
            verification_metrics(D, qp, qc, gp, gc, target_fpr=bad)
    with pytest.raises(ValueError, match="matching and non-matching pairs"):
        verification_metrics(D, np.ones(3, int), qc, np.ones(5, int), gc)  # one identity: no non-match
    with pytest.raises(ValueError, match="matching and non-matching pairs"):
        verification_metrics(D, qp, qc, gp, np.zeros(5, int))         # same camera: no match


# --------------------------------------------------------------------------- bootstrap

def test_bootstrap_interval_is_seeded_and_covers_the_estimate():
    rng = np.random.default_rng(0)
    n = 400
    first = rng.integers(1, 4, n)
    ap = np.clip(rng.normal(0.7, 0.2, n), 0, 1)
    valid = rng.random(n) > 0.1
    a = bootstrap_intervals(first, ap, valid, num_samples=2000, seed=7)
    assert a == bootstrap_intervals(first, ap, valid, num_samples=2000, seed=7)
    assert a != bootstrap_intervals(first, ap, valid, num_samples=2000, seed=8)
    r1, m = np.mean(first[valid] == 1), ap[valid].mean()
    assert a["rank1"][0] < r1 < a["rank1"][1] and a["mAP"][0] < m < a["mAP"][1]
    # the normal approximation's half-width, 1.96 standard errors
    se = np.sqrt(r1 * (1 - r1) / valid.sum())
    assert (a["rank1"][1] - a["rank1"][0]) / 2 == pytest.approx(1.96 * se, rel=0.15)
    with pytest.raises(ValueError, match="no valid query"):
        bootstrap_intervals(first, ap, np.zeros(n, bool))
