"""Reader for MARS (Zheng et al., ECCV 2016) exactly as published.

The layout (folders, ``info/`` files, the ``PPPPCcTttttFfff.jpg`` frame names) is defined in
:mod:`psta.data.mars_layout`, shared with the writers. Only the five ``info/`` files are read;
the JPEGs are not touched (see :func:`psta.data.frame_check.check_frames`). Everything is
vectorised over the 1.19 M names on the bytes of the name lists (numpy), never a Python string
per frame. Query rows are split ``"query"``, all other test rows ``"gallery"``; junk rows
(pid -1) are kept and flagged ``junk``, pid 0 rows flagged ``distractor``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import scipy.io

from psta.data.mars_layout import (
    INFO_FILES,
    MAX_CAMERAS,
    NAME_LEN,
    SPLIT_FOLDERS,
    identity_field,
    valid_frame_names,
)
from psta.data.raw import RawTracklets, make_tracklet_frame
from psta.errors import DatasetError

__all__ = ["mat_integers", "read_mars", "read_mat_variable"]


def _fail_missing_root(root: Path, what: str) -> None:
    raise DatasetError(
        f"{what} root {root} does not exist or is not a directory. Set data.root to the folder "
        f"that holds the dataset (for MARS: bbox_train/, bbox_test/ and info/), or use the "
        f"synthetic demo dataset (psta.data.synthetic)."
    )


class NameLines:
    """The lines of a MARS name list as byte ranges of the file (no Python string per line).

    ``matrix()`` gives every line as a row of an ``(n, 19)`` uint8 matrix (the fixed MARS name
    width) plus a mask of lines that have exactly that width.
    """

    def __init__(self, path: Path):
        buf = np.frombuffer(path.read_bytes(), np.uint8)
        nl = np.flatnonzero(buf == 10)
        starts = np.r_[0, nl + 1].astype(np.int64)
        ends = np.r_[nl, len(buf)].astype(np.int64)
        if len(buf) == 0 or buf[-1] == 10:       # no line after the final newline
            starts, ends = starts[:-1], ends[:-1]
        space = np.zeros(256, bool)
        space[[9, 11, 12, 13, 32]] = True        # strip \r and blanks around each name
        padded = np.r_[buf, np.uint8(10)]
        while True:
            m = (ends > starts) & space[padded[np.maximum(ends - 1, 0)]]
            if not m.any():
                break
            ends[m] -= 1
        while True:
            m = (ends > starts) & space[padded[starts]]
            if not m.any():
                break
            starts[m] += 1
        self.path, self.buf, self.starts, self.ends = path, buf, starts, ends

    def __len__(self) -> int:
        return len(self.starts)

    def text(self, i: int) -> str:
        return bytes(self.buf[self.starts[i]:self.ends[i]]).decode("utf-8", "replace")

    def matrix(self) -> tuple[np.ndarray, np.ndarray]:
        n, w = len(self), NAME_LEN
        len_ok = (self.ends - self.starts) == w
        stride = int(self.starts[1] - self.starts[0]) if n > 1 else w + 1
        if n and len_ok.all() and np.array_equal(self.starts, self.starts[0] + stride * np.arange(n)) \
                and self.starts[0] + stride * (n - 1) + w <= len(self.buf):
            # the usual file: fixed-width lines -> a strided view, no copy
            view = np.lib.stride_tricks.as_strided(self.buf[self.starts[0]:], shape=(n, w),
                                                   strides=(stride, 1), writeable=False)
            return view, len_ok
        mat = np.zeros((n, w), np.uint8)
        last = max(len(self.buf) - 1, 0)
        src = self.buf if len(self.buf) else np.zeros(1, np.uint8)
        for a in range(0, n, 65536):             # bounded memory for the index matrix
            b = min(a + 65536, n)
            idx = np.minimum(self.starts[a:b, None] + np.arange(w), last)
            mat[a:b] = src[idx]
        return mat, len_ok


def read_mat_variable(path: Path, variable: str, rel: str,
                      release: str = "the MARS release (info/ of the MARS-evaluation code)") -> np.ndarray:
    """Load ``variable`` from a .mat file as int64, accepting integer and floating arrays.

    ``release`` says where a good copy of the file comes from (named in the error messages).
    """
    try:
        mat = scipy.io.loadmat(str(path), variable_names=None)
    except NotImplementedError:
        raise DatasetError(f"{rel} is a MATLAB v7.3 (HDF5) file, which this reader does not "
                           f"support; re-save it in MATLAB with save(..., '-v7')") from None
    except Exception as e:  # scipy raises several types for corrupt files
        raise DatasetError(f"{rel} is not a readable .mat file ({type(e).__name__}: {e}); "
                           f"restore it from {release}") from None
    if variable not in mat:
        have = sorted(k for k in mat if not k.startswith("__"))
        raise DatasetError(f"{rel} has no variable '{variable}' (it holds {have}); restore the "
                           f"file from {release}")
    return mat_integers(np.asarray(mat[variable]), variable, rel)


def mat_integers(arr: np.ndarray, variable: str, rel: str) -> np.ndarray:
    """A MATLAB numeric array (integers stored as doubles, as MATLAB writes them) as int64."""
    if arr.dtype.kind not in "iuf":
        raise DatasetError(f"variable '{variable}' in {rel} has dtype {arr.dtype}; expected numbers")
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if bad.any():
            pos = np.argwhere(bad)[0]
            raise DatasetError(f"variable '{variable}' in {rel} holds a non-integer value "
                               f"{arr[tuple(pos)]!r} at (1-based) {tuple(int(p) + 1 for p in pos)}")
    return arr.astype(np.int64)


def _tracks(path: Path, variable: str, rel: str, split: str) -> np.ndarray:
    arr = read_mat_variable(path, variable, rel)
    if arr.size == 0:
        raise DatasetError(f"split '{split}' is empty: '{variable}' in {rel} has no rows")
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise DatasetError(f"variable '{variable}' in {rel} has shape {arr.shape}; expected "
                           f"N x 4 rows [start, end, pid, camera]")
    return arr


def _frames_of(tracks: np.ndarray, n_lines: int, rel_mat: str, rel_names: str) -> tuple[np.ndarray, np.ndarray]:
    """0-based line numbers of every frame of every row (row-major) and the row lengths."""
    start, end = tracks[:, 0], tracks[:, 1]
    bad = (start < 1) | (end > n_lines) | (end < start)
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        why = ("its end comes before its start" if end[r] < start[r]
               else f"{rel_names} has lines 1..{n_lines}")
        raise DatasetError(
            f"row {r + 1} of {rel_mat} (1-based) spans lines {start[r]}..{end[r]}, outside the name "
            f"list: {why}. The .mat and the name list come from different releases; restore both "
            f"from the same MARS download")
    length = end - start + 1
    first = np.zeros(len(length), np.int64)
    np.cumsum(length[:-1], out=first[1:])
    line = np.arange(int(length.sum()), dtype=np.int64) + np.repeat(start - 1 - first, length)
    _refuse_overlaps(start, end, rel_mat, rel_names)
    return line, length


def _refuse_overlaps(start: np.ndarray, end: np.ndarray, rel_mat: str, rel_names: str) -> None:
    """Two rows sharing a line would put one frame in two tracklets."""
    order = np.argsort(start, kind="stable")
    clash = np.flatnonzero(start[order[1:]] <= end[order[:-1]])
    if len(clash):
        a, b = sorted((int(order[clash[0]]), int(order[clash[0] + 1])))
        raise DatasetError(
            f"rows {a + 1} and {b + 1} of {rel_mat} (1-based) overlap: lines {start[a]}..{end[a]} "
            f"and {start[b]}..{end[b]} of {rel_names} share frames, which would put one frame in "
            f"two tracklets ({len(clash)} overlapping pair(s)). Restore {rel_mat} and {rel_names} "
            f"from the same MARS release")


def _check_frames_consistent(lines: NameLines, line: np.ndarray, length: np.ndarray, tracks: np.ndarray,
                             rel_mat: str, rel_names: str) -> np.ndarray:
    """Validate every frame name of every row; return the frames' name matrix (row-major)."""
    mat_all, len_ok = lines.matrix()
    mat = mat_all[line]
    first = np.zeros(len(length), np.int64)
    np.cumsum(length[:-1], out=first[1:])
    row_of = np.repeat(np.arange(len(length)), length)
    ok = valid_frame_names(mat, len_ok[line])
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        raise DatasetError(
            f"line {line[i] + 1} of {rel_names} ({lines.text(int(line[i]))!r}, frame of row "
            f"{row_of[i] + 1} of {rel_mat}) is not a MARS frame name PPPPCcTttttFfff.jpg; restore "
            f"{rel_names} from the MARS release")
    packed = np.zeros((len(mat), 8), np.uint8)
    packed[:, 0:6] = mat[:, 0:6]                         # identity + "C" + camera
    key = packed.view(np.uint64).ravel()
    same = key == key[first[row_of]]
    if not same.all():
        i = int(np.flatnonzero(~same)[0])
        r = int(row_of[i])
        raise DatasetError(
            f"row {r + 1} of {rel_mat} (lines {tracks[r, 0]}..{tracks[r, 1]} of {rel_names}) mixes "
            f"identities or cameras: frame {lines.text(int(line[i]))!r} (line {line[i] + 1}) "
            f"differs from the first frame {lines.text(int(line[first[r]]))!r}. A tracklet holds "
            f"one identity seen by one camera; the row range is wrong, restore {rel_mat} and "
            f"{rel_names} from the same MARS release")
    # ... and one tracklet number (the T field): a row spanning T0001 and T0002 merges two
    same = (mat[:, 6:11] == mat[first[row_of], 6:11]).all(axis=1)
    if not same.all():
        i = int(np.flatnonzero(~same)[0])
        r = int(row_of[i])
        raise DatasetError(
            f"row {r + 1} of {rel_mat} (lines {tracks[r, 0]}..{tracks[r, 1]} of {rel_names}) spans "
            f"two tracklets: frame {lines.text(int(line[i]))!r} (line {line[i] + 1}) has another "
            f"tracklet number than the first frame {lines.text(int(line[first[r]]))!r}. A row is "
            f"one tracklet; the row range is wrong, restore {rel_mat} and {rel_names} from the "
            f"same MARS release")
    # the row's pid / camera must be those its frames are named with
    head = mat[first]
    agree = (head[:, 0:4] == identity_field(tracks[:, 2])).all(1) & (head[:, 5].astype(np.int64) - 48 == tracks[:, 3])
    if not agree.all():
        r = int(np.flatnonzero(~agree)[0])
        raise DatasetError(
            f"row {r + 1} of {rel_mat} says pid {tracks[r, 2]} camera {tracks[r, 3]}, but its frames "
            f"are named {lines.text(int(line[first[r]]))!r}; restore {rel_mat} and {rel_names} from "
            f"the same MARS release")
    return mat


