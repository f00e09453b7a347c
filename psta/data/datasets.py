"""torch Datasets of clips read from a :class:`~psta.data.cache.FrameCache`.

- :class:`TrainClips`: one random-interval clip per item, augmented; ``(clip, label, camid)``.
  Items are keyed by ``(index, epoch, draw)`` (what :class:`~psta.data.sampling.
  IdentitySampler` yields) or a plain index; the frame choice and the augmentation come
  from a generator seeded with ``(seed, epoch, draw, index)``, so a run is the same for
  any number of DataLoader workers.
- :class:`TestClips`: the begin-interval clip of every tracklet; ``(clip, pid, camid,
  tracklet_id)``.
- :class:`TestChunks`: an IterableDataset for the dense and all-frames protocols; yields
  ``(clips, tracklet_id)`` chunks of one tracklet at a time (``clips``: ``k x T x 3 x H x W``
  for dense, ``1 x L x 3 x H x W`` for all-frames), so an evaluator averages features per
  tracklet while memory stays bounded by one chunk. Use ``DataLoader(ds, batch_size=None)``.

``tracklets`` is (a slice of) the index's tracklets.parquet table (docs/CONTRACTS.md); the
cache must have been built from the same index (checked at construction).
"""
from __future__ import annotations

import math
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from psta.data.cache import FrameCache
from psta.data.sampling import (
    MAX_DENSE_CLIPS,
    all_frames_chunks,
    begin_interval_indices,
    dense_clips,
    num_dense_clips,
    random_interval_indices,
    seed_for,
    torch_generator,
)
from psta.data.transforms import build_test_transform, build_train_transform

_COLUMNS = ("tracklet_id", "pid", "label", "camid", "n_frames", "frame_offset")


def _columns(tracklets: pd.DataFrame, cache: FrameCache) -> dict[str, np.ndarray]:
    missing = [c for c in _COLUMNS if c not in tracklets.columns]
    if missing:
        raise ValueError(f"tracklets table lacks columns {missing} (see docs/CONTRACTS.md)")
    if len(tracklets) == 0:
        raise ValueError("tracklets table is empty")
    cache.check_tracklets(tracklets)
    return {c: tracklets[c].to_numpy(dtype=np.int64) for c in _COLUMNS}


def _apply(transform: Callable | None, clip: torch.Tensor, generator: torch.Generator | None):
    if transform is None:
        return clip
    if getattr(transform, "accepts_generator", False):
        return transform(clip, generator=generator)
    if generator is None:
        return transform(clip)
    # any other callable (e.g. a v2.Compose): run it under torch's global RNG, seeded from
    # the item's generator, and put the global RNG back afterwards
    state = torch.random.get_rng_state()
    try:
        torch.random.default_generator.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        return transform(clip)
    finally:
        torch.random.set_rng_state(state)


class TrainClips(Dataset):
    """Training clips: ``(clip float T x 3 x H x W, label, camid)`` for each train tracklet.

    Args:
        tracklets: train rows of the tracklet index (``label`` >= 0).
        cache: the frame cache built from the same index.
        seq_len: frames per clip (T).
        transform: clip transform; default :func:`build_train_transform` at the cache's size.
        seed: the run's seed.
    """

    def __init__(self, tracklets: pd.DataFrame, cache: FrameCache, seq_len: int = 8,
                 transform: Callable | None = None, seed: int = 0):
        cols = _columns(tracklets, cache)
        if np.any(cols["label"] < 0):
            raise ValueError("TrainClips needs train tracklets (label >= 0); got label -1 rows")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.cache = cache
        self.seq_len = int(seq_len)
        self.transform = build_train_transform(cache.height, cache.width) if transform is None else transform
        self.seed = int(seed)
        self.epoch = 0
        self.tracklet_ids = cols["tracklet_id"]
        self.labels = cols["label"]
        self.camids = cols["camid"]
        self.n_frames = cols["n_frames"]

    def __len__(self) -> int:
        return len(self.tracklet_ids)

    def set_epoch(self, epoch: int) -> None:
        """Epoch used for plain integer keys (IdentitySampler keys carry their own epoch)."""
        self.epoch = int(epoch)

    def frame_indices(self, key) -> np.ndarray:
        """The frame indices (within the tracklet) that item ``key`` samples."""
        index, rng = self._rng(key)
        return random_interval_indices(int(self.n_frames[index]), self.seq_len, rng)

    def _rng(self, key) -> tuple[int, np.random.Generator]:
        if isinstance(key, (tuple, list)):
            index, epoch, draw = (int(k) for k in key)
        else:
            index, epoch, draw = int(key), self.epoch, 0
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} tracklets")
        return index, seed_for(self.seed, epoch, draw, index)

    def __getitem__(self, key) -> tuple[torch.Tensor, int, int]:
        index, rng = self._rng(key)
        idx = random_interval_indices(int(self.n_frames[index]), self.seq_len, rng)
        clip = self.cache.read(int(self.tracklet_ids[index]), idx)
        clip = _apply(self.transform, clip, torch_generator(rng))
        return clip, int(self.labels[index]), int(self.camids[index])


