"""The forward pass of a multi-GPU ``nn.DataParallel`` run, on one device.

The reference trained on two GPUs with ``nn.DataParallel``: the 32-clip batch was scattered in
two contiguous halves, every BatchNorm normalised each half with that half's statistics, and the
loss (with its hard-triplet mining) saw the outputs of all 32 clips gathered again. Only the
replica on the first GPU shares its buffers with the module, so the running statistics were
updated from the first half alone. :func:`forward_in_groups` reproduces exactly that.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["forward_in_groups"]


_STATS = ("running_mean", "running_var", "num_batches_tracked")


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def _gather(outputs: list):
    """Concatenate per-group outputs along the batch: tensors, or (logits, features) lists."""
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(outputs)
    if isinstance(first, (list, tuple)):
        return type(first)(_gather([o[i] for o in outputs]) for i in range(len(first)))
    raise TypeError(f"cannot gather model outputs of type {type(first).__name__}")


def forward_in_groups(model: nn.Module, clips: torch.Tensor, groups: int = 1):
    """``model(clips)`` with the batch split into ``groups`` contiguous, equal groups.

    In training mode each group is normalised by every BatchNorm with its own statistics, the
    running statistics keep the first group's update only, and the outputs are concatenated
    back in batch order. ``groups = 1`` is a plain ``model(clips)``.
    """
    if groups == 1:
        return model(clips)
    if clips.shape[0] % groups:
        raise ValueError(f"a batch of {clips.shape[0]} clips does not split into {groups} equal BatchNorm groups")
    chunks = clips.chunk(groups)
    outputs = [model(chunks[0])]
    # the other replicas update copies of the running statistics, dropped afterwards. The buffers
    # are swapped, not written back: autograd saved the originals for the backward pass.
    bns = _batchnorms(model)
    kept = [[getattr(bn, name) for name in _STATS] for bn in bns]
    for bn, tensors in zip(bns, kept):
        for name, t in zip(_STATS, tensors):
            setattr(bn, name, t.clone())
    try:
        outputs += [model(chunk) for chunk in chunks[1:]]
    finally:
        for bn, tensors in zip(bns, kept):
            for name, t in zip(_STATS, tensors):
                setattr(bn, name, t)
    return _gather(outputs)
