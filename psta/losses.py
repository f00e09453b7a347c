"""The PSTA training losses (docs/SPEC.md, "Loss").

* :func:`cross_entropy_label_smooth`: cross entropy against smoothed one-hot targets
  ``(1 - eps) * onehot + eps / K`` (the re-id reference ``CrossEntropyLabelSmooth``; numerically the
  same as ``F.cross_entropy(..., label_smoothing=eps)``).
* :func:`triplet_batch_hard`: for every anchor, the hardest positive (largest distance, same
  label) and the hardest negative (smallest distance, other label); hinge
  ``max(0, d_ap - d_an + margin)`` averaged over anchors. Distance: cosine (``1 - cos``, default,
  as PSTA) or Euclidean.
* :class:`PSTALoss`: ``ce_weight * sum_k w_k CE(logits_k) + triplet_weight * sum_k w_k Tri(features_k)``
  over the K pyramid levels (3 for PSTA, 1 for the TAP baseline), with ``w_k = 1 / K`` by
  default: the MEAN over the levels of each loss, as the reference's deep supervision computes
  it. Summing instead (``w_k = 1``) triples the loss, which under Adam's coupled L2 weight decay
  is the same as a third of the weight decay.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "cross_entropy_label_smooth",
    "pairwise_distance",
    "triplet_batch_hard",
    "CrossEntropyLabelSmooth",
    "TripletLoss",
    "PSTALoss",
]


def cross_entropy_label_smooth(logits: Tensor, targets: Tensor, epsilon: float = 0.1) -> Tensor:
    """Mean over the batch of ``-sum_c q_c log p_c`` with ``q = (1 - eps) onehot + eps / K``.

    Computed in float32 whatever the logits' dtype (autocast-safe).
    """
    if logits.ndim != 2:
        raise ValueError(f"logits must be B x K, got shape {tuple(logits.shape)}")
    if not 0.0 <= epsilon < 1.0:
        raise ValueError(f"label smoothing epsilon must be in [0, 1), got {epsilon}")
    log_probs = F.log_softmax(logits.float(), dim=1)
    nll = -log_probs.gather(1, targets.long().unsqueeze(1)).squeeze(1)
    smooth = -log_probs.mean(dim=1)
    return ((1.0 - epsilon) * nll + epsilon * smooth).mean()


def pairwise_distance(x: Tensor, distance: str = "cosine") -> Tensor:
    """B x B distance matrix of the rows of ``x`` (float32): ``cosine`` = 1 - cos, or ``euclidean``."""
    x = x.float()
    if distance == "cosine":
        xn = F.normalize(x, dim=1)
        return 1.0 - xn @ xn.t()
    if distance == "euclidean":
        sq = (x * x).sum(dim=1, keepdim=True)
        d2 = sq + sq.t() - 2.0 * (x @ x.t())
        return d2.clamp_min(1e-12).sqrt()
    raise ValueError(f"unknown distance {distance!r}; choose 'cosine' or 'euclidean'")


def triplet_batch_hard(features: Tensor, targets: Tensor, margin: float = 0.3,
                       distance: str = "cosine") -> Tensor:
    """Batch-hard triplet loss, mean over the anchors that have at least one negative.

    The anchor itself counts as a positive (distance ~0), so an identity with a single clip in the
    batch contributes ``max(0, margin - d_an)``. With no negatives at all in the batch the loss is
    a zero that still carries a (zero) gradient.
    """
    if features.ndim != 2:
        raise ValueError(f"features must be B x D, got shape {tuple(features.shape)}")
    dist = pairwise_distance(features, distance)
    targets = targets.view(-1)
    same = targets.unsqueeze(0) == targets.unsqueeze(1)
    # hardest positive: max over same-label distances; hardest negative: min over the others
    d_ap = dist.masked_fill(~same, float("-inf")).amax(dim=1)
    d_an = dist.masked_fill(same, float("inf")).amin(dim=1)
    valid = ~same.all(dim=1)
    if not bool(valid.any()):
        return dist.sum() * 0.0
    return F.relu(d_ap[valid] - d_an[valid] + margin).mean()


class CrossEntropyLabelSmooth(nn.Module):
    def __init__(self, epsilon: float = 0.1):
        super().__init__()
        self.epsilon = float(epsilon)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return cross_entropy_label_smooth(logits, targets, self.epsilon)


class TripletLoss(nn.Module):
    def __init__(self, margin: float = 0.3, distance: str = "cosine"):
        super().__init__()
        self.margin = float(margin)
        self.distance = distance
        pairwise_distance(torch.zeros(1, 1), distance)  # validate the name now

    def forward(self, features: Tensor, targets: Tensor) -> Tensor:
        return triplet_batch_hard(features, targets, self.margin, self.distance)


class PSTALoss(nn.Module):
    """CE (label smoothing) + batch-hard triplet, each averaged over the pyramid levels.

    ``level_weights`` (ablations) replaces the default ``1 / K`` per level: ``[1, 1, 1]`` sums the
    levels, ``[0, 0, 1]`` trains on the last level only.

    ``forward(logits, features, targets)`` takes the model's training outputs (lists, one entry per
    level; a bare tensor is treated as a one-level list) and returns ``(total, parts)`` where
    ``parts = {"ce": ..., "triplet": ..., "total": ...}`` are detached scalar tensors (the
    level-weighted CE and triplet terms, and their weighted sum).
    """

    def __init__(self, label_smoothing: float = 0.1, margin: float = 0.3, distance: str = "cosine",
                 ce_weight: float = 1.0, triplet_weight: float = 1.0,
                 level_weights: Sequence[float] | None = None):
        super().__init__()
        self.ce = CrossEntropyLabelSmooth(label_smoothing)
        self.triplet = TripletLoss(margin, distance)
        self.ce_weight = float(ce_weight)
        self.triplet_weight = float(triplet_weight)
        self.level_weights = None if level_weights is None else [float(w) for w in level_weights]

    def forward(self, logits: Sequence[Tensor] | Tensor, features: Sequence[Tensor] | Tensor,
                targets: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        if isinstance(logits, Tensor):
            logits = [logits]
        if isinstance(features, Tensor):
            features = [features]
        if len(logits) != len(features):
            raise ValueError(f"{len(logits)} logits but {len(features)} feature levels")
        weights = self.level_weights or [1.0 / len(logits)] * len(logits)
        if len(weights) < len(logits):
            raise ValueError(f"level_weights has {len(weights)} entries for {len(logits)} levels")
        ce_sum = logits[0].new_zeros((), dtype=torch.float32)
        tri_sum = ce_sum.clone()
        for w, lg, ft in zip(weights, logits, features):
            if w == 0.0:
                continue
            ce_sum = ce_sum + w * self.ce(lg, targets)
            tri_sum = tri_sum + w * self.triplet(ft, targets)
        total = self.ce_weight * ce_sum + self.triplet_weight * tri_sum
        parts = {"ce": ce_sum.detach(), "triplet": tri_sum.detach(), "total": total.detach()}
        return total, parts
