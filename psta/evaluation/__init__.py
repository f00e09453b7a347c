"""Evaluation for video re-identification: distances, CMC/mAP/mINP, verification (ROC,
TPR@FPR, EER, a calibrated threshold), bootstrap intervals, the MARS and Duke protocols and
k-reciprocal re-ranking.

Public API::

    pairwise_distance(q, g, metric="cosine"|"euclidean", chunk_size=1024, squared=True)
    rank_metrics(dist, q_pids, q_camids, g_pids, g_camids, max_rank=50, chunk_size=256, topk=0)
    rank_metrics_from_features(q_feats, g_feats, q_pids, q_camids, g_pids, g_camids,
                               metric="cosine", max_rank=50, chunk_size=1024, topk=0)
    re_rank(q, g, k1=20, k2=6, lambda_value=0.3, metric="euclidean", chunk_size=512)
    protocol_split(name, tracklets) -> ProtocolSplit
    evaluate_protocol(name, features, tracklets, metric="cosine", rerank=None, max_rank=50,
                      topk=10, chunk_size=256, target_fpr=1e-3, bootstrap=1000, seed=0)
    verification_metrics(dist, q_pids, q_camids, g_pids, g_camids, target_fpr=1e-3)
    verification_metrics_from_features(q_feats, g_feats, q_pids, q_camids, g_pids, g_camids,
                                       metric="cosine", target_fpr=1e-3)
    bootstrap_intervals(first_match_rank, ap, valid, num_samples=1000, seed=0)
"""
from .bootstrap import bootstrap_intervals
from .distance import METRICS, pairwise_distance
from .metrics import cmc_at, rank_metrics, rank_metrics_from_features
from .protocols import PROTOCOLS, Protocol, ProtocolSplit, evaluate_protocol, protocol_split, summary
from .rerank import re_rank
from .verification import FPR_POINTS, verification_metrics, verification_metrics_from_features

__all__ = [
    "FPR_POINTS", "METRICS", "PROTOCOLS", "Protocol", "ProtocolSplit", "bootstrap_intervals",
    "cmc_at", "evaluate_protocol", "pairwise_distance", "protocol_split", "rank_metrics",
    "rank_metrics_from_features", "re_rank", "summary", "verification_metrics",
    "verification_metrics_from_features",
]
