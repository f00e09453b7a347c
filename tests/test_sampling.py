"""Clip index samplers and the P x K identity sampler follow the reference (docs/SPEC.md)."""
from __future__ import annotations

import types
from collections import Counter

import numpy as np
import pytest

from psta.data.sampling import (
    IdentitySampler,
    all_frames_chunks,
    begin_interval_indices,
    dense_clips,
    dense_offsets,
    num_dense_clips,
    random_interval_indices,
    random_interval_stride,
)

T = 8
LENGTHS = [1, 7, 8, 15, 16, 31, 32, 63, 64, 65, 66, 500]


def expected_train_stride(n: int) -> int:
    for s in (8, 4, 2, 1):
        if n >= T * s:
            return s
    return 0


@pytest.mark.parametrize("n", LENGTHS)
def test_random_interval_rules(n):
    rng = np.random.default_rng(n)
    s = expected_train_stride(n)
    assert random_interval_stride(n, T) == s
    hi = max(n - T * s - 1, 0)  # largest allowed start
    in_window = Counter()
    starts_seen = set()
    for _ in range(400):
        idx = random_interval_indices(n, T, rng)
        assert idx.dtype == np.int64 and idx.shape == (T,)
        assert idx.min() >= 0 and idx.max() < n
        assert np.all(np.diff(idx) >= 0), "indices must be sorted"
        if s == 0:  # shorter than T: with replacement (so repeats are unavoidable), sorted
            assert len(np.unique(idx)) <= n < T
            continue
        # some start in [0, hi] puts idx[k] inside window k = [start + k*s, start + (k+1)*s)
        k = np.arange(T)
        lo_start = max(0, int(np.max(idx - (k + 1) * s + 1)))
        hi_start = min(hi, int(np.min(idx - k * s)))
        assert lo_start <= hi_start, f"n={n}: {idx} fits no window layout of stride {s}"
        if s > 1:
            assert np.all(np.diff(idx) >= 1) and np.all(np.diff(idx) <= 2 * s - 1)
        else:
            assert np.all(np.diff(idx) == 1)
        if lo_start == hi_start:
            starts_seen.add(lo_start)
            in_window.update((idx - lo_start - k * s).tolist())
    if s > 1:  # the frame inside each window is random: every position shows up
        assert set(in_window) == set(range(s)), in_window
    if s and hi == 0:
        assert starts_seen == {0}


def test_random_interval_short_tracklets_draw_with_replacement():
    rng = np.random.default_rng(0)
    assert np.array_equal(random_interval_indices(1, T, rng), np.zeros(T, dtype=np.int64))
    draws = {tuple(random_interval_indices(3, T, rng)) for _ in range(200)}
    assert len(draws) > 10  # random multisets, not one fixed pattern
    assert all(sorted(d) == list(d) and set(d) <= {0, 1, 2} for d in draws)


def test_random_interval_start_range_covers_spec_bounds():
    # n = 70, s = 8: start in [0, 70 - 64 - 1 = 5], so indices span [0, 68], never 69
    rng = np.random.default_rng(1)
    idx = np.stack([random_interval_indices(70, T, rng) for _ in range(3000)])
    assert idx.min() == 0 and idx.max() == 68


@pytest.mark.parametrize("n, stride", [(8, 1), (14, 1), (15, 2), (16, 2), (28, 2), (29, 4),
                                       (56, 4), (57, 8), (63, 8), (64, 8), (500, 8)])
def test_begin_interval(n, stride):
    assert np.array_equal(begin_interval_indices(n, T), stride * np.arange(T))


# exact indices, T = 8: shorter tracklets repeat their frames cyclically (the reference's order)
BEGIN_EXPECTED = {
    1: [0, 0, 0, 0, 0, 0, 0, 0],
    2: [0, 1, 0, 1, 0, 1, 0, 1],
    3: [0, 1, 2, 0, 1, 2, 0, 1],
    4: [0, 1, 2, 3, 0, 1, 2, 3],
    5: [0, 1, 2, 3, 4, 0, 1, 2],
    6: [0, 1, 2, 3, 4, 5, 0, 1],
    7: [0, 1, 2, 3, 4, 5, 6, 0],
    8: [0, 1, 2, 3, 4, 5, 6, 7],
    9: [0, 1, 2, 3, 4, 5, 6, 7],
    10: [0, 1, 2, 3, 4, 5, 6, 7],
}


@pytest.mark.parametrize("n", sorted(BEGIN_EXPECTED))
def test_begin_interval_exact_for_short_tracklets(n):
    assert begin_interval_indices(n, T).tolist() == BEGIN_EXPECTED[n]


@pytest.mark.parametrize("n", sorted(BEGIN_EXPECTED))
def test_dense_exact_for_short_tracklets(n):
    clips = np.concatenate(list(dense_clips(n, T)))
    # n < T: the begin clip (cyclic); T <= n < 2T: stride 1, the one clip 0..7
    assert clips.tolist() == [BEGIN_EXPECTED[n]]


@pytest.mark.parametrize("n", LENGTHS)
def test_dense_clips(n):
    chunks = list(dense_clips(n, T, clips_per_chunk=5))
    assert all(c.ndim == 2 and c.shape[1] == T and 1 <= len(c) <= 5 for c in chunks)
    clips = np.concatenate(chunks)
    assert len(clips) == num_dense_clips(n, T)
    if n < T:
        assert np.array_equal(clips, begin_interval_indices(n, T)[None])
        return
    s = n // T
    assert len(clips) == s
    for o, clip in enumerate(clips):  # offset o, stride n // T
        assert np.array_equal(clip, o + s * np.arange(T))
    # the clips cover frames 0 .. s*T - 1, each exactly once
    assert np.array_equal(np.sort(clips.ravel()), np.arange(s * T))