class TestClips(Dataset):
    """Begin-interval test clips: ``(clip float T x 3 x H x W, pid, camid, tracklet_id)``."""

    __test__ = False  # not a pytest test class

    def __init__(self, tracklets: pd.DataFrame, cache: FrameCache, seq_len: int = 8,
                 transform: Callable | None = None):
        cols = _columns(tracklets, cache)
        self.cache = cache
        self.seq_len = int(seq_len)
        self.transform = build_test_transform(cache.height, cache.width) if transform is None else transform
        self.tracklet_ids, self.pids = cols["tracklet_id"], cols["pid"]
        self.camids, self.n_frames = cols["camid"], cols["n_frames"]

    def __len__(self) -> int:
        return len(self.tracklet_ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int, int]:
        idx = begin_interval_indices(int(self.n_frames[index]), self.seq_len)
        clip = _apply(self.transform, self.cache.read(int(self.tracklet_ids[index]), idx), None)
        return clip, int(self.pids[index]), int(self.camids[index]), int(self.tracklet_ids[index])


class TestChunks(IterableDataset):
    """Dense or all-frames test clips, one bounded chunk of one tracklet at a time.

    Yields ``(clips, tracklet_id)``:

    - ``mode="dense"``: ``clips`` is ``k x T x 3 x H x W`` with ``k <= clips_per_chunk``, the
      tracklet's dense clips (:func:`~psta.data.sampling.dense_clips`) in order, at most
      ``max_clips`` of them (a window of consecutive clips whose start is drawn from
      ``(seed, tracklet_id)``, so it does not depend on workers or order); average the
      features of all clips of a tracklet.
    - ``mode="all"``: ``clips`` is ``1 x L x 3 x H x W``, consecutive frames, ``L <=
      frames_per_chunk`` (the last chunk may be shorter).

    With DataLoader workers, tracklets are dealt round-robin to workers (all chunks of a
    tracklet come from one worker, in order); ``rank`` / ``world_size`` shard them across
    processes the same way. ``len()`` is the number of chunks this shard yields.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, tracklets: pd.DataFrame, cache: FrameCache, seq_len: int = 8,
                 mode: str = "dense", transform: Callable | None = None,
                 clips_per_chunk: int = 16, frames_per_chunk: int = 128,
                 max_clips: int = MAX_DENSE_CLIPS, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        if mode not in ("dense", "all"):
            raise ValueError(f"mode must be 'dense' or 'all', got {mode!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got {rank}, {world_size}")
        cols = _columns(tracklets, cache)
        self.cache, self.seq_len, self.mode = cache, int(seq_len), mode
        self.transform = build_test_transform(cache.height, cache.width) if transform is None else transform
        self.clips_per_chunk, self.frames_per_chunk = int(clips_per_chunk), int(frames_per_chunk)
        self.max_clips, self.seed = int(max_clips), int(seed)
        self.rank, self.world_size = rank, world_size
        self.tracklet_ids, self.n_frames = cols["tracklet_id"], cols["n_frames"]

    def _chunk_count(self, n: int) -> int:
        if self.mode == "dense":
            return math.ceil(num_dense_clips(n, self.seq_len, self.max_clips) / self.clips_per_chunk)
        return math.ceil(n / self.frames_per_chunk)

    def _mine(self) -> np.ndarray:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        return np.arange(len(self.tracklet_ids))[self.rank::self.world_size][wid::nw]

    def __len__(self) -> int:
        positions = np.arange(len(self.tracklet_ids))[self.rank::self.world_size]
        return int(sum(self._chunk_count(int(self.n_frames[i])) for i in positions))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        T = self.seq_len
        for i in self._mine().tolist():
            tid, n = int(self.tracklet_ids[i]), int(self.n_frames[i])
            if self.mode == "dense":
                for clip_idx in dense_clips(n, T, self.clips_per_chunk, self.max_clips,
                                            seed=(self.seed, tid)):
                    k = len(clip_idx)
                    # time-major order: runs of k consecutive frames, read in one go each
                    frames = self.cache.read(tid, clip_idx.T.reshape(-1))
                    frames = _apply(self.transform, frames, None)
                    frames = frames.reshape(T, k, *frames.shape[1:]).transpose(0, 1)
                    yield frames.contiguous(), tid
            else:
                for idx in all_frames_chunks(n, self.frames_per_chunk):
                    frames = _apply(self.transform, self.cache.read(tid, idx), None)
                    yield frames.unsqueeze(0), tid
