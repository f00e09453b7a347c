"""Clip augmentation: one set of random parameters for all frames of a clip.

A clip is a ``T x 3 x h x w`` uint8 tensor (what :class:`~psta.data.cache.FrameCache`
returns). :class:`ClipTransform` applies, in order: resize to ``H x W`` (bicubic, antialias;
skipped when the clip already has that size), horizontal flip, conversion to float in
``[0, 1]`` with ImageNet normalisation, random erasing of one rectangle. The flip decision and
the erasing rectangle are drawn once per clip, so every frame is flipped and erased the same way.

Random erasing is the reference's, not ``v2.RandomErasing``'s: area 0.02-0.4 of the frame,
aspect ratio drawn *uniformly* from [0.3, 1/0.3], up to 100 attempts at a rectangle that fits,
and the rectangle filled with the per-channel values ``ERASE_FILL`` = (0.485, 0.456, 0.406)
written into the already-normalised tensor (so not the mean colour, and not 0).

The kernels are ``torchvision.transforms.v2.functional``; the parameters come from an optional
explicit ``torch.Generator``, so a dataset can make augmentation a pure function of its seed. The
normalisation is fused into one in-place pass: ``(x - 255*mean) / (255*std)``, the same
numbers as ``v2.ToDtype(float32, scale=True)`` + ``v2.Normalize`` (measured 10x cheaper on
a 8 x 3 x 256 x 128 clip, see benchmarks/bench_loading.py).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: the reference's erasing fill, written as is into the normalised tensor
ERASE_FILL = (0.485, 0.456, 0.406)
ERASE_SCALE = (0.02, 0.4)
ERASE_RATIO = (0.3, 1 / 0.3)
ERASE_ATTEMPTS = 100
_MODES = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}


class ClipTransform:
    """``T x 3 x h x w`` uint8 (or float in [0, 1]) -> ``T x 3 x H x W`` float32, normalised.

    Call as ``transform(clip, generator=None)``; random parameters come from ``generator``
    (or torch's global RNG when it is None). ``flip_p = erase_p = 0`` gives the test
    transform (resize + normalise).
    """

    #: datasets pass a torch.Generator to transforms that say so
    accepts_generator = True

    def __init__(self, height: int, width: int, flip_p: float = 0.0, erase_p: float = 0.0,
                 erase_scale: Sequence[float] = ERASE_SCALE,
                 erase_ratio: Sequence[float] = ERASE_RATIO,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 erase_fill: Sequence[float] = ERASE_FILL, interpolation: str = "bicubic"):
        if not (0.0 <= flip_p <= 1.0 and 0.0 <= erase_p <= 1.0):
            raise ValueError(f"flip_p and erase_p must be in [0, 1], got {flip_p}, {erase_p}")
        if not (0 < erase_scale[0] <= erase_scale[1] < 1) or not (0 < erase_ratio[0] <= erase_ratio[1]):
            raise ValueError(f"bad erasing ranges: scale={erase_scale}, ratio={erase_ratio}")
        if interpolation not in _MODES:
            raise ValueError(f"unknown interpolation {interpolation!r}; choose {' or '.join(_MODES)}")
        self.height, self.width = int(height), int(width)
        self.interpolation = interpolation
        self.flip_p, self.erase_p = float(flip_p), float(erase_p)
        self.erase_scale = (float(erase_scale[0]), float(erase_scale[1]))
        self.erase_ratio = (float(erase_ratio[0]), float(erase_ratio[1]))
        self.mean, self.std = tuple(map(float, mean)), tuple(map(float, std))
        self.erase_fill = torch.tensor(tuple(map(float, erase_fill)), dtype=torch.float32).view(3, 1, 1)
        m = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        s = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        self._shift_u8, self._scale_u8 = m * 255.0, 1.0 / (s * 255.0)
        self._shift_f, self._scale_f = m, 1.0 / s

    def __repr__(self) -> str:
        return (f"ClipTransform(height={self.height}, width={self.width}, flip_p={self.flip_p}, "
                f"erase_p={self.erase_p}, erase_scale={self.erase_scale}, "
                f"erase_ratio={self.erase_ratio})")

    def make_params(self, generator: torch.Generator | None = None) -> dict:
        """Draw the clip's parameters: ``{"flip": bool, "erase": (i, j, h, w) or None}``."""
        g = generator
        flip = self.flip_p > 0 and torch.rand(1, generator=g).item() < self.flip_p
        erase = None
        if self.erase_p > 0 and torch.rand(1, generator=g).item() < self.erase_p:
            H, W = self.height, self.width
            for _ in range(ERASE_ATTEMPTS):  # the reference: up to 100 tries at a rectangle that fits
                area = H * W * torch.empty(1).uniform_(*self.erase_scale, generator=g).item()
                ratio = torch.empty(1).uniform_(*self.erase_ratio, generator=g).item()
                h = int(round(math.sqrt(area * ratio)))
                w = int(round(math.sqrt(area / ratio)))
                if h < H and w < W:
                    i = int(torch.randint(0, H - h + 1, (1,), generator=g).item())
                    j = int(torch.randint(0, W - w + 1, (1,), generator=g).item())
                    erase = (i, j, h, w)
                    break
        return {"flip": bool(flip), "erase": erase}

    def apply(self, clip: torch.Tensor, params: dict) -> torch.Tensor:
        """Apply given parameters to a ``[T x] 3 x h x w`` clip (same parameters for every frame)."""
        if clip.ndim not in (3, 4) or clip.shape[-3] != 3:
            raise ValueError(f"expected a [T x] 3 x H x W clip, got shape {tuple(clip.shape)}")
        clip = clip.as_subclass(torch.Tensor)
        if tuple(clip.shape[-2:]) != (self.height, self.width):
            clip = F.resize(clip, [self.height, self.width],
                            interpolation=_MODES[self.interpolation], antialias=True)
        if params["flip"]:
            clip = F.horizontal_flip(clip)
        if clip.dtype == torch.uint8:
            out = clip.to(torch.float32).sub_(self._shift_u8).mul_(self._scale_u8)
        elif clip.is_floating_point():
            out = clip.to(torch.float32, copy=True).sub_(self._shift_f).mul_(self._scale_f)
        else:
            raise TypeError(f"clip must be uint8 or floating point, got {clip.dtype}")
        if params["erase"] is not None:
            i, j, h, w = params["erase"]
            out[..., i:i + h, j:j + w] = self.erase_fill
        return out

    def __call__(self, clip: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.apply(clip, self.make_params(generator))


def build_train_transform(height: int = 256, width: int = 128, flip_p: float = 0.5,
                          erase_p: float = 0.5, erase_scale: Sequence[float] = ERASE_SCALE,
                          erase_ratio: Sequence[float] = ERASE_RATIO,
                          mean: Sequence[float] = IMAGENET_MEAN,
                          std: Sequence[float] = IMAGENET_STD) -> ClipTransform:
    """Training augmentation of the recipe: resize, flip, normalise, random erasing."""
    return ClipTransform(height, width, flip_p=flip_p, erase_p=erase_p, erase_scale=erase_scale,
                         erase_ratio=erase_ratio, mean=mean, std=std)


def build_test_transform(height: int = 256, width: int = 128,
                         mean: Sequence[float] = IMAGENET_MEAN,
                         std: Sequence[float] = IMAGENET_STD,
                         interpolation: str = "bilinear") -> ClipTransform:
    """Test transform: resize (bilinear, as the reference's test transform) + normalise."""
    return ClipTransform(height, width, flip_p=0.0, erase_p=0.0, mean=mean, std=std,
                         interpolation=interpolation)
