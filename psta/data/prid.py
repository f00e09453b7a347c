"""PRID-2011 (Hirzer et al., SCIA 2011), multi-shot, exactly as published: reader and writer.

::

    <data.root>/
      prid_2011/multi_shot/cam_a/person_0001/0001.png    frames numbered from 0001 (PNG)
      prid_2011/multi_shot/cam_b/person_0001/0001.png
      prid_2011/single_shot/...                          stills (ignored)
      splits_prid2011.json                               optional (torchreid's file)

cam_a holds 385 people and cam_b 749; only person_0001..0200 are the same people in both
cameras (higher numbers are different people in each). The video protocol keeps the 178 of
those 200 with at least 27 frames in both cameras and draws 10 random splits of 89 train /
89 test identities (:mod:`psta.data.two_camera`). Query = cam_a, gallery = cam_b.

Where the splits come from, first found wins:

1. ``splits_prid2011.json`` in ``data.root``: torchreid's format, a list of
   ``{"train": [...], "test": [...]}`` of person folder names;
2. ``data.split_file``: the ``ls_set`` (10 x 178) of ``train_test_splits_prid.mat`` from the
   iLIDS-VID release, 1-based indices into the sorted 178 people, the first half test;
3. drawn from ``data.split_seed`` (10 splits, half test), returned as ``generated_splits``
   for the ingest stage to write into its outputs (never into the dataset).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from psta.atomic import atomic_dir
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

__all__ = ["CAMERAS", "MIN_FRAMES", "MULTI_SHOT", "SPLITS_JSON", "draw_splits", "generate_prid", "read_prid"]

MULTI_SHOT = "prid_2011/multi_shot"
SINGLE_SHOT = "prid_2011/single_shot"
CAMERAS = ("cam_a", "cam_b")
SPLITS_JSON = "splits_prid2011.json"
SHARED_PEOPLE = 200      # person_0001..0200 are the same people in both cameras
MIN_FRAMES = 27          # the video protocol's minimum sequence length, in both cameras
NUM_SPLITS = 10
RELEASE = "the PRID-2011 release"


def _frame_number(person: str, name: str) -> int | None:
    m = re.fullmatch(r"(\d{4})\.png", name)
    return int(m.group(1)) if m else None


def _protocol_people(seqs: dict) -> tuple[list[str], dict]:
    """The people of the video protocol (sorted) and what was left out, by reason."""
    number = lambda p: int(p[7:])  # noqa: E731  person_0042 -> 42
    a, b = (set(seqs[c]) for c in CAMERAS)
    shared = sorted(p for p in a & b if number(p) <= SHARED_PEOPLE)
    short = [p for p in shared if min(len(seqs[c][p]) for c in CAMERAS) < MIN_FRAMES]
    people = [p for p in shared if p not in short]
    excluded = {"single_camera": {c: len(set(seqs[c]) - set(shared)) for c in CAMERAS},
                "too_short": short}
    return people, excluded


def draw_splits(people: list[str], seed: int, count: int = NUM_SPLITS) -> list[dict]:
    """``count`` random splits of ``people`` (half test, rounded down), torchreid's format."""
    rng = np.random.default_rng([seed, 50])
    out = []
    for _ in range(count):
        order = rng.permutation(len(people))
        test, train = ls_set_halves(order + 1)
        out.append({"train": [people[i] for i in train], "test": [people[i] for i in test]})
    return out


def _json_splits(path: Path, people: list[str]) -> list[dict]:
    try:
        splits = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DatasetError(f"{SPLITS_JSON} in data.root is not readable JSON ({e}); fix it or remove it "
                           f"(the splits are then drawn from data.split_seed)") from None
    if not isinstance(splits, list) or not splits or not all(
            isinstance(s, dict) and isinstance(s.get("train"), list) and isinstance(s.get("test"), list)
            for s in splits):
        raise DatasetError(f"{SPLITS_JSON} must be a non-empty list of {{\"train\": [...], \"test\": "
                           f"[...]}} of person folder names (torchreid's format); fix or remove it")
    known = set(people)
    for k, s in enumerate(splits):
        for part in ("train", "test"):
            bad = [p for p in s[part] if p not in known]
            if bad:
                raise DatasetError(
                    f"{SPLITS_JSON}: split {k} lists {bad[0]!r} in '{part}', which is not one of the "
                    f"{len(people)} people of the video protocol (person_0001..0200 in both cameras "
                    f"with >= {MIN_FRAMES} frames in each); fix the file")
        both = sorted(set(s["train"]) & set(s["test"]))
        if both:
            raise DatasetError(f"{SPLITS_JSON}: split {k} lists {both[0]!r} in both 'train' and 'test'")
    return splits


def _ls_set_splits(path: Path, people: list[str]) -> list[dict]:
    ls = read_ls_set(path, str(path), people, "the iLIDS-VID release ('train-test people splits/"
                                             "train_test_splits_prid.mat')")
    return [{"train": [people[i] for i in train], "test": [people[i] for i in test]}
            for test, train in map(ls_set_halves, ls)]


