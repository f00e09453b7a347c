"""Evaluation protocols over the tracklet table (``psta.index``'s ``tracklets.parquet``).

The table needs columns ``split`` ("query" / "gallery"; "train" rows are ignored), ``pid``
(0 = distractor, kept as a negative; -1 = junk, dropped if present) and ``camid``;
``tracklet_id`` is used for the ranked lists when present. ``features`` holds one embedding
per row of the table, in the table's row order.

Protocols (each dataset declares its own in :mod:`psta.data.registry`; docs/SPEC.md, "Test
protocol"):

* ``"mars_official"``: the MARS authors' code and PSTA: gallery = query rows + gallery rows
  (all test tracklets, 11,310 at full scale). The query itself (same identity and camera) is
  ignored like every same-identity same-camera item, but *other* queries of the identity
  count as matches, so every MARS query has a valid match.
* ``"mars_torchreid"``: torchreid's MARS: gallery = gallery rows only (9,330). Queries whose
  only other-camera tracklets are queries get skipped (140 at full scale); numbers drop.
* ``"duke"``: DukeMTMC-VideoReID: gallery = gallery rows as they are (the gallery folder
  already holds the query tracklets; they are not added again).

In all three, for each query the gallery items with its identity and camera are ignored, and
CMC / mAP / mINP are averaged over the queries with at least one valid match.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from psta.data.registry import PROTOCOLS, Protocol, get_protocol

from ._validate import to_numpy
from .bootstrap import bootstrap_intervals
from .distance import _check_metric
from .metrics import rank_metrics, rank_metrics_from_features
from .rerank import re_rank
from .verification import verification_metrics_from_features

__all__ = ["PROTOCOLS", "Protocol", "ProtocolSplit", "protocol_split", "evaluate_protocol", "summary"]

_REQUIRED = ("split", "pid", "camid")


@dataclass(frozen=True)
class ProtocolSplit:
    """Row positions (into the tracklet table) of a protocol's queries and gallery."""
    name: str
    query_rows: np.ndarray
    gallery_rows: np.ndarray
    num_junk_dropped: int


def protocol_split(name: str | Protocol, tracklets: pd.DataFrame) -> ProtocolSplit:
    """Which rows of ``tracklets`` are queries and which form the gallery under ``name`` (a
    registered protocol's name, or a :class:`Protocol`)."""
    protocol = name if isinstance(name, Protocol) else get_protocol(name)
    name = protocol.name
    if not isinstance(tracklets, pd.DataFrame):
        raise ValueError(f"tracklets must be a pandas DataFrame (the tracklet index table), "
                         f"got {type(tracklets).__name__}")
    missing = [c for c in _REQUIRED if c not in tracklets.columns]
    if missing:
        raise ValueError(f"tracklets is missing column(s) {missing}; it needs {list(_REQUIRED)} "
                         "(read it with psta.index.read_index)")
    split = tracklets["split"].astype(str).to_numpy()
    pid = tracklets["pid"].to_numpy()
    junk = pid < 0
    is_q = (split == "query") & ~junk
    is_g = (split == "gallery") & ~junk
    q_rows = np.nonzero(is_q)[0]
    g_rows = np.nonzero(is_g)[0]
    if protocol.queries_in_gallery:
        g_rows = np.concatenate([q_rows, g_rows])
    if len(q_rows) == 0:
        raise ValueError(f"tracklets has no 'query' rows (splits present: "
                         f"{sorted(set(split.tolist()))}); the query set is empty: evaluate the "
                         "test index, not the train-only one")
    if len(g_rows) == 0:
        raise ValueError(f"protocol {name!r} gives an empty gallery: tracklets has no 'gallery' "
                         f"rows (splits present: {sorted(set(split.tolist()))})")
    return ProtocolSplit(name, q_rows, g_rows, int(np.count_nonzero(junk & np.isin(split, ["query", "gallery"]))))


