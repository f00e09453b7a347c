"""Embeddings of test tracklets: begin-interval, dense or all-frames sampling, bounded memory.

dense and all-frames read a tracklet in chunks (psta.data.datasets.TestChunks) and average the
clip embeddings per tracklet, so a 9,000-frame tracklet never sits in memory at once.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from psta.data.datasets import TestChunks, TestClips
from psta.model.precision import autocast_context, resolve_precision

from .runtime import resolve_device

SAMPLINGS = ("begin", "dense", "all")


def _split_into_clips(frames: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """1 x L x C x H x W consecutive frames -> ceil(L/T) clips of T (the last padded by repeating
    its final frame) and the number of real frames in each clip, for a frame-weighted mean."""
    frames = frames[0]
    length = frames.shape[0]
    pad = (-length) % seq_len
    if pad:
        frames = torch.cat([frames, frames[-1:].expand(pad, *frames.shape[1:])])
    clips = frames.reshape(-1, seq_len, *frames.shape[1:])
    weights = torch.full((clips.shape[0],), float(seq_len))
    weights[-1] = seq_len - pad
    return clips, weights


@torch.no_grad()
def extract_features(
    model: nn.Module,
    tracklets: pd.DataFrame,
    cache,
    seq_len: int,
    sampling: str = "begin",
    batch_size: int = 32,
    precision: str = "auto",
    device: str = "auto",
    num_workers: int = 0,
    progress: bool = True,
    max_clips: int = 200,
    seed: int = 0,
) -> np.ndarray:
    """float32 ``len(tracklets) x D`` embeddings, row i for row i of ``tracklets``.

    ``dense`` keeps at most ``max_clips`` clips per tracklet (0: all), a window of consecutive
    clips whose start is drawn from ``(seed, tracklet_id)``. Progress bars appear only when
    ``progress`` is set and stderr is a terminal.
    """
    if sampling not in SAMPLINGS:
        raise ValueError(f"evaluate.sampling={sampling!r}: choose one of {', '.join(SAMPLINGS)}")
    dev = resolve_device(device)
    dtype = resolve_precision(precision, dev)
    model = model.to(dev).eval()
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    row_of = {int(t): i for i, t in enumerate(tracklets["tracklet_id"].to_numpy())}
    sums = None
    weights = np.zeros(len(tracklets), np.float64)

    def embed(clips: torch.Tensor) -> torch.Tensor:
        with autocast_context(dev, dtype):
            return model(clips.to(dev, non_blocking=True)).float().cpu()

    def add(rows: np.ndarray, feats: torch.Tensor, w: np.ndarray) -> None:
        nonlocal sums
        if sums is None:
            sums = np.zeros((len(tracklets), feats.shape[1]), np.float64)
        np.add.at(sums, rows, feats.numpy().astype(np.float64) * w[:, None])
        np.add.at(weights, rows, w)

    if sampling == "begin":
        loader = DataLoader(TestClips(tracklets, cache, seq_len=seq_len), batch_size=batch_size,
                            num_workers=num_workers)
        bar = tqdm(loader, desc="embeddings", disable=None if progress else True, leave=False)
        for clips, _, _, tids in bar:
            rows = np.array([row_of[int(t)] for t in tids])
            add(rows, embed(clips), np.ones(len(rows)))
    else:
        chunks = TestChunks(tracklets, cache, seq_len=seq_len, mode=sampling,
                            clips_per_chunk=batch_size, frames_per_chunk=batch_size * seq_len,
                            max_clips=max_clips, seed=seed)
        loader = DataLoader(chunks, batch_size=None, num_workers=num_workers)
        for clips, tid in tqdm(loader, total=len(chunks), desc=f"embeddings ({sampling})",
                               disable=None if progress else True, leave=False):
            if sampling == "all":
                clips, w = _split_into_clips(clips, seq_len)
            else:
                w = torch.ones(clips.shape[0])
            feats = embed(clips)
            add(np.full(len(feats), row_of[int(tid)]), feats, w.numpy().astype(np.float64))
    if sums is None or (weights == 0).any():
        raise ValueError("no embedding was produced for some tracklets; is the frame cache complete?")
    return (sums / weights[:, None]).astype(np.float32)


def calibrate_batchnorm(model: nn.Module, tracklets: pd.DataFrame, cache, seq_len: int, num_clips: int = 512,
                        batch_size: int = 32, seed: int = 0, device: str = "auto", num_workers: int = 0) -> nn.Module:
    """Re-estimate ``model``'s BatchNorm running statistics on begin-interval clips of a seeded
    sample of ``num_clips`` of ``tracklets`` (torch's ``update_bn``: a plain average over the
    batches, no gradient, no weight changed; fast-reid's PreciseBN). Returns ``model``.

    A freshly initialised model has BatchNorm's initial statistics (mean 0, variance 1), which
    match no real activation. In eval mode PSTA's relation attention then sees pre-sigmoid values
    of -100 and below, saturates at 0 and embeds nearly every clip as the zero vector (their
    distances all tie). With statistics of real clips an untrained baseline shows what its random weights do.
    """
    sample = tracklets.sample(n=min(num_clips, len(tracklets)), random_state=seed)
    if len(sample) < 2:
        raise ValueError(f"BatchNorm statistics need at least 2 tracklets, got {len(sample)}")
    # full batches only: a 1-clip batch has no variance for the embedding's BatchNorm1d
    loader = DataLoader(TestClips(sample, cache, seq_len=seq_len), batch_size=min(batch_size, len(sample)),
                        drop_last=True, num_workers=num_workers)
    dev = resolve_device(device)
    update_bn(loader, model.to(dev), device=dev)  # a batch's first item is the clips
    return model.eval()