def test_dense_keeps_a_seeded_window_of_200_consecutive_clips():
    n, s = 2000, 2000 // T  # 250 clips of stride 250
    clips = np.concatenate(list(dense_clips(n, T, clips_per_chunk=16, seed=(7, 3))))
    assert len(clips) == 200 == num_dense_clips(n, T)
    start = int(clips[0, 0])
    assert 0 <= start <= s - 200
    assert np.array_equal(clips, (start + np.arange(200))[:, None] + s * np.arange(T)[None])
    again = np.concatenate(list(dense_clips(n, T, clips_per_chunk=5, seed=(7, 3))))
    assert np.array_equal(again, clips)  # the same window for the same seed, whatever the chunks
    starts = {int(next(dense_clips(n, T, seed=(7, t)))[0, 0]) for t in range(20)}
    assert len(starts) > 5  # other tracklets (seeds) get other windows
    assert list(dense_offsets(n, T, max_clips=0)) == list(range(s))  # 0: no limit
    assert num_dense_clips(n, T, max_clips=0) == s


def test_dense_and_all_frames_are_bounded_generators():
    n = 9000
    gen = dense_clips(n, T, clips_per_chunk=16, max_clips=0)
    assert isinstance(gen, types.GeneratorType)
    sizes = [len(c) for c in gen]
    assert max(sizes) == 16 and sum(sizes) == n // T
    gen = all_frames_chunks(n, 128)
    assert isinstance(gen, types.GeneratorType)
    chunks = list(gen)
    assert max(len(c) for c in chunks) == 128
    assert np.array_equal(np.concatenate(chunks), np.arange(n))
    assert [c.tolist() for c in all_frames_chunks(3, 128)] == [[0, 1, 2]]


def _labels():
    # identity i has counts[i] tracklets: several with fewer than K = 4
    counts = [1, 2, 3, 4, 5, 9, 1, 6, 2, 7, 4, 3, 12, 5, 1, 8, 2]
    return np.repeat(np.arange(len(counts)), counts)[np.random.default_rng(0).permutation(sum(counts))]


def test_identity_sampler_pk_batches():
    labels = _labels()
    members = {pid: set(np.flatnonzero(labels == pid).tolist()) for pid in np.unique(labels)}
    sampler = IdentitySampler(labels, num_instances=4, batch_size=16, seed=3)
    keys = list(sampler)
    assert len(keys) == len(sampler) == (17 // 4) * 16
    assert [k[2] for k in keys] == list(range(len(keys)))  # draw = position in the epoch
    assert all(k[1] == 0 for k in keys)
    idx = np.array([k[0] for k in keys])
    seen = []
    for batch in idx.reshape(-1, 16):
        c = Counter(labels[batch].tolist())
        assert len(c) == 4 and set(c.values()) == {4}  # P distinct identities x K each
        for pid in c:
            got = batch[labels[batch] == pid].tolist()
            assert set(got) <= members[pid]
            if len(members[pid]) >= 4:
                assert len(set(got)) == 4  # without replacement when possible
            else:
                assert set(got) <= members[pid] and len(set(got)) <= len(members[pid])
        seen.extend(c)
    assert len(seen) == len(set(seen))  # an identity appears once per epoch


def test_identity_sampler_epoch_determinism():
    labels = _labels()
    a = IdentitySampler(labels, 4, 16, seed=7, keys=False)
    b = IdentitySampler(labels, 4, 16, seed=7, keys=False)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(IdentitySampler(labels, 4, 16, seed=8, keys=False)) \
        != list(IdentitySampler(labels, 4, 16, seed=7, keys=False))
    assert all(isinstance(i, int) for i in a)


def test_identity_sampler_ddp_partition():
    labels = np.repeat(np.arange(40), 3)
    ranks = [IdentitySampler(labels, 4, 16, seed=1, rank=r, world_size=2) for r in range(2)]
    for s in ranks:
        s.set_epoch(5)
    seqs = [list(s) for s in ranks]
    assert len(seqs[0]) == len(seqs[1]) == len(ranks[0]) == (40 // 8) * 16
    draws = [k[2] for seq in seqs for k in seq]
    assert len(set(draws)) == len(draws)  # every global draw once, on one rank
    ids = [set() for _ in range(2)]
    for r in range(2):
        for _step, batch in enumerate(np.array([k[0] for k in seqs[r]]).reshape(-1, 16)):
            c = Counter(labels[batch].tolist())
            assert len(c) == 4 and set(c.values()) == {4}
            ids[r] |= set(c)
    assert not ids[0] & ids[1]  # ranks never share an identity in an epoch
    # the same global sequence, partitioned
    g = ranks[0].global_sequence()
    assert np.array_equal(g, ranks[1].global_sequence())
    assert np.array_equal(np.array([k[0] for k in seqs[1]]), g[:, 4:8].reshape(-1))


def test_identity_sampler_rejects_too_few_identities():
    with pytest.raises(ValueError, match="fewer than one global batch"):
        IdentitySampler(np.repeat(np.arange(3), 4), 4, 16)
    with pytest.raises(ValueError, match="multiple"):
        IdentitySampler(np.repeat(np.arange(8), 4), 4, 18)