def _rerank_params(rerank: Any) -> dict | None:
    if rerank is None or rerank is False:
        return None
    if rerank is True:
        return {"k1": 20, "k2": 6, "lambda_value": 0.3}
    if isinstance(rerank, dict):
        unknown = set(rerank) - {"k1", "k2", "lambda_value"}
        if unknown:
            raise ValueError(f"rerank has unknown key(s) {sorted(unknown)}; allowed: k1, k2, lambda_value")
        return {"k1": 20, "k2": 6, "lambda_value": 0.3, **rerank}
    raise ValueError(f"rerank must be None, True or a dict of k1/k2/lambda_value, got {rerank!r}")


def evaluate_protocol(name: str | Protocol, features: Any, tracklets: pd.DataFrame, metric: str = "cosine",
                      rerank: Any = None, max_rank: int = 50, topk: int = 10,
                      chunk_size: int = 256, target_fpr: float | None = 1e-3,
                      bootstrap: int = 1000, seed: int = 0) -> dict:
    """Evaluate embeddings of a tracklet table under protocol ``name``.

    Args:
        name: a protocol of :data:`PROTOCOLS` (``"mars_official"``, ``"mars_torchreid"``,
            ``"duke"``, ...; see module doc), or a :class:`Protocol`.
        features: ``len(tracklets) x D`` embeddings (numpy or torch), row i = table row i.
        tracklets: the tracklet table (columns split, pid, camid; tracklet_id optional).
        metric: ``"cosine"`` (PSTA's) or ``"euclidean"`` (squared).
        rerank: None (no re-ranking), True (k-reciprocal with k1=20, k2=6, lambda=0.3) or a
            dict overriding some of those.
        max_rank: CMC length. topk: ranked-list length per query (0 = none).
        target_fpr: the false-positive rate the verification threshold is calibrated to
            (:mod:`psta.evaluation.verification`); None skips the verification metrics. They
            always use the plain ``metric`` distance: a re-ranked distance depends on the
            whole gallery, so no pair threshold carries over from it.
        bootstrap: resamples of the 95% bootstrap intervals of rank-1 / mAP (0: none);
            seed: their random seed.

    Returns:
        dict: ``protocol``, ``metric``, ``rerank``, ``rank1/5/10/20``, ``mAP``, ``mINP``
        (fractions), ``cmc``, ``num_queries``, ``num_gallery``, ``num_valid_queries``,
        ``num_skipped_queries``, ``per_camera`` ({query camid: {num_queries,
        num_valid_queries, rank1, mAP, mINP}}), ``query_rows`` / ``gallery_rows`` (row
        positions in ``tracklets``), per-query ``ap``, ``inp``, ``first_match_rank``,
        ``valid``; ``rank1_ci`` / ``mAP_ci`` (95% bootstrap intervals, with ``bootstrap``);
        ``verification`` (with ``target_fpr``); and with ``topk``: ``ranked_rows``
        (``num_queries x topk`` table rows of the closest non-ignored gallery items, -1
        padded), ``ranked_matches``, ``ranked_distances``, ``first_match_row`` (table row of
        each query's closest valid match, -1 if none), ``first_match_distance``,
        ``first_nonmatch_distance`` and, if the table has ``tracklet_id``,
        ``query_tracklet_ids`` / ``ranked_tracklet_ids`` / ``first_match_tracklet_ids``.
    """
    _check_metric(metric)
    params = _rerank_params(rerank)
    split = protocol_split(name, tracklets)
    feats = to_numpy(features)
    if feats.ndim != 2 or feats.shape[0] != len(tracklets):
        raise ValueError(f"features has shape {tuple(feats.shape)} but tracklets has "
                         f"{len(tracklets)} rows; pass one embedding per row of the tracklet "
                         "table, in its row order (len(tracklets) x D)")
    pid = tracklets["pid"].to_numpy().astype(np.int64)
    cam = tracklets["camid"].to_numpy().astype(np.int64)
    qr, gr = split.query_rows, split.gallery_rows
    qf, gf = feats[qr], feats[gr]
    if params is None:
        res = rank_metrics_from_features(qf, gf, pid[qr], cam[qr], pid[gr], cam[gr],
                                         metric=metric, max_rank=max_rank,
                                         chunk_size=chunk_size, topk=topk)
    else:
        dist = re_rank(qf, gf, metric=metric, **params)
        res = rank_metrics(dist, pid[qr], cam[qr], pid[gr], cam[gr], max_rank=max_rank,
                           chunk_size=chunk_size, topk=topk)

    out = {"protocol": split.name, "metric": metric, "rerank": params}
    for k in ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP", "num_queries", "num_gallery",
              "num_valid_queries", "num_skipped_queries", "max_rank", "cmc", "ap", "inp",
              "first_match_rank", "valid", "num_matches"):
        out[k] = res[k]
    out["num_junk_dropped"] = split.num_junk_dropped
    out["query_rows"] = qr
    out["gallery_rows"] = gr

    q_cam = cam[qr]
    per_cam = {}
    for c in np.unique(q_cam):
        sel = q_cam == c
        v = sel & res["valid"]
        nv = int(v.sum())
        per_cam[int(c)] = {
            "num_queries": int(sel.sum()),
            "num_valid_queries": nv,
            "rank1": float(np.mean(res["first_match_rank"][v] == 1)) if nv else float("nan"),
            "mAP": float(np.mean(res["ap"][v])) if nv else float("nan"),
            "mINP": float(np.mean(res["inp"][v])) if nv else float("nan"),
        }
    out["per_camera"] = per_cam

    if bootstrap:
        ci = bootstrap_intervals(res["first_match_rank"], res["ap"], res["valid"],
                                 num_samples=bootstrap, seed=seed)
        out["rank1_ci"], out["mAP_ci"] = ci["rank1"], ci["mAP"]
    if target_fpr is not None:
        out["verification"] = verification_metrics_from_features(
            qf, gf, pid[qr], cam[qr], pid[gr], cam[gr], metric=metric, target_fpr=target_fpr)
    if topk:
        _ranked_outputs(out, res, tracklets, gr)
    return out


