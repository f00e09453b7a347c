"""Which frames of a tracklet make a clip, and which tracklets make a batch.

Frame samplers return int64 index arrays into one tracklet (0 .. n-1), sorted in temporal
order. Rules follow the reference's (docs/SPEC.md, "Clip sampling"):

- train, "random interval" (:func:`random_interval_indices`): stride s = 8, 4, 2 or 1, the
  largest with ``n >= T * s``; a random start in ``[0, n - T*s - 1]`` (clamped at 0); one
  random frame inside each of the T windows of s frames. ``n < T``: T indices drawn with
  replacement, sorted.
- test, "begin interval" (:func:`begin_interval_indices`): ``0, s, 2s, .., (T-1)s`` with the
  largest s in 8, 4, 2, 1 such that ``n >= (T-1)*s + 1``. ``n < T``: the frames repeated
  cyclically up to T: ``arange(T) % n`` (n = 3, T = 8: 0 1 2 0 1 2 0 1). PSTA fuses frames
  pairwise, so this order (not ``0 0 0 1 1 1 2 2``) is part of the protocol.
- test, "dense" (:func:`dense_clips`): stride ``s = n // T``, clips ``o + s * arange(T)`` for
  offsets ``o = 0 .. s-1``, at most ``max_clips`` (200) of them: a window of consecutive
  offsets at a start drawn from ``numpy.random.default_rng(seed)``; ``n < T``: the one
  begin-interval clip.
- test, "all frames" (:func:`all_frames_chunks`): consecutive chunks of the whole tracklet.

The dense and all-frames samplers are generators of bounded chunks, so a 9,000-frame
tracklet never needs all its clips (or frames) in memory at once.

:class:`IdentitySampler` is the P x K identity sampler of the training recipe.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

#: candidate strides, largest first (random interval and begin interval)
STRIDES = (8, 4, 2, 1)


def _check(n: int, seq_len: int) -> None:
    if n < 1:
        raise ValueError(f"a tracklet needs at least 1 frame, got n={n}")
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")


def random_interval_stride(n: int, seq_len: int) -> int:
    """Stride of the train sampler: largest s in (8, 4, 2, 1) with ``n >= seq_len * s``; 0 if n < T."""
    for s in STRIDES:
        if n >= seq_len * s:
            return s
    return 0


def random_interval_indices(n: int, seq_len: int, rng: np.random.Generator) -> np.ndarray:
    """Train clip ("random interval"): ``seq_len`` sorted frame indices of an n-frame tracklet."""
    _check(n, seq_len)
    s = random_interval_stride(n, seq_len)
    if s == 0:  # shorter than T: with replacement, sorted
        return np.sort(rng.integers(0, n, size=seq_len)).astype(np.int64)
    high = max(n - seq_len * s - 1, 0)  # inclusive upper bound of the start
    start = int(rng.integers(0, high + 1))
    return (start + s * np.arange(seq_len, dtype=np.int64)
            + rng.integers(0, s, size=seq_len).astype(np.int64))


def begin_interval_stride(n: int, seq_len: int) -> int:
    """Stride of the test sampler: largest s in (8, 4, 2, 1) with ``n >= (T-1)*s + 1``; 0 if n < T."""
    for s in STRIDES:
        if n >= (seq_len - 1) * s + 1:
            return s
    return 0


def begin_interval_indices(n: int, seq_len: int) -> np.ndarray:
    """Test clip ("begin interval"): ``0, s, .., (T-1)s``; shorter tracklets repeat their frames
    cyclically (``0 1 2 0 1 2 0 1`` for n = 3, T = 8)."""
    _check(n, seq_len)
    s = begin_interval_stride(n, seq_len)
    if s == 0:
        return np.arange(seq_len, dtype=np.int64) % n
    return s * np.arange(seq_len, dtype=np.int64)


#: the reference keeps at most this many dense clips per tracklet
MAX_DENSE_CLIPS = 200


def dense_offsets(n: int, seq_len: int, max_clips: int = MAX_DENSE_CLIPS,
                  seed: int | Sequence[int] = 0) -> range:
    """The offsets ``o`` of the dense clips kept for an n-frame tracklet (``range(0)`` if n < T).

    All ``n // T`` of them, or, when there are more than ``max_clips`` (> 0), a window of
    ``max_clips`` consecutive ones starting at ``numpy.random.default_rng(seed).integers(0,
    n // T - max_clips + 1)``: the same window for the same seed.
    """
    _check(n, seq_len)
    if max_clips < 0:
        raise ValueError(f"max_clips must be >= 0 (0: no limit), got {max_clips}")
    s = n // seq_len
    if max_clips == 0 or s <= max_clips:
        return range(s)
    start = int(np.random.default_rng(seed).integers(0, s - max_clips + 1))
    return range(start, start + max_clips)


def num_dense_clips(n: int, seq_len: int, max_clips: int = MAX_DENSE_CLIPS) -> int:
    """How many clips :func:`dense_clips` yields for an n-frame tracklet."""
    _check(n, seq_len)
    s = n // seq_len
    return max(s if max_clips == 0 else min(s, max_clips), 1)


def dense_clips(n: int, seq_len: int, clips_per_chunk: int = 16, max_clips: int = MAX_DENSE_CLIPS,
                seed: int | Sequence[int] = 0) -> Iterator[np.ndarray]:
    """The dense test clips, as int64 arrays of shape ``(k, seq_len)`` with ``k <= clips_per_chunk``.

    Stride ``s = n // T``; clip ``o`` is ``o + s * arange(T)`` for the offsets of
    :func:`dense_offsets` (without a limit the clips cover frames ``0 .. s*T - 1``, each exactly
    once). ``n < T``: one clip, the begin-interval one (the frames repeated cyclically up to T).
    """
    _check(n, seq_len)
    if clips_per_chunk < 1:
        raise ValueError(f"clips_per_chunk must be >= 1, got {clips_per_chunk}")
    kept = dense_offsets(n, seq_len, max_clips, seed)
    if len(kept) == 0:
        yield begin_interval_indices(n, seq_len)[None, :]
        return
    steps = (n // seq_len) * np.arange(seq_len, dtype=np.int64)
    for o in range(kept.start, kept.stop, clips_per_chunk):
        offsets = np.arange(o, min(o + clips_per_chunk, kept.stop), dtype=np.int64)
        yield offsets[:, None] + steps[None, :]


def all_frames_chunks(n: int, chunk: int) -> Iterator[np.ndarray]:
    """All frames of the tracklet in order, as consecutive int64 chunks of at most ``chunk``."""
    _check(n, 1)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    for a in range(0, n, chunk):
        yield np.arange(a, min(a + chunk, n), dtype=np.int64)


class IdentitySampler(Sampler):
    """P identities x K tracklets per batch (the identity sampler of the recipe).

    One epoch visits every identity once, in a random order: for each identity, K of its
    tracklets are drawn (without replacement if it has at least K, else with replacement);
    consecutive groups of P identities form a batch of ``batch_size = P * K`` items. Use it
    with ``DataLoader(dataset, batch_size=sampler.batch_size, sampler=sampler)``; the
    sampler's length is a whole number of batches (the last incomplete batch is dropped).

    Determinism: the sequence is a function of ``(seed, epoch)`` only; call
    :meth:`set_epoch` before each epoch.

    DDP: every rank builds the same global sequence; global step b holds ``P * world_size``
    distinct identities, and rank r takes identities ``r*P .. (r+1)*P - 1`` of it. So within
    an epoch ranks never share an identity, and each rank still gets full K-groups (what
    batch-hard triplet mining needs on every rank).

    With ``keys=True`` (the default) it yields ``(index, epoch, draw)`` tuples, where
    ``draw`` is the item's position in the global epoch sequence: :class:`~psta.data.
    datasets.TrainClips` seeds each clip's frame choice and augmentation from it, so two
    draws of the same tracklet in one epoch differ and the result does not depend on the
    number of DataLoader workers. ``keys=False`` yields plain dataset indices.
    """

    def __init__(self, labels: Sequence[int] | np.ndarray, num_instances: int = 4,
                 batch_size: int = 32, seed: int = 0, rank: int = 0, world_size: int = 1,
                 keys: bool = True):
        labels = np.asarray(labels, dtype=np.int64)
        if labels.ndim != 1 or len(labels) == 0:
            raise ValueError("labels must be a non-empty 1-d sequence of identity labels")
        if num_instances < 1 or batch_size % num_instances != 0:
            raise ValueError(f"batch_size ({batch_size}) must be a positive multiple of "
                             f"num_instances ({num_instances})")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.labels = labels
        self.num_instances = num_instances
        self.batch_size = batch_size
        self.num_identities_per_batch = batch_size // num_instances
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.keys = keys
        self.epoch = 0
        self.identities = np.unique(labels)
        order = np.argsort(labels, kind="stable")
        bounds = np.searchsorted(labels[order], self.identities, side="left").tolist() + [len(labels)]
        self._members = [order[bounds[i]:bounds[i + 1]] for i in range(len(self.identities))]
        per_step = self.num_identities_per_batch * world_size
        self.steps = len(self.identities) // per_step
        if self.steps == 0:
            raise ValueError(f"{len(self.identities)} identities are fewer than one global batch "
                             f"needs ({self.num_identities_per_batch} per rank x {world_size} ranks)")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.steps * self.batch_size

    def global_sequence(self, epoch: int | None = None) -> np.ndarray:
        """The epoch's dataset indices for all ranks: ``(steps, P * world_size, K)``."""
        epoch = self.epoch if epoch is None else int(epoch)
        rng = np.random.default_rng([self.seed, epoch])
        P, K, W = self.num_identities_per_batch, self.num_instances, self.world_size
        perm = rng.permutation(len(self.identities))[: self.steps * P * W]
        groups = np.empty((len(perm), K), dtype=np.int64)
        for g, i in enumerate(perm):
            members = self._members[i]
            groups[g] = rng.choice(members, size=K, replace=len(members) < K)
        return groups.reshape(self.steps, P * W, K)

    def __iter__(self) -> Iterator:
        seq = self.global_sequence()
        P, K = self.num_identities_per_batch, self.num_instances
        epoch = self.epoch
        for step in range(self.steps):
            mine = seq[step, self.rank * P:(self.rank + 1) * P].reshape(-1)
            base = step * P * self.world_size * K + self.rank * P * K
            for j, idx in enumerate(mine.tolist()):
                yield (idx, epoch, base + j) if self.keys else idx


def seed_for(seed: int, epoch: int, draw: int, index: int) -> np.random.Generator:
    """The numpy Generator for one training item, from ``(seed, epoch, draw, index)``."""
    return np.random.default_rng([int(seed), int(epoch), int(draw), int(index)])


def torch_generator(rng: np.random.Generator) -> torch.Generator:
    """A torch Generator seeded from ``rng`` (for augmentation parameters)."""
    return torch.Generator().manual_seed(int(rng.integers(0, 2**63 - 1)))