def _paths(folder: str, mat: np.ndarray) -> pa.Array:
    """``folder/PPPP/name`` for every row of the name matrix, built as one byte buffer."""
    pre = np.frombuffer(folder.encode() + b"/", np.uint8)
    w = len(pre) + 4 + 1 + NAME_LEN
    out = np.empty((len(mat), w), np.uint8)
    out[:, :len(pre)] = pre
    out[:, len(pre):len(pre) + 4] = mat[:, 0:4]
    out[:, len(pre) + 4] = ord("/")
    out[:, len(pre) + 5:] = mat
    offsets = np.arange(len(mat) + 1, dtype=np.int64) * w
    if offsets[-1] < 2**31:
        arr = pa.StringArray.from_buffers(len(mat), pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(out))
    else:
        arr = pa.LargeStringArray.from_buffers(len(mat), pa.py_buffer(offsets), pa.py_buffer(out))
    return arr


def read_mars(root: str | os.PathLike) -> RawTracklets:
    """Read MARS tracklet metadata from ``root`` (only ``info/``; no JPEG is opened).

    Raises :class:`DatasetError` naming the file/row and the fix for: a missing root or info
    file, a .mat without its variable, a row range outside the name list, a tracklet whose
    frames mix identities or cameras, and an empty split.
    """
    root = Path(root)
    if not root.is_dir():
        _fail_missing_root(root, "MARS")
    info = root / "info"
    for fname in INFO_FILES:
        if not (info / fname).is_file():
            raise DatasetError(
                f"MARS info file info/{fname} is missing under {root}. MARS/info/ must hold "
                f"{', '.join(INFO_FILES)} (from the MARS release / MARS-evaluation code); "
                f"copy them there")
    parts = []
    test_rows = None
    for split, folder in SPLIT_FOLDERS.items():
        rel_names, rel_mat = f"info/{split}_name.txt", f"info/tracks_{split}_info.mat"
        names = NameLines(info / f"{split}_name.txt")
        tracks = _tracks(info / f"tracks_{split}_info.mat", f"track_{split}_info", rel_mat, split)
        cam = tracks[:, 3]
        if ((cam < 1) | (cam > MAX_CAMERAS)).any():
            r = int(np.flatnonzero((cam < 1) | (cam > MAX_CAMERAS))[0])
            raise DatasetError(f"row {r + 1} of {rel_mat} has camera {cam[r]}; MARS cameras are 1..6")
        line, length = _frames_of(tracks, len(names), rel_mat, rel_names)
        mat = _check_frames_consistent(names, line, length, tracks, rel_mat, rel_names)
        first = np.zeros(len(length), np.int64)
        np.cumsum(length[:-1], out=first[1:])
        tname = mat[first, :11].copy().view("S11").ravel().astype("U11").astype(object)
        paths = _paths(folder, mat)
        parts.append((split, tracks, length, tname, paths))
        if split == "test":
            test_rows = len(tracks)

    qidx = read_mat_variable(info / "query_IDX.mat", "query_IDX", "info/query_IDX.mat").ravel()
    if qidx.size == 0:
        raise DatasetError("split 'query' is empty: query_IDX in info/query_IDX.mat lists no rows")
    bad = (qidx < 1) | (qidx > test_rows)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise DatasetError(f"entry {k + 1} of query_IDX in info/query_IDX.mat is {qidx[k]}, outside the "
                           f"{test_rows} rows of info/tracks_test_info.mat (1-based)")
    if len(np.unique(qidx)) != len(qidx):
        raise DatasetError("query_IDX in info/query_IDX.mat lists a row twice")
    is_query = np.zeros(test_rows, bool)
    is_query[qidx - 1] = True
    if is_query.all():
        raise DatasetError("split 'gallery' is empty: every row of info/tracks_test_info.mat is a query")

    (_, tr, tr_len, tr_name, tr_paths), (_, te, te_len, te_name, te_paths) = parts
    pid = np.concatenate([tr[:, 2], te[:, 2]])
    split = np.concatenate([np.full(len(tr), "train", object),
                            np.where(is_query, "query", "gallery").astype(object)])
    df = make_tracklet_frame(
        split=split,
        pid=pid,
        camid=np.concatenate([tr[:, 3], te[:, 3]]) - 1,
        name=np.concatenate([tr_name, te_name]),
        row=np.concatenate([np.arange(len(tr)), np.arange(len(te))]),
        junk=pid == -1,
        distractor=(pid == 0) & (split != "train"),
        n_frames=np.concatenate([tr_len, te_len]),
    )
    paths = pa.concat_arrays([tr_paths.cast(pa.string()), te_paths.cast(pa.string())])
    return RawTracklets(dataset="mars", root=root, tracklets=df, paths=paths)
