"""Reader for DukeMTMC-VideoReID (Wu et al., CVPR 2018) exactly as published.

::

    DukeMTMC-VideoReID/
      train/<pid>/<tracklet>/<frame>.jpg
      query/<pid>/<tracklet>/<frame>.jpg
      gallery/<pid>/<tracklet>/<frame>.jpg     (already holds the query tracklets)

Frame names come in two styles: ``0001_C6_F0099_X30823.jpg`` (new) and
``0001C6F0099X30823.jpg`` (old): identity, camera, frame index in the tracklet (some tracklets
start at F0002) and frame index in the camera video. Frames are ordered by F (then X), never
by a loop over F0001.. that would miss tracklets starting at F0002.

The folders are listed (``os.scandir``) but no JPEG is opened; names are parsed vectorised with
pyarrow compute. Gallery tracklets whose identity has no query are flagged ``distractor``
(the 408 distractor identities of the release).

The dataset was withdrawn by its authors in 2019: the project reads a copy the user already
has and never ships it.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from psta.data.raw import SPLITS, RawTracklets, make_tracklet_frame
from psta.errors import DatasetError

__all__ = ["read_duke", "DUKE_NAME_RE"]

#: both file-name styles; camera is a single digit (character 6 / character 5)
DUKE_NAME_RE = (r"^(?P<pid>\d{4})(?:_C(?P<cam_new>\d)_F(?P<f_new>\d+)_X(?P<x_new>\d+)"
                r"|C(?P<cam_old>\d)F(?P<f_old>\d+)X(?P<x_old>\d+))\.jpg$")


def _subdirs(path: Path) -> list[os.DirEntry]:
    with os.scandir(path) as it:
        return sorted((e for e in it if not e.name.startswith(".") and e.is_dir()), key=lambda e: e.name)


def _list_split(root: Path, split: str):
    """(tracklet rows, flat frame names, frames per tracklet) of one split folder."""
    sdir = root / split
    if not sdir.is_dir():
        raise DatasetError(
            f"DukeMTMC-VideoReID split folder {split}/ is missing under {root}; the root must hold "
            f"train/, query/ and gallery/ (each <pid>/<tracklet>/<frame>.jpg)")
    rows, names, counts = [], [], []
    for pdir in _subdirs(sdir):
        if not pdir.name.isdigit():
            raise DatasetError(f"{split}/{pdir.name} is not an identity folder (expected digits "
                               f"like 0001); remove it from {sdir}")
        pid = int(pdir.name)
        for tdir in _subdirs(Path(pdir.path)):
            with os.scandir(tdir.path) as it:
                files = [e.name for e in it if e.name.endswith(".jpg") and not e.name.startswith(".")]
            if not files:
                raise DatasetError(f"tracklet folder {split}/{pdir.name}/{tdir.name} holds no .jpg "
                                   f"frames; restore it from the release or remove the folder")
            rows.append((pid, pdir.name, tdir.name))
            names.extend(files)
            counts.append(len(files))
    if not rows:
        raise DatasetError(f"split '{split}' is empty: {sdir} holds no <pid>/<tracklet>/ folders "
                           f"with frames")
    return rows, names, counts


def read_duke(root: str | os.PathLike) -> RawTracklets:
    """Read DukeMTMC-VideoReID tracklet metadata from ``root`` (folders listed, JPEGs untouched).

    Raises :class:`DatasetError` naming the path and the fix for: a missing root or split
    folder, an empty split or tracklet folder, an unparsable frame name, and a tracklet whose
    frames mix identities or cameras.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(
            f"DukeMTMC-VideoReID root {root} does not exist or is not a directory. Set data.root to "
            f"the folder holding train/, query/ and gallery/, or use the synthetic demo dataset "
            f"(psta.data.synthetic).")
    all_rows, all_names, all_counts, all_split = [], [], [], []
    for split in SPLITS:
        rows, names, counts = _list_split(root, split)
        all_rows += rows
        all_names += names
        all_counts += counts
        all_split += [split] * len(rows)

    n_tr = len(all_rows)
    counts = np.asarray(all_counts, np.int64)
    tr_of = np.repeat(np.arange(n_tr), counts)
    prefix = np.array([f"{s}/{pf}/{tf}" for s, (_, pf, tf) in zip(all_split, all_rows)], dtype=object)
    names = pa.array(all_names, pa.string())
    del all_names

    m = pc.extract_regex(names, DUKE_NAME_RE)
    valid = m.is_valid().to_numpy(zero_copy_only=False)
    if not valid.all():
        i = int(np.flatnonzero(~valid)[0])
        raise DatasetError(
            f"frame {prefix[tr_of[i]]}/{names[i].as_py()} has an unparsable name; expected "
            f"0001_C6_F0099_X30823.jpg or 0001C6F0099X30823.jpg. Rename or remove the file")
    new = pc.not_equal(m.field("cam_new"), "")

    def num(a: str, b: str) -> np.ndarray:  # the field of whichever style the name uses
        return pc.cast(pc.if_else(new, m.field(a), m.field(b)), pa.int64()).to_numpy()

    fpid = pc.cast(m.field("pid"), pa.int64()).to_numpy()
    cam, fidx, xidx = num("cam_new", "cam_old"), num("f_new", "f_old"), num("x_new", "x_old")

    pid = np.array([r[0] for r in all_rows], np.int64)
    first = np.zeros(n_tr, np.int64)
    np.cumsum(counts[:-1], out=first[1:])
    tcam = cam[first]
    bad = (fpid != pid[tr_of]) | (cam != tcam[tr_of])
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        t = int(tr_of[i])
        what = (f"identity {fpid[i]:04d} in identity folder {pid[t]:04d}" if fpid[i] != pid[t]
                else f"camera {cam[i]} while {names[int(first[t])].as_py()} has camera {tcam[t]}")
        raise DatasetError(
            f"tracklet {prefix[t]} mixes identities or cameras: frame {names[i].as_py()} has {what}. "
            f"A tracklet holds one identity seen by one camera; move the frame to its own folder")
    if (tcam < 1).any():
        t = int(np.flatnonzero(tcam < 1)[0])
        raise DatasetError(f"tracklet {prefix[t]} has camera 0; DukeMTMC cameras are 1..8")

    order = np.lexsort((xidx, fidx, tr_of))
    names_sorted = names.take(pa.array(order))
    paths = pc.binary_join_element_wise(pa.array(prefix[tr_of], pa.string()), names_sorted, "/")

    split = np.array(all_split, dtype=object)
    qpids = np.unique(pid[split == "query"])
    row = np.zeros(n_tr, np.int64)
    for s in SPLITS:
        sel = split == s
        row[sel] = np.arange(int(sel.sum()))
    df = make_tracklet_frame(
        split=split,
        pid=pid,
        camid=tcam - 1,
        name=prefix,
        row=row,
        junk=np.zeros(n_tr, bool),
        distractor=(split == "gallery") & ~np.isin(pid, qpids),
        n_frames=counts,
    )
    return RawTracklets(dataset="duke", root=root, tracklets=df, paths=paths.cast(pa.string()))
