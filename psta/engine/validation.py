"""Held-out validation: training identities kept out of training, scored with the test protocol.

    train_idx, val_idx = split_validation(labels, val_fraction=0.1, seed=0)
    evaluate = HeldoutEvaluator(test_style_dataset)      # evaluate(model, val_idx) -> metrics
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from psta.evaluation import rank_metrics
from psta.model.precision import autocast_context, resolve_precision

log = logging.getLogger("psta.engine")

__all__ = ["split_validation", "HeldoutEvaluator"]


def split_validation(labels: Sequence[int] | np.ndarray, val_fraction: float = 0.0,
                     val_ids: Sequence[int] = (), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(train_indices, val_indices)``: items of held-out identities go to validation.

    ``val_ids`` names the held-out labels; else ``round(val_fraction * K)`` identities (at least 1,
    at most K - 1) are drawn with ``numpy.random.default_rng(seed)``. Indices are sorted.
    """
    labels = np.asarray(labels, dtype=np.int64)
    everything = np.arange(len(labels), dtype=np.int64)
    ids = np.unique(labels)
    if val_ids:
        held = np.unique(np.asarray(val_ids, dtype=np.int64))
        missing = np.setdiff1d(held, ids)
        if len(missing):
            raise ValueError(f"val_ids {missing.tolist()} are not training labels (0..{ids.max()})")
    elif val_fraction > 0:
        n = min(max(int(round(val_fraction * len(ids))), 1), len(ids) - 1)
        if n < 1:
            raise ValueError("need at least 2 training identities to hold some out for validation")
        held = np.sort(np.random.default_rng(seed).choice(ids, size=n, replace=False))
    else:
        return everything, np.empty(0, dtype=np.int64)
    is_val = np.isin(labels, held)
    if is_val.all():
        raise ValueError("every training identity is held out for validation; nothing left to train on")
    return everything[~is_val], everything[is_val]


class HeldoutEvaluator:
    """``evaluate(model, val_indices)`` for :func:`~psta.engine.train`: rank-1 / mAP on held-out identities.

    ``dataset[i]`` must return ``(clip T x 3 x H x W, pid, camid, ...)`` for training tracklet ``i``
    with a deterministic (test) transform. Among the held-out tracklets, the first of every
    (identity, camera) pair is a query; the gallery is all held-out tracklets, and gallery items
    with the query's identity and camera (the query itself included) are ignored, as in the MARS
    protocol; cosine distance on the embeddings.
    Returns ``{"rank1", "rank5", "mAP", "num_valid_queries"}`` (fractions in [0, 1], from
    ``psta.evaluation.rank_metrics``).
    """

    def __init__(self, dataset: Dataset, batch_size: int = 32, num_workers: int = 0,
                 precision: str = "fp32"):
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.precision = precision

    @torch.no_grad()
    def embed(self, model: nn.Module, indices: np.ndarray) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        device = next(model.parameters()).device
        dtype = resolve_precision(self.precision, device)
        loader = DataLoader(Subset(self.dataset, [int(i) for i in indices]),
                            batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)
        feats, pids, camids = [], [], []
        for batch in loader:
            with autocast_context(device, dtype):
                f = model(batch[0].to(device, non_blocking=True))
            feats.append(f.float().cpu())
            pids.append(torch.as_tensor(batch[1]).cpu())
            camids.append(torch.as_tensor(batch[2]).cpu())
        return torch.cat(feats), torch.cat(pids).numpy(), torch.cat(camids).numpy()

    def __call__(self, model: nn.Module, indices: np.ndarray) -> dict[str, float]:
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) == 0:
            return {}
        feats, pids, camids = self.embed(model, indices)
        seen: set[tuple[int, int]] = set()
        is_query = np.zeros(len(indices), dtype=bool)
        for k, (p, c) in enumerate(zip(pids.tolist(), camids.tolist())):
            if (p, c) not in seen:
                seen.add((p, c))
                is_query[k] = True
        q, g = np.flatnonzero(is_query), np.arange(len(indices))
        has_match = [bool(np.any((pids[g] == pids[i]) & (camids[g] != camids[i]))) for i in q]
        if not any(has_match):
            log.warning("held-out validation: no query has a same-identity gallery item from another "
                        "camera; no rank-1 / mAP this time")
            return {"num_valid_queries": 0.0}
        fn = torch.nn.functional.normalize(feats, dim=1)
        dist = (1.0 - fn[q] @ fn[g].t()).numpy()
        out = rank_metrics(dist, pids[q], camids[q], pids[g], camids[g], max_rank=min(20, len(g)))
        result = {"rank1": float(out["rank1"]), "mAP": float(out["mAP"]),
                  "num_valid_queries": float(out["num_valid_queries"])}
        if len(g) >= 5:
            result["rank5"] = float(out["rank5"])
        return result
