"""Embeddings of frames held in memory, exactly as evaluation embeds a cached tracklet.

Evaluation reads frames from the frame cache (decoded RGB, resized bicubic + antialias to the
model's input size, psta.data.cache) and embeds them with the test sampling and transform of
:func:`psta.engine.inference.extract_features`. :class:`FrameSets` puts in-memory tracklets
(a query's crops, a video track, frames posted to the served model) behind the same reading
interface as :class:`~psta.data.cache.FrameCache`, so the very same code embeds them.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F


def to_model_size(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 ``L x 3 x h x w`` -> ``L x 3 x height x width``, resized as the frame cache does."""
    if tuple(frames.shape[-2:]) == (height, width):
        return frames.contiguous()
    return F.resize(frames, [height, width], interpolation=InterpolationMode.BICUBIC,
                    antialias=True).contiguous()


class FrameSets:
    """In-memory tracklets with the reading interface of a FrameCache.

    ``sets``: uint8 tensors ``L_i x 3 x h x w`` (any size; resized to ``height x width`` here).
    Tracklet ``i`` of :meth:`table` is ``sets[i]``.
    """

    def __init__(self, sets: Sequence[torch.Tensor], height: int, width: int):
        if not sets:
            raise ValueError("no tracklet to embed")
        self.height, self.width = int(height), int(width)
        self._frames = []
        for i, frames in enumerate(sets):
            if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[1] != 3 or len(frames) == 0:
                raise ValueError(f"tracklet {i}: expected uint8 L x 3 x H x W frames (L >= 1), got "
                                 f"{frames.dtype} {tuple(frames.shape)}")
            self._frames.append(to_model_size(frames, self.height, self.width))

    def table(self) -> pd.DataFrame:
        n = np.array([len(f) for f in self._frames], np.int64)
        return pd.DataFrame({
            "tracklet_id": np.arange(len(n), dtype=np.int64), "pid": -1, "label": -1, "camid": -1,
            "n_frames": n, "frame_offset": np.concatenate([[0], np.cumsum(n)[:-1]]).astype(np.int64),
        })

    def check_tracklets(self, tracklets: pd.DataFrame) -> None:
        """Nothing to check: :meth:`table` describes exactly these frames."""

    def read(self, tracklet_id: int, frame_indices) -> torch.Tensor:
        return self._frames[int(tracklet_id)][torch.as_tensor(np.asarray(frame_indices, np.int64))]


def l2_normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def embed_frame_sets(model: torch.nn.Module, sets: Sequence[torch.Tensor], *, seq_len: int,
                     height: int, width: int, sampling: str = "begin", max_clips: int = 200,
                     seed: int = 0, batch_size: int = 32, precision: str = "auto",
                     device: str = "auto") -> np.ndarray:
    """L2-normalised ``len(sets) x D`` float32 embeddings, one per in-memory tracklet, computed
    by evaluation's :func:`~psta.engine.inference.extract_features` (same sampling, transform,
    precision and averaging). Dense sampling of a set with more than ``max_clips`` clips draws
    its window from ``(seed, position of the set)``: an in-memory set has no tracklet id."""
    from psta.engine.inference import extract_features

    source = FrameSets(sets, height, width)
    features = extract_features(model, source.table(), source, seq_len=seq_len, sampling=sampling,
                                max_clips=max_clips, seed=seed, batch_size=batch_size, precision=precision,
                                device=device, num_workers=0, progress=False)
    return l2_normalise(features)
