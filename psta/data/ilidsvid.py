"""iLIDS-VID (Wang et al., ECCV 2014) exactly as published: reader and synthetic writer.

::

    <data.root>/
      i-LIDS-VID/sequences/cam1/person001/cam1_person001_00317.png   the video data (PNG)
      i-LIDS-VID/sequences/cam2/person001/cam2_person001_01522.png
      i-LIDS-VID/images/cam1/person001/cam1_person001.png            single stills (ignored)
      train-test people splits/train_test_splits_ilidsvid.mat        'ls_set' 10 x 300

300 people, each seen once by each of two cameras (600 sequences of 23-192 frames, 64 x 128
pixels). The last field of a frame name is the original frame number, not 1-based; person
numbers run up to 319 with gaps. ``ls_set`` row k holds 1-based indices into the sorted cam1
person folders: the first half are split k's test identities, the second half train
(:mod:`psta.data.two_camera`). Query = cam1, gallery = cam2 sequences of the test identities.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from psta.atomic import atomic_dir
from psta.data.mars_layout import savemat_deterministic
from psta.data.raw import RawTracklets
from psta.data.synthetic import Painter, SyntheticConfig
from psta.data.two_camera import (
    build_two_camera,
    check_split_index,
    check_writer_config,
    ls_set_halves,
    read_ls_set,
    scan_camera,
)
from psta.errors import DatasetError

__all__ = ["CAMERAS", "SEQUENCES", "SPLIT_FILE", "generate_ilidsvid", "read_ilidsvid"]

SEQUENCES = "i-LIDS-VID/sequences"
STILLS = "i-LIDS-VID/images"
CAMERAS = ("cam1", "cam2")
SPLIT_FILE = "train-test people splits/train_test_splits_ilidsvid.mat"
RELEASE = "the iLIDS-VID release"
NUM_SPLITS = 10


def _frame_number(cam: str):
    def parse(person: str, name: str) -> int | None:
        m = re.fullmatch(rf"{cam}_{person}_(\d+)\.png", name)
        return int(m.group(1)) if m else None
    return parse


def read_ilidsvid(root: str | os.PathLike, split: int = 0) -> RawTracklets:
    """Read split ``split`` (0-based row of ``ls_set``) of iLIDS-VID at ``root`` (the folder
    holding ``i-LIDS-VID/`` and ``train-test people splits/``); only folders are listed.

    Raises :class:`DatasetError` naming the path and the fix for: a missing root, camera folder
    or split file; a split file without ``ls_set``, of the wrong shape or with bad indices; a
    person folder without frames; an unparsable frame name; a person seen by one camera only;
    ``split`` outside the split file's rows.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(
            f"iLIDS-VID root {root} does not exist or is not a directory. Set data.root to the folder "
            f"that holds i-LIDS-VID/ and 'train-test people splits/' (as the release unpacks), or use "
            f"the synthetic demo dataset (synthetic.layout: ilidsvid).")
    seqs = {cam: scan_camera(root / SEQUENCES / cam, f"{SEQUENCES}/{cam}", r"person\d+",
                             _frame_number(cam), f"person001/{cam}_person001_00317.png")
            for cam in CAMERAS}
    people = sorted(seqs["cam1"])
    for a, b in ((0, 1), (1, 0)):
        alone = sorted(set(seqs[CAMERAS[a]]) - set(seqs[CAMERAS[b]]))
        if alone:
            raise DatasetError(f"{SEQUENCES}/{CAMERAS[a]}/{alone[0]} has no sequence in {CAMERAS[b]}: every "
                               f"iLIDS-VID person is seen by both cameras; restore "
                               f"{SEQUENCES}/{CAMERAS[b]}/{alone[0]} from {RELEASE}")
    ls = read_ls_set(root / SPLIT_FILE, SPLIT_FILE, people, RELEASE)
    check_split_index(split, len(ls), SPLIT_FILE)
    test, train = ls_set_halves(ls[split])
    meta = {"split": {"index": split, "count": int(len(ls)), "source": SPLIT_FILE,
                      "train_identities": len(train), "test_identities": len(test)}}
    return build_two_camera("ilidsvid", root, SEQUENCES, CAMERAS, seqs, lambda p: int(p[6:]),
                            [people[i] for i in train], [people[i] for i in test], meta)


