"""Tests for psta.evaluation: metrics against a plain per-query oracle, protocols, errors,
re-ranking against a straightforward implementation, chunk invariance."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from psta.evaluation import (
    evaluate_protocol,
    pairwise_distance,
    protocol_split,
    rank_metrics,
    rank_metrics_from_features,
    re_rank,
    summary,
)


# ----------------------------------------------------------------------------- oracles
def oracle_rank_metrics(dist, q_pids, q_camids, g_pids, g_camids, max_rank=50):
    """Plain per-query loop in the style of the reference evaluation (torchreid / AGW)."""
    dist = np.asarray(dist, dtype=np.float64)
    num_q, num_g = dist.shape
    max_rank = min(max_rank, num_g)
    all_cmc, all_ap, all_inp = [], [], []
    per_ap = np.full(num_q, np.nan)
    per_first = np.full(num_q, -1)
    for i in range(num_q):
        order = np.argsort(dist[i], kind="stable")
        remove = (g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i])
        raw = (g_pids[order][~remove] == q_pids[i]).astype(np.int64)
        if not raw.any():
            continue
        cmc = raw.cumsum()
        pos = np.where(raw == 1)[0]
        all_inp.append(cmc[pos.max()] / (pos.max() + 1.0))
        cmc[cmc > 1] = 1
        cmc = cmc[:max_rank]
        if len(cmc) < max_rank:  # shorter filtered list: stays at its last value
            cmc = np.concatenate([cmc, np.full(max_rank - len(cmc), cmc[-1])])
        all_cmc.append(cmc)
        tmp = raw.cumsum() / (np.arange(len(raw)) + 1.0) * raw
        all_ap.append(tmp.sum() / raw.sum())
        per_ap[i] = all_ap[-1]
        per_first[i] = pos[0] + 1
    return {"cmc": np.mean(all_cmc, axis=0), "mAP": np.mean(all_ap), "mINP": np.mean(all_inp),
            "num_valid": len(all_ap), "ap": per_ap, "first": per_first}


def oracle_re_rank(q, g, k1, k2, lambda_value, metric="euclidean"):
    """Straightforward dense re-ranking following Zhong et al.'s published algorithm."""
    feat = np.concatenate([q, g])
    nq, N = len(q), len(feat)
    original = pairwise_distance(feat, feat, metric=metric).astype(np.float64)
    original = np.transpose(original / np.max(original, axis=0))
    V = np.zeros_like(original)
    initial_rank = np.argsort(original, axis=1, kind="stable")
    half = int(np.around(k1 / 2))
    for i in range(N):
        forward = initial_rank[i, :k1 + 1]
        backward = initial_rank[forward, :k1 + 1]
        k_recip = forward[np.where(backward == i)[0]]
        expansion = k_recip
        for cand in k_recip:
            c_forward = initial_rank[cand, :half + 1]
            c_backward = initial_rank[c_forward, :half + 1]
            c_recip = c_forward[np.where(c_backward == cand)[0]]
            if len(np.intersect1d(c_recip, k_recip)) > 2 / 3 * len(c_recip):
                expansion = np.append(expansion, c_recip)
        expansion = np.unique(expansion)
        weight = np.exp(-original[i, expansion])
        V[i, expansion] = weight / np.sum(weight)
    original = original[:nq]
    if k2 != 1:
        V = np.stack([V[initial_rank[i, :k2]].mean(axis=0) for i in range(N)])
    jaccard = np.zeros((nq, N))
    for i in range(nq):
        temp_min = np.minimum(V[i][None, :], V).sum(axis=1)
        jaccard[i] = 1 - temp_min / (2 - temp_min)
    final = jaccard * (1 - lambda_value) + original * lambda_value
    return final[:, nq:]


# ----------------------------------------------------------------------------- helpers
def random_instance(seed, nq=40, ng=300, n_ids=30, n_cams=4, distractors=40):
    rng = np.random.default_rng(seed)
    g_pids = np.concatenate([rng.integers(1, n_ids + 1, ng - distractors), np.zeros(distractors, int)])
    g_camids = rng.integers(0, n_cams, ng)
    q_pids = rng.integers(1, n_ids + 6, nq)          # some ids absent from the gallery
    q_camids = rng.integers(0, n_cams, nq)
    dist = rng.random((nq, ng))
    return dist, q_pids, q_camids, g_pids, g_camids


