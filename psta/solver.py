"""Optimiser and learning-rate schedule of the PSTA recipe (docs/SPEC.md, "Optimiser and schedule").

* :func:`build_optimizer`: Adam over the trainable parameters (lr 3.5e-4, weight decay 5e-4 in
  the paper). Frozen parameters (``requires_grad=False``, e.g. the BNNeck bias) are left out, so
  neither decay nor Adam's state touches them.
* :func:`lr_factor` / :class:`WarmupMultiStepLR`: per-epoch schedule. Linear warm-up over
  ``warmup_epochs`` from ``warmup_factor * lr`` (epoch 0) towards ``lr`` (epoch ``warmup_epochs``),
  times ``gamma`` for every milestone ``<= epoch``::

      lr(e) = base_lr * w(e) * gamma ** #{m in milestones : m <= e}
      w(e)  = warmup_factor + (1 - warmup_factor) * e / warmup_epochs   if e < warmup_epochs else 1

  (the reid-strong-baseline / PSTA ``WarmupMultiStepLR`` with linear warm-up).
"""
from __future__ import annotations

from bisect import bisect_right
from typing import Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["build_optimizer", "lr_factor", "WarmupMultiStepLR"]


def build_optimizer(model: nn.Module, lr: float = 3.5e-4, weight_decay: float = 5e-4,
                    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                    bias_weight_decay: float | None = None) -> torch.optim.Adam:
    """Adam over ``model``'s trainable parameters.

    ``bias_weight_decay`` (default: same as ``weight_decay``) applies to 1-d parameters (biases and
    norm weights) when given, via a second parameter group.
    """
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    if bias_weight_decay is None or bias_weight_decay == weight_decay:
        groups = [{"params": [p for _, p in params], "weight_decay": weight_decay}]
    else:
        decay = [p for _, p in params if p.ndim > 1]
        other = [p for _, p in params if p.ndim <= 1]
        groups = [g for g in ({"params": decay, "weight_decay": weight_decay},
                              {"params": other, "weight_decay": bias_weight_decay}) if g["params"]]
    return torch.optim.Adam(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def lr_factor(epoch: int, milestones: Sequence[int] = (70, 140, 210, 310, 410), gamma: float = 0.3,
              warmup_epochs: int = 10, warmup_factor: float = 0.01) -> float:
    """The multiplier of the base learning rate used during (0-based) ``epoch``."""
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    factor = 1.0
    if warmup_epochs > 0 and epoch < warmup_epochs:
        alpha = epoch / warmup_epochs
        factor = warmup_factor * (1.0 - alpha) + alpha
    return factor * gamma ** bisect_right(sorted(milestones), epoch)


class WarmupMultiStepLR(LRScheduler):
    """Per-epoch warm-up + multi-step schedule; call ``step()`` once at the end of every epoch.

    Closed form (a function of ``last_epoch`` only), so resuming from ``state_dict`` is exact. Its
    state holds only numbers and lists, so it loads with ``torch.load(weights_only=True)``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, milestones: Sequence[int] = (70, 140, 210, 310, 410),
                 gamma: float = 0.3, warmup_epochs: int = 10, warmup_factor: float = 0.01,
                 last_epoch: int = -1):
        if list(milestones) != sorted(milestones):
            raise ValueError(f"milestones must be increasing, got {list(milestones)}")
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        if not 0.0 < warmup_factor <= 1.0:
            raise ValueError(f"warmup_factor must be in (0, 1], got {warmup_factor}")
        self.milestones = [int(m) for m in milestones]
        self.gamma = float(gamma)
        self.warmup_epochs = int(warmup_epochs)
        self.warmup_factor = float(warmup_factor)
        super().__init__(optimizer, last_epoch)

    def factor(self, epoch: int) -> float:
        return lr_factor(epoch, self.milestones, self.gamma, self.warmup_epochs, self.warmup_factor)

    def get_lr(self) -> list[float]:
        f = self.factor(max(self.last_epoch, 0))
        return [base * f for base in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()