# ------------------------------------------------------------------------------ synthetic
def _person_numbers(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` sorted person numbers with gaps, as the release's 300 numbered up to 319."""
    gaps = max(1, round(n * 19 / 300))
    drop = rng.choice(np.arange(2, n + gaps), gaps, replace=False)   # interior: real gaps
    return np.setdiff1d(np.arange(1, n + gaps + 1), drop)


def _split_counts(frames: dict, people: list[str], row: np.ndarray) -> dict:
    test, train = ls_set_halves(row)

    def counts(idx, cams):
        return {"tracklets": len(idx) * len(cams), "identities": len(idx),
                "frames": int(sum(frames[cam][people[i]] for i in idx for cam in cams))}
    return {"train": counts(train, CAMERAS), "query": counts(test, CAMERAS[:1]),
            "gallery": counts(test, CAMERAS[1:])}


def generate_ilidsvid(root: str | os.PathLike, cfg: SyntheticConfig | None = None, *,
                      workers: int | None = None) -> dict:
    """Write a synthetic dataset in the exact iLIDS-VID layout under ``root`` (atomically).

    ``cfg.num_train_ids + cfg.num_test_ids`` people (numbered with gaps), each with one PNG
    sequence per camera (original frame numbers, not starting at 1) and a still in
    ``i-LIDS-VID/images/``; ``ls_set`` holds 10 random splits, the first half of each row test.
    Returns what was planted: per-split counts under split 0 (``splits``) and under each split
    (``per_split``), the person numbers and the frames of every sequence.
    """
    cfg = cfg or SyntheticConfig()
    check_writer_config(cfg)
    root = Path(root)
    rng = np.random.default_rng([cfg.seed, 40, 0])
    n = cfg.num_train_ids + cfg.num_test_ids
    numbers = _person_numbers(rng, n)
    if numbers[-1] > 999:
        raise ValueError("iLIDS-VID person numbers have three digits: at most 900 people")
    people = [f"person{k:03d}" for k in numbers]
    lengths = {cam: dict(zip(people, rng.integers(cfg.min_len, cfg.max_len + 1, n).tolist())) for cam in CAMERAS}
    first = {cam: dict(zip(people, rng.integers(0, 20000, n).tolist())) for cam in CAMERAS}
    ls_set = np.stack([rng.permutation(n) + 1 for _ in range(NUM_SPLITS)]).astype(np.float64)

    painter = Painter(cfg, len(CAMERAS), stream=41, image_format="PNG")
    jobs = [(int(k), c, lengths[cam][p], len(CAMERAS) * i + c, False)
            for i, (k, p) in enumerate(zip(numbers, people)) for c, cam in enumerate(CAMERAS)]
    with atomic_dir(root) as tmp:
        for (_, c, count, serial, _), frames in zip(jobs, painter.render_many(jobs, workers)):
            cam, p = CAMERAS[c], people[serial // len(CAMERAS)]
            seq = tmp / SEQUENCES / cam / p
            seq.mkdir(parents=True)
            for f, data in zip(range(first[cam][p], first[cam][p] + count), frames):
                (seq / f"{cam}_{p}_{f:05d}.png").write_bytes(data)
            still = tmp / STILLS / cam / p
            still.mkdir(parents=True)
            (still / f"{cam}_{p}.png").write_bytes(frames[len(frames) // 2])
        (tmp / SPLIT_FILE).parent.mkdir(parents=True)
        savemat_deterministic(tmp / SPLIT_FILE, {"ls_set": ls_set})

    per_split = [_split_counts(lengths, people, row.astype(np.int64)) for row in ls_set]
    return {
        "dataset": "ilidsvid",
        "root": str(root),
        "seed": cfg.seed,
        "num_cameras": len(CAMERAS),
        "splits": per_split[0],
        "per_split": per_split,
        "person_numbers": numbers.tolist(),
        "sequence_frames": lengths,
        "stills": 2 * n,
        "files": int(sum(sum(v.values()) for v in lengths.values())) + 2 * n,
    }