def assert_matches_oracle(res, ora):
    np.testing.assert_allclose(res["cmc"], ora["cmc"], rtol=0, atol=1e-9)
    assert abs(res["mAP"] - ora["mAP"]) < 1e-9
    assert abs(res["mINP"] - ora["mINP"]) < 1e-9
    assert res["num_valid_queries"] == ora["num_valid"]
    np.testing.assert_allclose(res["ap"], ora["ap"], rtol=0, atol=1e-9)  # NaN where skipped
    np.testing.assert_array_equal(res["first_match_rank"], ora["first"])


# ----------------------------------------------------------------------------- metrics
@pytest.mark.parametrize("seed", range(6))
def test_rank_metrics_equals_per_query_loop(seed):
    dist, qp, qc, gp, gc = random_instance(seed)
    res = rank_metrics(dist, qp, qc, gp, gc, max_rank=50, chunk_size=7)
    ora = oracle_rank_metrics(dist, qp, qc, gp, gc, max_rank=50)
    assert res["num_skipped_queries"] > 0          # the instance has queries without a match
    assert res["num_valid_queries"] + res["num_skipped_queries"] == len(qp)
    assert len(res["cmc"]) == 50
    assert_matches_oracle(res, ora)


def test_rank_metrics_one_gallery_item_per_identity_and_float32_torch():
    rng = np.random.default_rng(7)
    n = 60
    g_pids = np.arange(1, n + 1)
    g_camids = rng.integers(0, 3, n)
    q_pids = rng.permutation(g_pids)[:45]
    q_camids = rng.integers(0, 3, 45)
    dist = rng.random((45, n)).astype(np.float32)
    ora = oracle_rank_metrics(dist, q_pids, q_camids, g_pids, g_camids, max_rank=20)
    res = rank_metrics(torch.from_numpy(dist), torch.from_numpy(q_pids), q_camids,
                       torch.from_numpy(g_pids), g_camids, max_rank=20)
    assert_matches_oracle(res, ora)
    # one match per query: AP = INP = 1 / rank
    v = res["valid"]
    np.testing.assert_allclose(res["ap"][v], 1.0 / res["first_match_rank"][v])
    np.testing.assert_allclose(res["inp"][v], res["ap"][v])


def test_max_rank_larger_than_gallery_is_clipped():
    dist, qp, qc, gp, gc = random_instance(3, nq=10, ng=25, n_ids=5, distractors=5)
    with pytest.warns(UserWarning, match="clipping"):
        res = rank_metrics(dist, qp, qc, gp, gc, max_rank=100)
    assert len(res["cmc"]) == 25
    assert_matches_oracle(res, oracle_rank_metrics(dist, qp, qc, gp, gc, max_rank=100))
    assert res["cmc"][-1] == 1.0


def test_ties_are_pessimistic():
    # all distances equal: every valid match ranks after every negative
    gp = np.array([1, 1, 2, 3, 0])
    gc = np.array([0, 1, 1, 1, 1])
    res = rank_metrics(np.ones((1, 5)), [1], [0], gp, gc, max_rank=5)
    assert res["first_match_rank"][0] == 4       # 3 negatives, the same-camera item ignored
    assert res["rank1"] == 0.0


def test_chunk_size_does_not_change_results():
    dist, qp, qc, gp, gc = random_instance(11, nq=70, ng=400)
    ref = rank_metrics(dist, qp, qc, gp, gc, chunk_size=1000, topk=8)
    for cs in (1, 3, 16):
        res = rank_metrics(dist, qp, qc, gp, gc, chunk_size=cs, topk=8)
        for k in ("cmc", "ap", "inp", "first_match_rank", "ranked_indices", "ranked_matches"):
            np.testing.assert_array_equal(res[k], ref[k])
        assert res["mAP"] == ref["mAP"] and res["mINP"] == ref["mINP"]
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(30, 16)), rng.normal(size=(90, 16))
    d1 = pairwise_distance(q, g, chunk_size=4)
    d2 = pairwise_distance(q, g, chunk_size=64)
    np.testing.assert_allclose(d1, d2, rtol=0, atol=1e-12)