def _ranked_outputs(out: dict, res: dict, tracklets: pd.DataFrame, gr: np.ndarray) -> None:
    """The ranked lists and closest matches of a result, as table rows and tracklet ids."""
    ri, fi = res["ranked_indices"], res["first_match_index"]
    out["ranked_rows"] = np.where(ri >= 0, gr[np.maximum(ri, 0)], -1)
    out["ranked_matches"] = res["ranked_matches"]
    out["ranked_distances"] = res["ranked_distances"]
    out["first_match_row"] = np.where(fi >= 0, gr[np.maximum(fi, 0)], -1)
    out["first_match_distance"] = res["first_match_distance"]
    out["first_nonmatch_distance"] = res["first_nonmatch_distance"]
    if "tracklet_id" in tracklets.columns:
        tid = tracklets["tracklet_id"].to_numpy().astype(np.int64)
        out["query_tracklet_ids"] = tid[out["query_rows"]]
        out["ranked_tracklet_ids"] = np.where(ri >= 0, tid[gr[np.maximum(ri, 0)]], -1)
        out["first_match_tracklet_ids"] = np.where(fi >= 0, tid[gr[np.maximum(fi, 0)]], -1)


def summary(result: dict) -> dict:
    """JSON-friendly scalars of an :func:`evaluate_protocol` result (for logs / MLflow)."""
    keys = ("protocol", "metric", "rank1", "rank5", "rank10", "rank20", "mAP", "mINP",
            "num_queries", "num_gallery", "num_valid_queries", "num_skipped_queries")
    out = {k: result[k] for k in keys if k in result}
    out["rerank"] = result.get("rerank")
    for c, m in result.get("per_camera", {}).items():
        out[f"cam{c}_rank1"] = m["rank1"]
        out[f"cam{c}_mAP"] = m["mAP"]
    return out