def read_prid(root: str | os.PathLike, split: int = 0, split_file: str | os.PathLike | None = None,
              split_seed: int = 0) -> RawTracklets:
    """Read split ``split`` of PRID-2011 at ``root`` (the folder holding ``prid_2011/``); the
    splits come from ``splits_prid2011.json``, else ``split_file``, else ``split_seed`` (module
    doc). Only folders are listed.

    Raises :class:`DatasetError` naming the path and the fix for: a missing root, camera folder
    or split file; a bad split file (JSON or ``ls_set``: shape, indices, unknown people); a
    person folder without frames; an unparsable frame name; ``split`` outside the splits; an
    empty split.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(
            f"PRID-2011 root {root} does not exist or is not a directory. Set data.root to the folder "
            f"that holds prid_2011/ (multi_shot/cam_a, multi_shot/cam_b), or use the synthetic demo "
            f"dataset (synthetic.layout: prid).")
    seqs = {cam: scan_camera(root / MULTI_SHOT / cam, f"{MULTI_SHOT}/{cam}", r"person_\d{4}",
                             _frame_number, "person_0001/0001.png") for cam in CAMERAS}
    people, excluded = _protocol_people(seqs)
    generated = None
    if (root / SPLITS_JSON).is_file():
        splits, source = _json_splits(root / SPLITS_JSON, people), SPLITS_JSON
    elif split_file:
        splits, source = _ls_set_splits(Path(split_file), people), f"data.split_file={split_file}"
    else:
        splits = generated = draw_splits(people, split_seed)
        source = f"drawn from data.split_seed={split_seed}"
    check_split_index(split, len(splits), source)
    chosen = splits[split]
    meta = {"split": {"index": split, "count": len(splits), "source": source,
                      "train_identities": len(chosen["train"]), "test_identities": len(chosen["test"])},
            "protocol_identities": len(people), "excluded": excluded}
    raw = build_two_camera("prid", root, MULTI_SHOT, CAMERAS, seqs, lambda p: int(p[7:]),
                           chosen["train"], chosen["test"], meta)
    raw.generated_splits = generated
    return raw


# ------------------------------------------------------------------------------ synthetic
def generate_prid(root: str | os.PathLike, cfg: SyntheticConfig | None = None, *,
                  workers: int | None = None) -> dict:
    """Write a synthetic dataset in the exact PRID-2011 multi-shot layout under ``root``.

    ``num_train_ids + num_test_ids`` people of the protocol (in both cameras, >= 27 PNG frames in
    each); a few more in both cameras with 21-26 frames in one of them (the protocol drops them);
    ``max(1, num_distractor_ids)`` people seen only by cam_a and twice as many only by cam_b,
    numbered from 201 (different people in each camera, as published); a still per person in
    ``single_shot/``. No split file (the release has none): the reader draws the splits.
    Written atomically (``root`` replaced as a whole).
    """
    cfg = cfg or SyntheticConfig()
    check_writer_config(cfg)
    root = Path(root)
    rng = np.random.default_rng([cfg.seed, 51, 0])
    n_protocol = cfg.num_train_ids + cfg.num_test_ids
    n_short = max(1, n_protocol // 8)
    if n_protocol + n_short > SHARED_PEOPLE:
        raise ValueError(f"PRID-2011 has {SHARED_PEOPLE} people in both cameras: at most "
                         f"{SHARED_PEOPLE - n_short} train + test identities")
    lo, hi = max(MIN_FRAMES, cfg.min_len), max(MIN_FRAMES + 3, cfg.max_len)
    shared = [f"person_{k:04d}" for k in range(1, n_protocol + n_short + 1)]
    short = sorted(rng.choice(shared, n_short, replace=False).tolist())
    length = {cam: {p: int(rng.integers(lo, hi + 1)) for p in shared} for cam in CAMERAS}
    for p in short:
        length[CAMERAS[int(rng.integers(2))]][p] = int(rng.integers(MIN_FRAMES - 6, MIN_FRAMES))
    n_alone = max(1, cfg.num_distractor_ids)
    for c, cam in enumerate(CAMERAS):
        for k in range(n_alone * (c + 1)):
            length[cam][f"person_{SHARED_PEOPLE + 1 + k:04d}"] = int(rng.integers(cfg.min_len, cfg.max_len + 1))

    def appearance(cam: int, person: str) -> int:      # above 200: a different person per camera
        k = int(person[7:])
        return k if k <= SHARED_PEOPLE else 10_000 * (cam + 1) + k

    names = [(c, cam, p) for c, cam in enumerate(CAMERAS) for p in length[cam]]
    jobs = [(appearance(c, p), c, length[cam][p], serial, False) for serial, (c, cam, p) in enumerate(names)]
    painter = Painter(cfg, len(CAMERAS), stream=52, image_format="PNG")
    with atomic_dir(root) as tmp:
        for (_, cam, p), frames in zip(names, painter.render_many(jobs, workers)):
            seq = tmp / MULTI_SHOT / cam / p
            seq.mkdir(parents=True)
            for f, data in enumerate(frames, start=1):
                (seq / f"{f:04d}.png").write_bytes(data)
            (tmp / SINGLE_SHOT / cam).mkdir(parents=True, exist_ok=True)
            (tmp / SINGLE_SHOT / cam / f"{p}.png").write_bytes(frames[0])

    protocol = [p for p in shared if p not in short]
    n_test = len(protocol) // 2
    return {
        "dataset": "prid",
        "root": str(root),
        "seed": cfg.seed,
        "num_cameras": len(CAMERAS),
        "splits": {"train": {"tracklets": 2 * (len(protocol) - n_test), "identities": len(protocol) - n_test},
                   "query": {"tracklets": n_test, "identities": n_test},
                   "gallery": {"tracklets": n_test, "identities": n_test}},
        "protocol_people": protocol,
        "too_short": short,
        "single_camera": {cam: n_alone * (c + 1) for c, cam in enumerate(CAMERAS)},
        "sequence_frames": length,
        "files": int(sum(sum(v.values()) for v in length.values())) + len(names),
    }