def test_ranked_lists_skip_ignored_items():
    dist, qp, qc, gp, gc = random_instance(5, nq=20, ng=120)
    res = rank_metrics(dist, qp, qc, gp, gc, topk=10)
    for i in range(len(qp)):
        order = np.argsort(dist[i], kind="stable")
        keep = ~((gp[order] == qp[i]) & (gc[order] == qc[i]))
        np.testing.assert_array_equal(res["ranked_indices"][i], order[keep][:10])
        np.testing.assert_array_equal(res["ranked_matches"][i], gp[order[keep][:10]] == qp[i])


def test_distances_and_fused_path():
    rng = np.random.default_rng(1)
    q, g = rng.normal(size=(25, 32)), rng.normal(size=(80, 32))
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    np.testing.assert_allclose(pairwise_distance(q, g, "cosine"), 1 - qn @ gn.T, atol=1e-12)
    sq = ((q[:, None, :] - g[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(pairwise_distance(q, g, "euclidean"), sq, rtol=1e-10)
    np.testing.assert_allclose(pairwise_distance(q, g, "euclidean", squared=False), np.sqrt(sq), rtol=1e-10)
    d32 = pairwise_distance(torch.from_numpy(q).float(), torch.from_numpy(g).float())
    assert d32.dtype == np.float32
    qp, qc = rng.integers(0, 8, 25), rng.integers(0, 3, 25)
    gp, gc = rng.integers(0, 8, 80), rng.integers(0, 3, 80)
    for metric in ("cosine", "euclidean"):
        a = rank_metrics(pairwise_distance(q, g, metric), qp, qc, gp, gc, topk=5)
        b = rank_metrics_from_features(q, g, qp, qc, gp, gc, metric=metric, chunk_size=6, topk=5)
        for k in ("cmc", "ap", "first_match_rank", "ranked_indices"):
            np.testing.assert_allclose(a[k], b[k])


# ----------------------------------------------------------------------------- protocols
def mars_table():
    """Query 0 (pid 1, cam 0) has one other tracklet of its identity outside the queries, in
    its own camera; its only other-camera tracklet is query 1 (pid 1, cam 1)."""
    rows = [
        # split, pid, camid
        ("train", 9, 0),
        ("query", 1, 0),      # query A
        ("query", 1, 1),      # query B
        ("query", 2, 0),
        ("gallery", 1, 0),    # same pid+camera as A: ignored for A, a match for B
        ("gallery", 2, 2),
        ("gallery", 2, 0),
        ("gallery", 0, 1),    # distractors
        ("gallery", 0, 2),
        ("gallery", 3, 1),
    ]
    t = pd.DataFrame(rows, columns=["split", "pid", "camid"])
    t.insert(0, "tracklet_id", np.arange(len(t)))
    return t


def test_mars_protocols_query_in_gallery_rule():
    t = mars_table()
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(len(t), 8))
    feats[2] = feats[1] + 0.01 * rng.normal(size=8)     # B is A's nearest neighbour
    off = protocol_split("mars_official", t)
    assert list(off.query_rows) == [1, 2, 3]
    assert list(off.gallery_rows) == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert list(protocol_split("mars_torchreid", t).gallery_rows) == [4, 5, 6, 7, 8, 9]

    official = evaluate_protocol("mars_official", feats, t, max_rank=5)
    torchreid = evaluate_protocol("mars_torchreid", feats, t, max_rank=5)
    assert official["num_valid_queries"] == 3 and official["num_skipped_queries"] == 0
    assert torchreid["num_valid_queries"] == 2 and torchreid["num_skipped_queries"] == 1
    assert official["valid"].tolist() == [True, True, True]
    assert torchreid["valid"].tolist() == [False, True, True]
    # under the official protocol A's match is B, its nearest neighbour (A itself is ignored)
    assert official["first_match_rank"][0] == 1 and official["ap"][0] == 1.0
    assert official["ranked_tracklet_ids"][0][0] == 2
    assert official["ranked_matches"][0][0]
    assert 1 not in official["ranked_tracklet_ids"][0]   # the query itself never listed
    # duke: gallery rows as they are (no queries added), so equal to mars_torchreid here
    duke = evaluate_protocol("duke", feats, t, max_rank=5)
    assert duke["num_skipped_queries"] == 1 and duke["mAP"] == torchreid["mAP"]
    # per-camera breakdown of the query cameras
    assert set(official["per_camera"]) == {0, 1}
    assert official["per_camera"][0]["num_queries"] == 2
    assert torchreid["per_camera"][0]["num_valid_queries"] == 1
    s = summary(official)
    assert s["protocol"] == "mars_official" and "cam0_rank1" in s


def test_protocol_metrics_match_oracle_and_rerank_path():
    rng = np.random.default_rng(3)
    n_ids, rows = 25, []
    for pid in range(1, n_ids + 1):
        cams = rng.choice(6, size=rng.integers(2, 5), replace=False)
        for c in cams:
            rows.append(("query", pid, c))
            rows += [("gallery", pid, c)] * int(rng.integers(0, 3))
    rows += [("gallery", 0, int(c)) for c in rng.integers(0, 6, 30)]
    t = pd.DataFrame(rows, columns=["split", "pid", "camid"])
    centers = rng.normal(size=(n_ids + 1, 16))
    feats = centers[t.pid.to_numpy()] + 0.9 * rng.normal(size=(len(t), 16))
    for name in ("mars_official", "mars_torchreid"):
        sp = protocol_split(name, t)
        pid, cam = t.pid.to_numpy(), t.camid.to_numpy()
        qr, gr = sp.query_rows, sp.gallery_rows
        dist = pairwise_distance(feats[qr], feats[gr], "cosine")
        ora = oracle_rank_metrics(dist, pid[qr], cam[qr], pid[gr], cam[gr])
        res = evaluate_protocol(name, feats, t, topk=0)
        assert abs(res["mAP"] - ora["mAP"]) < 1e-9
        np.testing.assert_allclose(res["cmc"], ora["cmc"], atol=1e-9)
        rr = evaluate_protocol(name, feats, t, rerank={"k1": 6, "k2": 3}, topk=0)
        d_rr = re_rank(feats[qr], feats[gr], k1=6, k2=3, metric="cosine")
        ora_rr = oracle_rank_metrics(d_rr, pid[qr], cam[qr], pid[gr], cam[gr])
        assert abs(rr["mAP"] - ora_rr["mAP"]) < 1e-9
        assert rr["rerank"] == {"k1": 6, "k2": 3, "lambda_value": 0.3}


# ----------------------------------------------------------------------------- errors
def test_error_length_mismatch():
    dist, qp, qc, gp, gc = random_instance(0, nq=10, ng=30, distractors=5)
    with pytest.raises(ValueError, match=r"q_pids has 9 entries but dist rows \(num_query\) has 10"):
        rank_metrics(dist, qp[:9], qc, gp, gc)
    with pytest.raises(ValueError, match=r"g_camids has 29 entries but dist columns \(num_gallery\) has 30"):
        rank_metrics(dist, qp, qc, gp, gc[:29])
    t = mars_table()
    with pytest.raises(ValueError, match="features has shape .* but tracklets has 10 rows"):
        evaluate_protocol("mars_official", np.zeros((9, 4)), t)


def test_error_nan_embeddings_and_distances():
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(5, 8)), rng.normal(size=(12, 8))
    q[3, 2] = np.nan
    with pytest.raises(ValueError, match=r"query features \(q\) contains 1 NaN/inf value\(s\) in 1 row\(s\) "
                                         r"\(first at row 3\)"):
        pairwise_distance(q, g)
    t = mars_table()
    feats = rng.normal(size=(len(t), 4))
    feats[5] = np.inf                                   # a gallery row
    with pytest.raises(ValueError, match=r"gallery features \(g_feats\) contains 4 NaN/inf"):
        evaluate_protocol("mars_torchreid", feats, t)
    dist, qp, qc, gp, gc = random_instance(0, nq=10, ng=30, distractors=5)
    dist[4, 7] = np.nan
    with pytest.raises(ValueError, match=r"dist contains NaN/inf values \(queries \[4\]\)"):
        rank_metrics(dist, qp, qc, gp, gc, max_rank=10)


def test_error_empty_gallery_and_queries():
    with pytest.raises(ValueError, match="the gallery is empty"):
        rank_metrics(np.zeros((3, 0)), [1, 2, 3], [0, 0, 0], [], [])
    with pytest.raises(ValueError, match="the query set is empty"):
        rank_metrics(np.zeros((0, 3)), [], [], [1, 2, 3], [0, 0, 0])
    with pytest.raises(ValueError, match="the gallery is empty"):
        pairwise_distance(np.ones((2, 4)), np.ones((0, 4)))
    t = mars_table()
    only_q = t[t.split != "gallery"].reset_index(drop=True)
    with pytest.raises(ValueError, match="'mars_torchreid' gives an empty gallery"):
        evaluate_protocol("mars_torchreid", np.ones((len(only_q), 4)), only_q)
    with pytest.raises(ValueError, match="has no 'query' rows"):
        evaluate_protocol("duke", np.ones((len(t), 4)), t.assign(split="gallery"))
    with pytest.raises(ValueError, match="unknown protocol 'mars'"):
        evaluate_protocol("mars", np.ones((len(t), 4)), t)


def test_error_no_valid_query():
    with pytest.raises(ValueError, match="none of the 2 queries has a valid match"):
        rank_metrics(np.ones((2, 3)), [1, 2], [0, 0], [1, 3, 4], [0, 1, 1], max_rank=3)


# ----------------------------------------------------------------------------- re-ranking
@pytest.mark.parametrize("k1,k2,lam,metric", [(20, 6, 0.3, "euclidean"), (7, 1, 0.5, "cosine"),
                                              (5, 3, 0.0, "euclidean")])
def test_re_rank_equals_reference(k1, k2, lam, metric):
    rng = np.random.default_rng(k1)
    centers = rng.normal(size=(12, 10))
    labels = rng.integers(0, 12, 110)
    feats = centers[labels] + 0.6 * rng.normal(size=(110, 10))
    q, g = feats[:30], feats[30:]
    ref = oracle_re_rank(q, g, k1, k2, lam, metric)
    for cs in (7, 512):
        ours = re_rank(q, g, k1=k1, k2=k2, lambda_value=lam, metric=metric, chunk_size=cs)
        assert ours.shape == (30, 80)
        np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-6)
    assert not np.allclose(ours, pairwise_distance(q, g, metric))   # it did re-rank


