"""What iLIDS-VID and PRID-2011 share: one folder of frames per person and camera, and a
protocol of random train/test splits of the people (10 of them in the literature).

Per split, the sequences of the train identities from both cameras train; each test identity's
sequence in the first camera is a query and its sequence in the second camera the gallery, so
every query has exactly one true match. An ``ls_set`` split file (the iLIDS-VID release's
``train_test_splits_ilidsvid.mat`` and ``train_test_splits_prid.mat``) holds one row per split:
a permutation of 1-based indices into the sorted list of the people, the first half test
identities, the second half train.

Folders are listed with ``os.scandir``; no image is opened here (``check_frames`` does that).
"""
from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from psta.data.mars import read_mat_variable
from psta.data.raw import RawTracklets, make_tracklet_frame
from psta.errors import DatasetError

__all__ = [
    "build_two_camera",
    "check_split_index",
    "check_writer_config",
    "ls_set_halves",
    "read_ls_set",
    "scan_camera",
]


def _entries(path: Path, dirs: bool) -> list[str]:
    with os.scandir(path) as it:
        return sorted(e.name for e in it if not e.name.startswith(".") and e.is_dir() == dirs)


def scan_camera(cam_dir: Path, rel: str, person_re: str, frame_number: Callable[[str, str], int | None],
                example: str) -> dict[str, list[str]]:
    """Every person folder of one camera -> its frame file names in frame-number order.

    ``person_re`` matches a person folder name (e.g. ``person\\d{3}``); ``frame_number(person,
    name)`` is the frame number a file name carries, or ``None`` if the name does not parse;
    ``example`` is a good name, shown in the error for a bad one. Hidden files are skipped.
    """
    if not cam_dir.is_dir():
        raise DatasetError(f"camera folder {rel}/ is missing under {cam_dir.parent}; restore it "
                           f"from the dataset release")
    people = {}
    for person in _entries(cam_dir, dirs=True):
        if not re.fullmatch(person_re, person):
            raise DatasetError(f"{rel}/{person} is not a person folder (expected a name like "
                               f"{example.split('/')[0]}); move it out of {cam_dir}")
        names = _entries(cam_dir / person, dirs=False)
        if not names:
            raise DatasetError(f"person folder {rel}/{person} holds no frames; restore it from the "
                               f"dataset release or remove the folder")
        numbers = []
        for name in names:
            n = frame_number(person, name)
            if n is None:
                raise DatasetError(f"frame {rel}/{person}/{name} has an unparsable name (expected "
                                   f"{example.split('/')[-1]} in {rel}/{example.split('/')[0]}); "
                                   f"rename or remove the file")
            numbers.append(n)
        people[person] = [names[i] for i in np.argsort(numbers, kind="stable")]
    if not people:
        raise DatasetError(f"camera folder {rel}/ holds no person folders; restore it from the "
                           f"dataset release")
    return people


def read_ls_set(path: Path, rel: str, people: Sequence[str], release: str) -> np.ndarray:
    """The ``ls_set`` variable of a split file: ``splits x len(people)``, each row a permutation
    of 1..len(people), checked; int64."""
    if not path.is_file():
        raise DatasetError(f"split file {rel} is missing; restore it from {release}")
    ls = read_mat_variable(path, "ls_set", rel, release)
    n = len(people)
    if ls.size == 0:
        raise DatasetError(f"split file {rel}: variable 'ls_set' is empty; restore it from {release}")
    if ls.ndim != 2 or ls.shape[1] != n:
        raise DatasetError(f"variable 'ls_set' in {rel} has shape {ls.shape}; expected splits x {n}, "
                           f"one column per person ({n} people found). The split file and the "
                           f"sequences come from different releases; restore both from {release}")
    bad = (ls < 1) | (ls > n)
    if bad.any():
        r, c = (int(v) for v in np.argwhere(bad)[0])
        raise DatasetError(f"entry (row {r + 1}, column {c + 1}) of 'ls_set' in {rel} is {ls[r, c]}, "
                           f"outside 1..{n} (1-based indices into the sorted people); restore the "
                           f"file from {release}")
    for r, row in enumerate(ls):
        counts = np.bincount(row, minlength=n + 1)
        if (counts > 1).any():
            raise DatasetError(f"row {r + 1} of 'ls_set' in {rel} lists person index "
                               f"{int(np.argmax(counts > 1))} twice; restore the file from {release}")
    return ls


def check_split_index(split: int, count: int, where: str) -> None:
    if not 0 <= split < count:
        raise DatasetError(f"data.split={split} is outside the {count} splits of {where}; choose "
                           f"0..{count - 1}")


def ls_set_halves(row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(test, train) 0-based people indices of one ``ls_set`` row: first half test, then train."""
    half = len(row) // 2
    return np.sort(row[:half] - 1), np.sort(row[half:] - 1)


def build_two_camera(dataset: str, root: Path, base: str, cams: tuple[str, str],
                     seqs: dict[str, dict[str, list[str]]], pid_of: Callable[[str], int],
                     train: Sequence[str], test: Sequence[str], meta: dict) -> RawTracklets:
    """The tracklets of one split: ``train`` people in both cameras, ``test`` people's
    ``cams[0]`` sequence as the query and ``cams[1]`` sequence as the gallery. ``base`` is the
    folder of the camera folders, relative to ``root``."""
    for split, people in (("train", train), ("query", test)):
        if not people:
            raise DatasetError(f"split '{split}' is empty: {meta.get('split', {}).get('source', 'the split')} "
                               f"gives no {'train' if split == 'train' else 'test'} identities")
    rows = [("train", cam, p) for p in sorted(train) for cam in cams]
    rows += [("query", cams[0], p) for p in sorted(test)] + [("gallery", cams[1], p) for p in sorted(test)]
    frames = [seqs[cam][p] for _, cam, p in rows]
    row_in_split, seen = [], Counter()
    for split, _, _ in rows:
        row_in_split.append(seen[split])
        seen[split] += 1
    tracklets = make_tracklet_frame(
        split=[r[0] for r in rows],
        pid=[pid_of(p) for _, _, p in rows],
        camid=[cams.index(cam) for _, cam, _ in rows],
        name=[f"{cam}/{p}" for _, cam, p in rows],
        row=row_in_split,
        junk=np.zeros(len(rows), bool),
        distractor=np.zeros(len(rows), bool),
        n_frames=[len(f) for f in frames],
    )
    paths = pa.array([f"{base}/{cam}/{p}/{name}" for (_, cam, p), names in zip(rows, frames) for name in names],
                     pa.string())
    return RawTracklets(dataset=dataset, root=root, tracklets=tracklets, paths=paths, meta=meta)


def check_writer_config(cfg) -> None:
    """The parts of a ``SyntheticConfig`` a two-camera writer uses (identities, lengths, size)."""
    if cfg.num_train_ids < 1 or cfg.num_test_ids < 1:
        raise ValueError("need at least one train and one test identity")
    if not (1 <= cfg.min_len <= cfg.max_len):
        raise ValueError(f"need 1 <= min_len <= max_len, got {cfg.min_len}, {cfg.max_len}")
    if cfg.height < 32 or cfg.width < 16:
        raise ValueError("frames must be at least 32 x 16")
