"""The MARS layout: frame names, the identity field, track numbering and the ``info/`` files.

One definition for both sides: :mod:`psta.data.mars` reads these files, the synthetic
generator (:mod:`psta.data.synthetic`) and the video ingestion (:mod:`psta.data.videos`) write
them. ::

    MARS/
      bbox_train/<PPPP>/<PPPPCcTttttFfff>.jpg
      bbox_test/<PPPP>/...                     (PPPP = 0000 distractors, 00-1 junk)
      info/train_name.txt, info/test_name.txt  one frame file name per line
      info/tracks_train_info.mat               track_train_info  N x 4 [start, end, pid, camera]
      info/tracks_test_info.mat                track_test_info   (1-based inclusive line numbers)
      info/query_IDX.mat                       query_IDX         1-based rows of track_test_info

A frame name ``PPPPCcTttttFfff.jpg`` is the identity (4 digits, ``00-1`` for junk), the camera
(one digit), the tracklet's number within its identity and camera (4 digits) and the frame's
1-based number within the tracklet (3 digits). Names are handled as rows of uint8 ASCII
matrices, never as one Python string per frame (full MARS has 1.19 M of them).
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import scipy.io

__all__ = [
    "INFO_FILES",
    "JUNK_FIELD",
    "MAX_CAMERAS",
    "MAX_FRAMES_PER_TRACKLET",
    "MAX_PID",
    "MAX_TRACKLETS_PER_CAMERA",
    "NAME_LEN",
    "SPLIT_FOLDERS",
    "digits",
    "frame_names",
    "identity_field",
    "savemat_deterministic",
    "track_numbers",
    "tracklet_files",
    "valid_frame_names",
    "write_mars_info",
]

NAME_LEN = 19                    # PPPPCcTttttFfff.jpg
MAX_CAMERAS = 9                  # one camera digit
MAX_PID = 9999                   # four identity digits
MAX_TRACKLETS_PER_CAMERA = 9999  # four tracklet digits per (pid, camera)
MAX_FRAMES_PER_TRACKLET = 999    # three frame digits
JUNK_FIELD = b"00-1"             # the identity field of pid -1

#: info file -> the variable it must hold (None for the name lists)
INFO_FILES = {
    "train_name.txt": None,
    "test_name.txt": None,
    "tracks_train_info.mat": "track_train_info",
    "tracks_test_info.mat": "track_test_info",
    "query_IDX.mat": "query_IDX",
}
#: split of the info files -> its image folder
SPLIT_FOLDERS = {"train": "bbox_train", "test": "bbox_test"}

_MAT_HEADER = b"MATLAB 5.0 MAT-file, Platform: posix, Created by: psta.data.synthetic"


def digits(values: np.ndarray, width: int) -> np.ndarray:
    """Zero-padded decimal digits of non-negative ints as an (n, width) uint8 ASCII matrix."""
    values = np.asarray(values, np.int64)
    pows = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    return ((values[:, None] // pows[None, :]) % 10 + 48).astype(np.uint8)


def identity_field(pid: np.ndarray) -> np.ndarray:
    """The 4-character identity field of each pid as (n, 4) uint8: ``0000``..``9999``, ``00-1``
    for -1; any other pid gets four NUL bytes, which match no frame name."""
    pid = np.asarray(pid, np.int64)
    out = digits(np.clip(pid, 0, MAX_PID), 4)
    out[pid == -1] = np.frombuffer(JUNK_FIELD, np.uint8)
    out[(pid < -1) | (pid > MAX_PID)] = 0
    return out


def valid_frame_names(mat: np.ndarray, len_ok: np.ndarray) -> np.ndarray:
    """Vectorised ``^(\\d{4}|00-1)C\\dT\\d{4}F\\d{3}\\.jpg$`` over the rows of an (n, 19) name
    matrix; ``len_ok`` marks the rows whose line had exactly 19 characters."""
    def digit(col: int) -> np.ndarray:
        return (mat[:, col] - np.uint8(48)) < 10          # uint8 wraps below '0'

    ident = digit(0) & digit(1) & digit(2) & digit(3)
    ident |= (mat[:, 0:4] == np.frombuffer(JUNK_FIELD, np.uint8)).all(1)
    ok = len_ok & ident
    for col, ch in ((4, "C"), (6, "T"), (11, "F"), (15, "."), (16, "j"), (17, "p"), (18, "g")):
        ok &= mat[:, col] == ord(ch)
    for col in (5, 7, 8, 9, 10, 12, 13, 14):
        ok &= digit(col)
    return ok


def frame_names(pid, cam, tnum, length) -> tuple[np.ndarray, np.ndarray]:
    """All frame names of the given tracklets, vectorised.

    Returns (lines, starts): ``lines`` an (n_frames, 20) uint8 matrix of
    ``PPPPCcTttttFfff.jpg\\n``, ``starts`` the 0-based first line of each tracklet.
    """
    length = np.asarray(length, np.int64)
    starts = np.zeros(len(length), np.int64)
    np.cumsum(length[:-1], out=starts[1:])
    tr = np.repeat(np.arange(len(length)), length)
    fnum = np.arange(len(tr), dtype=np.int64) - starts[tr] + 1
    lines = np.empty((len(tr), NAME_LEN + 1), np.uint8)
    lines[:, 0:4] = identity_field(pid)[tr]
    lines[:, 4] = ord("C")
    lines[:, 5] = (np.asarray(cam, np.int64)[tr] + 48).astype(np.uint8)
    lines[:, 6] = ord("T")
    lines[:, 7:11] = digits(np.asarray(tnum), 4)[tr]
    lines[:, 11] = ord("F")
    lines[:, 12:15] = digits(fnum, 3)
    lines[:, 15:19] = np.frombuffer(b".jpg", np.uint8)
    lines[:, 19] = ord("\n")
    return lines, starts


def track_numbers(pid: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """1-based running number of each tracklet within its (pid, camera), in array order."""
    key = np.asarray(pid, np.int64) * 100 + np.asarray(cam, np.int64)
    order = np.argsort(key, kind="stable")
    k = key[order]
    first = np.r_[True, k[1:] != k[:-1]]
    grp_start = np.maximum.accumulate(np.where(first, np.arange(len(k)), 0))
    out = np.empty(len(k), np.int64)
    out[order] = np.arange(len(k)) - grp_start + 1
    return out


def savemat_deterministic(path: str | os.PathLike, variables: dict) -> None:
    """``scipy.io.savemat`` with a fixed header text (no creation date): same data, same bytes."""
    buf = io.BytesIO()
    scipy.io.savemat(buf, variables, do_compression=False, oned_as="row")
    data = bytearray(buf.getvalue())
    data[:116] = _MAT_HEADER.ljust(116, b" ")
    Path(path).write_bytes(bytes(data))


def write_mars_info(root: Path, train: dict, test: dict, query_mask: np.ndarray) -> dict:
    """Write ``root/info/`` for tracklets given as dicts of equal-length arrays (``pid``,
    ``cam`` 1-based, ``tnum`` from :func:`track_numbers`, ``length``; other keys ride along).

    Rows are sorted by name (pid, camera, tracklet number) as in the published files; the .mat
    files hold float64 as MATLAB writes them. Returns per split (``"train"``, ``"test"``) the
    input arrays in that sorted order, plus ``query`` (test), ``lines`` and ``starts`` (see
    :func:`frame_names`).
    """
    info = Path(root) / "info"
    info.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, tr in (("train", train), ("test", test)):
        order = np.lexsort((tr["tnum"], tr["cam"], tr["pid"]))
        s = {k: np.asarray(v)[order] for k, v in tr.items()}
        if split == "test":
            s["query"] = np.asarray(query_mask)[order]
        lines, starts = frame_names(s["pid"], s["cam"], s["tnum"], s["length"])
        (info / f"{split}_name.txt").write_bytes(lines.tobytes())
        mat = np.stack([starts + 1, starts + s["length"], s["pid"], s["cam"]], axis=1).astype(np.float64)
        savemat_deterministic(info / f"tracks_{split}_info.mat", {f"track_{split}_info": mat})
        s["lines"], s["starts"] = lines, starts
        out[split] = s
    qidx = np.flatnonzero(out["test"]["query"]) + 1
    savemat_deterministic(info / "query_IDX.mat", {"query_IDX": qidx.astype(np.float64)[None, :]})
    return out


def tracklet_files(written: dict, split: str) -> list[tuple[str, list[str]]]:
    """Where the frames of each tracklet of ``split`` go, in the sorted row order of
    :func:`write_mars_info`'s result ``written``: (identity folder relative to the root, e.g.
    ``bbox_train/0065``, the tracklet's frame file names)."""
    s = written[split]
    names = s["lines"][:, :NAME_LEN].copy().view(f"S{NAME_LEN}").ravel().astype(f"U{NAME_LEN}")
    folder = SPLIT_FOLDERS[split]
    out = []
    for start, n in zip(s["starts"].tolist(), s["length"].tolist(), strict=True):
        out.append((f"{folder}/{names[start][:4]}", names[start:start + n].tolist()))
    return out