def test_queries_with_very_many_matches():
    # pid 1 has 400 gallery items (more than the per-match pass limit): the sorted-row path
    rng = np.random.default_rng(2)
    gp = np.concatenate([np.ones(400, int), rng.integers(2, 20, 600)])
    gc = rng.integers(0, 5, 1000)
    qp = np.concatenate([np.ones(70, int), rng.integers(2, 25, 30)])
    qc = rng.integers(0, 5, 100)
    dist = rng.random((100, 1000))
    res = rank_metrics(dist, qp, qc, gp, gc, chunk_size=80)
    assert res["num_matches"].max() > 96
    assert_matches_oracle(res, oracle_rank_metrics(dist, qp, qc, gp, gc))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_distance_matches_cpu():
    rng = np.random.default_rng(4)
    q, g = rng.normal(size=(40, 32)).astype(np.float32), rng.normal(size=(90, 32)).astype(np.float32)
    for metric in ("cosine", "euclidean"):
        gpu = pairwise_distance(torch.from_numpy(q).cuda(), torch.from_numpy(g).cuda(), metric, chunk_size=16)
        np.testing.assert_allclose(gpu, pairwise_distance(q, g, metric), rtol=1e-4, atol=1e-4)


def test_smallest_k_matches_stable_argsort():
    from psta.evaluation._topk import smallest_k
    rng = np.random.default_rng(9)
    for shape, k in [((5, 50), 7), ((6, 9000), 21), ((4, 9000), 1)]:
        d = rng.random(shape).astype(np.float32)
        d[:, ::3] = np.round(d[:, ::3], 2)                     # plenty of exact ties
        d[0] = 0.5                                             # a fully tied row
        np.testing.assert_array_equal(smallest_k(d, k), np.argsort(d, axis=1, kind="stable")[:, :k])
