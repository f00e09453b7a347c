"""PSTA (pyramid spatial-temporal aggregation) and the TAP baseline, plus ``build_model``.

Input: a clip batch B x T x 3 x H x W. ``train()`` mode returns ``(logits, features)``, two lists
(one entry per pyramid level for PSTA, one for TAP) of B x K logits and B x D post-BNNeck
features; ``eval()`` mode returns the B x D embedding (post-BN, last level for PSTA).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from psta.shapes import feature_map_size, pyramid_levels

from .attention import STAM
from .backbone import BACKBONES, backbone_channels, build_backbone, check_pretrained
from .weight_init import weights_init_classifier, weights_init_kaiming

ARCHS = ("psta", "tap")


def _frames(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """B x T x 3 x H x W -> (B*T) x 3 x H x W, channels_last when the backbone is."""
    frames = x.flatten(0, 1)
    if model.base.conv1.weight.is_contiguous(memory_format=torch.channels_last):
        frames = frames.contiguous(memory_format=torch.channels_last)
    return frames


def _check_clip(x: torch.Tensor, name: str) -> None:
    if x.ndim != 5 or x.shape[2] != 3:
        raise ValueError(f"{name} expects a clip batch B x T x 3 x H x W, got shape {tuple(x.shape)}")


class PSTA(nn.Module):
    """Backbone -> 1x1 channel reduction -> log2(T) STAM levels -> per-level BNNeck + classifier."""

    def __init__(self, num_classes: int, seq_len: int = 8, height: int = 256, width: int = 128,
                 backbone: str = "resnet50", pretrained: str | os.PathLike = "none",
                 planes: int = 1024, mid_planes: int = 256):
        super().__init__()
        levels = pyramid_levels(seq_len)
        check_pretrained(pretrained, backbone)
        self.num_classes = num_classes
        self.seq_len = seq_len
        self.height, self.width = height, width
        self.feature_hw = feature_map_size(height, width)
        self.num_levels = levels
        self.feature_dim = planes
        spatial_size = self.feature_hw[0] * self.feature_hw[1]
        self.config = {"arch": "psta", "num_classes": num_classes, "seq_len": seq_len, "height": height,
                       "width": width, "backbone": backbone, "pretrained": os.fspath(pretrained)}
        if (planes, mid_planes) != (1024, 256):
            self.config.update(planes=planes, mid_planes=mid_planes)

        self.base = build_backbone(backbone, pretrained)
        self.down_channel = nn.Sequential(
            nn.Conv2d(self.base.out_channels, planes, kernel_size=1, stride=1, padding=0, bias=False),
            nn.BatchNorm2d(planes),
            nn.ReLU(inplace=True),
        )
        # the reference leaves this conv (and its BN) at PyTorch's default init
        # (kaiming_uniform(a=sqrt(5)): std 1/sqrt(3 * 2048) = 0.0128), not Kaiming normal (0.0313)
        for i in range(levels):  # layer1, layer2, ...: the released checkpoints' names
            self.add_module(f"layer{i + 1}", STAM(planes, mid_planes, spatial_size))
        self.bottleneck = nn.ModuleList([nn.BatchNorm1d(planes) for _ in range(levels)])
        self.bottleneck.apply(weights_init_kaiming)
        for bn in self.bottleneck:
            bn.bias.requires_grad_(False)
        self.classifier = nn.ModuleList([nn.Linear(planes, num_classes) for _ in range(levels)])
        self.classifier.apply(weights_init_classifier)

    @property
    def levels(self) -> list[STAM]:
        return [getattr(self, f"layer{i + 1}") for i in range(self.num_levels)]

    def forward(self, x: torch.Tensor):
        _check_clip(x, "PSTA")
        b, t = x.shape[:2]
        if t != self.seq_len:
            raise ValueError(f"this PSTA was built for seq_len={self.seq_len} frames per clip, got {t}")
        if feature_map_size(x.shape[3], x.shape[4]) != self.feature_hw:
            raise ValueError(
                f"this PSTA was built for {self.height} x {self.width} input "
                f"(feature map {self.feature_hw[0]} x {self.feature_hw[1]}), got {x.shape[3]} x {x.shape[4]}")
        fmap = self.down_channel(self.base(_frames(self, x)))
        fmap = fmap.reshape(b, t, *fmap.shape[1:])

        pooled, features = [], []
        for stam in self.levels:
            fmap = stam(fmap)
            pooled.append(F.adaptive_avg_pool2d(fmap.mean(dim=1), 1).flatten(1))  # g_k
            features.append(pooled[0] if len(pooled) == 1 else torch.stack(pooled, 1).mean(dim=1))
        bn_features = [bn(f) for bn, f in zip(self.bottleneck, features)]
        if not self.training:
            return bn_features[-1]
        logits = [cls(f) for cls, f in zip(self.classifier, bn_features)]
        return logits, bn_features


class TAP(nn.Module):
    """Temporal average pooling baseline: spatially pooled backbone features averaged over time,
    BNNeck (bias frozen at 0), classifier. D = backbone channels (2048 for resnet50)."""

    def __init__(self, num_classes: int, seq_len: int = 8, height: int = 256, width: int = 128,
                 backbone: str = "resnet50", pretrained: str | os.PathLike = "none"):
        super().__init__()
        if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
            raise ValueError(f"seq_len must be a positive int, got {seq_len!r}")
        check_pretrained(pretrained, backbone)
        self.num_classes = num_classes
        self.seq_len = seq_len
        self.height, self.width = height, width
        self.config = {"arch": "tap", "num_classes": num_classes, "seq_len": seq_len, "height": height,
                       "width": width, "backbone": backbone, "pretrained": os.fspath(pretrained)}
        self.base = build_backbone(backbone, pretrained)
        self.feature_dim = self.base.out_channels
        self.bottleneck = nn.BatchNorm1d(self.feature_dim)
        self.bottleneck.apply(weights_init_kaiming)
        self.bottleneck.bias.requires_grad_(False)
        self.classifier = nn.Linear(self.feature_dim, num_classes)
        self.classifier.apply(weights_init_classifier)

    def forward(self, x: torch.Tensor):
        _check_clip(x, "TAP")
        b, t = x.shape[:2]
        fmap = self.base(_frames(self, x))
        feature = F.adaptive_avg_pool2d(fmap, 1).reshape(b, t, -1).mean(dim=1)
        bn_feature = self.bottleneck(feature)
        if not self.training:
            return bn_feature
        return [self.classifier(bn_feature)], [bn_feature]


def build_model(arch: str = "psta", num_classes: int = 625, seq_len: int = 8, height: int = 256,
                width: int = 128, backbone: str = "resnet50",
                pretrained: str | os.PathLike = "none") -> nn.Module:
    """Build ``psta`` or ``tap``. Arguments are validated (and ``pretrained`` weights located)
    before anything is built. The model carries ``feature_dim`` and ``config`` (these kwargs)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
    if arch == "psta":
        pyramid_levels(seq_len)
    feature_map_size(height, width)
    check_pretrained(pretrained, backbone)
    cls = PSTA if arch == "psta" else TAP
    return cls(num_classes, seq_len=seq_len, height=height, width=width, backbone=backbone,
               pretrained=pretrained)


def model_from_config(config: dict, pretrained: str | os.PathLike | None = "none") -> nn.Module:
    """Rebuild a model from its ``config`` (as saved in our checkpoints); ``pretrained`` overrides."""
    config = dict(config)
    arch = config.pop("arch")
    if pretrained is not None:
        config["pretrained"] = pretrained
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r} in model config; choose one of {', '.join(ARCHS)}")
    return (PSTA if arch == "psta" else TAP)(**config)


__all__ = ["ARCHS", "PSTA", "TAP", "build_model", "model_from_config", "backbone_channels"]
