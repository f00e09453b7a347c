"""ResNet backbones (torchvision builders) with the last stage's stride set to 1.

``pretrained`` is one of:

* ``"none"``: random initialisation (Kaiming, fan_in, as the rest of the model);
* ``"imagenet"``: torchvision's ``ResNet*_Weights.IMAGENET1K_V1``, read from torch hub's cache
  ``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch/hub/checkpoints``). Nothing is
  downloaded: when the file is missing, :func:`check_pretrained` fails before any work with an
  error naming the exact file and folder;
* a path to a ``.pth`` file holding a plain backbone state dict (torchvision ResNet keys;
  ``fc.*`` is ignored, a ``module.`` or ``base.`` prefix and a ``{"state_dict": ...}`` wrapper
  are accepted).
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models import (
    ResNet18_Weights,
    ResNet34_Weights,
    ResNet50_Weights,
    resnet18,
    resnet34,
    resnet50,
)

from psta.errors import UserError

from .state_dict import strict_load_state_dict, unwrap_state_dict
from .weight_init import weights_init_kaiming

_BUILDERS = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50}
_WEIGHTS = {
    "resnet18": ResNet18_Weights.IMAGENET1K_V1,
    "resnet34": ResNet34_Weights.IMAGENET1K_V1,
    "resnet50": ResNet50_Weights.IMAGENET1K_V1,
}
_OUT_CHANNELS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}
BACKBONES = tuple(_BUILDERS)


class PretrainedWeightsError(UserError, FileNotFoundError):
    """The requested pretrained backbone weights are not available (offline)."""


def _check_backbone_name(name: str) -> None:
    if name not in _BUILDERS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")


def backbone_channels(name: str) -> int:
    """Channels of the backbone's last feature map (2048 for resnet50, 512 for resnet18/34)."""
    _check_backbone_name(name)
    return _OUT_CHANNELS[name]


def imagenet_weights_file(name: str) -> Path:
    """Where torchvision's ImageNet weights for ``name`` are cached: ``$TORCH_HOME/hub/checkpoints/<file>``."""
    _check_backbone_name(name)
    filename = os.path.basename(urlparse(_WEIGHTS[name].url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def check_pretrained(pretrained: str | os.PathLike, backbone: str = "resnet50") -> None:
    """Fail early (before any model is built) if ``pretrained`` cannot be honoured offline."""
    _check_backbone_name(backbone)
    if pretrained is None:
        raise ValueError("pretrained must be 'none', 'imagenet' or a path to a .pth file, not None")
    spec = os.fspath(pretrained)
    if spec == "none":
        return
    if spec == "imagenet":
        path = imagenet_weights_file(backbone)
        if not path.is_file():
            url = _WEIGHTS[backbone].url
            raise PretrainedWeightsError(
                f"ImageNet weights for {backbone} are not available offline: put the file "
                f"'{path.name}' (from {url}) into the folder '{path.parent}' "
                f"(torch hub's cache, $TORCH_HOME/hub/checkpoints), "
                f"or set pretrained to 'none' or to the path of a backbone state dict."
            )
        return
    if not Path(spec).is_file():
        raise PretrainedWeightsError(
            f"pretrained backbone weights file not found: '{spec}' "
            f"(pretrained must be 'none', 'imagenet' or a path to a .pth backbone state dict)"
        )


class ResNetBackbone(nn.Module):
    """The convolutional part of a torchvision ResNet (no avgpool / fc), last stride 1.

    Submodule names (``conv1``, ``bn1``, ``layer1`` .. ``layer4``) are torchvision's, so ImageNet
    state dicts load directly and the released PSTA layout (``base.*``) is reproduced.
    """

    def __init__(self, name: str = "resnet50", last_stride: int = 1):
        super().__init__()
        _check_backbone_name(name)
        net = _BUILDERS[name](weights=None)
        self.name = name
        self.out_channels = _OUT_CHANNELS[name]
        self.conv1 = net.conv1
        self.bn1 = net.bn1
        self.relu = net.relu
        self.maxpool = net.maxpool
        self.layer1 = net.layer1
        self.layer2 = net.layer2
        self.layer3 = net.layer3
        self.layer4 = net.layer4
        if last_stride != 2:
            # Bottleneck carries the stride on conv2 (and the downsample), BasicBlock on conv1.
            for m in self.layer4[0].modules():
                if isinstance(m, nn.Conv2d) and m.stride == (2, 2):
                    m.stride = (last_stride, last_stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)


def _unwrap_backbone_state(obj, source: str) -> dict[str, torch.Tensor]:
    """A backbone state dict from a plain / DataParallel / PSTA (``base.``) one, classifier dropped."""
    out = {}
    for k, v in unwrap_state_dict(obj, source).items():
        k = k.removeprefix("base.")
        if not k.startswith("fc."):
            out[k] = v
    return out


def load_backbone_state(backbone: ResNetBackbone, state: dict, source: str) -> None:
    """Strictly load a plain backbone state dict (fc.* ignored) with a clear error on mismatch."""
    strict_load_state_dict(backbone, _unwrap_backbone_state(state, source), source=source)


def build_backbone(name: str = "resnet50", pretrained: str | os.PathLike = "none") -> ResNetBackbone:
    """A last-stride-1 ResNet, Kaiming-initialised, then loaded with ``pretrained`` weights."""
    check_pretrained(pretrained, name)
    backbone = ResNetBackbone(name)
    backbone.apply(weights_init_kaiming)
    spec = os.fspath(pretrained)
    if spec == "imagenet":
        weights = _WEIGHTS[name]
        state = weights.get_state_dict(progress=False, weights_only=True)
        load_backbone_state(backbone, state, source=f"{weights} ({imagenet_weights_file(name)})")
    elif spec != "none":
        state = torch.load(spec, map_location="cpu", weights_only=True)
        load_backbone_state(backbone, state, source=spec)
    return backbone
