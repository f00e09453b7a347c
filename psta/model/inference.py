"""Inference-only model copies: BatchNorms folded into the preceding convolutions.

In eval mode a BatchNorm is a fixed per-channel affine map, so ``conv -> BN`` equals a single
convolution with rescaled weights and a bias. Folding removes every BatchNorm2d pass (a
memory-bound pass over each feature map) from inference. The folded copy has a different
state-dict layout (BNs become ``Identity``): use it for feature extraction, never save it.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def _fold_pair(parent: nn.Module, conv_name: str, bn_name: str) -> bool:
    conv, bn = parent._modules.get(conv_name), parent._modules.get(bn_name)
    if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats):
        return False
    parent._modules[conv_name] = fuse_conv_bn_eval(conv, bn)
    parent._modules[bn_name] = nn.Identity()
    return True


def fold_batchnorm(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold every ``Conv2d -> BatchNorm2d`` pair (consecutive in an ``nn.Sequential``, or the
    ``convN`` / ``bnN`` attributes of torchvision ResNet blocks and stems) into the convolution.

    Returns the model (a deep copy unless ``inplace``) in eval mode. BatchNorm1d BNNecks stay.
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    folded = 0
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for conv_name, bn_name in zip(names, names[1:]):
                folded += _fold_pair(module, conv_name, bn_name)
        for name in list(module._modules):
            if name.startswith("conv") and name[4:].isdigit():
                folded += _fold_pair(module, name, "bn" + name[4:])
    model.folded_batchnorms = folded
    return model


def prepare_for_inference(model: nn.Module, dtype: torch.dtype | None = None,
                          channels_last: bool = True) -> nn.Module:
    """An eval-mode copy for feature extraction: BatchNorms folded, channels_last, and (for
    ``dtype`` bf16 / fp16) parameters stored in that dtype so autocast has no weights to cast.

    Run it under ``autocast_context(device, dtype)`` (which casts the fp32 input) when ``dtype``
    is given. The original model is not modified.
    """
    fast = fold_batchnorm(model)
    if channels_last:
        fast = fast.to(memory_format=torch.channels_last)
    if dtype is not None and dtype != torch.float32:
        fast = fast.to(dtype)
    return fast.eval()
