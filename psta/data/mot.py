"""Readers for per-camera box files (MOTChallenge format) and the identity map of a camera set.

A box file ``<camera>.txt`` holds one box per line::

    frame, id, left, top, width, height[, conf[, ...]]

``frame`` is 1-based, ``id`` the track id within that camera, ``left, top, width, height`` the
box in pixels (``left, top`` = offset of the box's top-left corner from the image's). Columns
after ``conf`` (MOTChallenge's class, visibility, or x/y/z) are ignored. Fields may be separated
by commas and/or blanks; blank lines and lines starting with ``#`` are skipped.

``identities.csv`` (optional) maps per-camera tracks to global identities: a header with the
columns ``camera, track_id, identity`` (any order, more columns allowed), then one row per
track. ``camera`` is the camera's video file name, with or without its extension.

Every malformed line raises :class:`psta.errors.DatasetError` naming the file, the line and
the fix.
"""
from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from psta.errors import DatasetError

__all__ = ["MotBoxes", "read_mot_boxes", "read_identities", "IDENTITY_COLUMNS"]

#: the columns identities.csv must have
IDENTITY_COLUMNS = ("camera", "track_id", "identity")

_MOT_FORMAT = ("MOTChallenge rows are 'frame, id, left, top, width, height[, conf, ...]' with a "
               "1-based integer frame, an integer track id and a box of positive width and height")
_SPLIT = re.compile(r"[,\s]+")


@dataclass
class MotBoxes:
    """The boxes of one box file, one entry per data line (file order).

    ``conf`` is NaN where the line has no 7th column; ``line`` is the 1-based line number.
    """

    path: Path
    frame: np.ndarray    # int64, 1-based
    track: np.ndarray    # int64
    left: np.ndarray     # float64
    top: np.ndarray
    width: np.ndarray
    height: np.ndarray
    conf: np.ndarray     # float64 (NaN: absent)
    line: np.ndarray     # int64, 1-based line number in the file

    def __len__(self) -> int:
        return len(self.frame)

    def take(self, mask_or_index) -> "MotBoxes":
        return MotBoxes(self.path, *(getattr(self, f)[mask_or_index] for f in
                                     ("frame", "track", "left", "top", "width", "height", "conf", "line")))


def _integral(text: str) -> int | None:
    """``"12"`` or ``"12.0"`` -> 12; anything else -> None."""
    try:
        return int(text)
    except ValueError:
        try:
            v = float(text)
        except ValueError:
            return None
        return int(v) if math.isfinite(v) and v == int(v) else None


def read_mot_boxes(path: str | os.PathLike, display: str | None = None) -> MotBoxes:
    """Parse a MOTChallenge box file; ``display`` is the name used in error messages."""
    path = Path(path)
    name = display or str(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatasetError(f"box file {name} is not a text file ({e}); {_MOT_FORMAT}") from None
    except OSError as e:
        raise DatasetError(f"cannot read box file {name}: {e}") from None
    cols: list[list] = [[] for _ in range(8)]
    for no, raw in enumerate(text.splitlines(), 1):
        s = raw.strip()
        if not s or s.startswith("#"):
            continue
        parts = [p for p in _SPLIT.split(s.strip(", \t")) if p]

        def bad(why: str, no: int = no, raw: str = raw):
            return DatasetError(f"box file {name}, line {no}: {why} in {raw.strip()!r}. {_MOT_FORMAT}; "
                                f"fix or delete that line")

        if len(parts) < 6:
            raise bad(f"{len(parts)} fields, need at least 6")
        frame, track = _integral(parts[0]), _integral(parts[1])
        if frame is None:
            raise bad(f"frame {parts[0]!r} is not an integer")
        if frame < 1:
            raise bad(f"frame {frame} is below 1 (frames are 1-based)")
        if track is None:
            raise bad(f"track id {parts[1]!r} is not an integer")
        try:
            box = [float(p) for p in parts[2:7]]
        except ValueError:
            raise bad("a box field (left, top, width, height, conf) is not a number") from None
        if not all(math.isfinite(v) for v in box[:4]):
            raise bad("the box is not finite")
        if box[2] <= 0 or box[3] <= 0:
            raise bad(f"box width {box[2]:g} / height {box[3]:g} not positive")
        cols[0].append(frame)
        cols[1].append(track)
        for k in range(4):
            cols[2 + k].append(box[k])
        cols[6].append(box[4] if len(box) > 4 else math.nan)
        cols[7].append(no)
    i64, f64 = np.int64, np.float64
    return MotBoxes(path, np.array(cols[0], i64), np.array(cols[1], i64), *(np.array(c, f64) for c in cols[2:7]),
                    np.array(cols[7], i64))


def read_identities(path: str | os.PathLike, cameras: dict[str, str], display: str | None = None
                    ) -> dict[tuple[str, int], tuple[str, int]]:
    """Read ``identities.csv``: ``{(camera, track_id): (identity, line)}``.

    ``cameras`` maps every accepted spelling of a camera (video file name and its stem) to the
    camera's canonical name (the stem). Errors name the file and line: a missing column, an
    unknown camera, a non-integer track id, an empty identity, or one track given two
    identities.
    """
    path = Path(path)
    name = display or str(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read {name}: {e}") from None
    rows = csv.reader(text.splitlines())
    header = None
    out: dict[tuple[str, int], tuple[str, int]] = {}
    col: dict[str, int] = {}
    for no, row in enumerate(rows, 1):
        cells = [c.strip() for c in row]
        if not any(cells) or cells[0].startswith("#"):
            continue
        if header is None:
            header = [c.lower() for c in cells]
            missing = [c for c in IDENTITY_COLUMNS if c not in header]
            if missing:
                raise DatasetError(
                    f"{name}, line {no}: the header {cells} lacks column(s) {missing}; the first line "
                    f"of identities.csv must name the columns {', '.join(IDENTITY_COLUMNS)}")
            col = {c: header.index(c) for c in IDENTITY_COLUMNS}
            continue
        if len(cells) <= max(col.values()):
            raise DatasetError(f"{name}, line {no}: {len(cells)} fields, the header has {len(header)}; "
                               f"give camera, track_id and identity on every row")
        cam, tid, ident = cells[col["camera"]], _integral(cells[col["track_id"]]), cells[col["identity"]]
        if cam not in cameras:
            raise DatasetError(f"{name}, line {no}: camera {cam!r} is not one of the videos in data.root "
                               f"({', '.join(sorted(set(cameras.values())))}); name the camera by its "
                               f"video file name, with or without the extension")
        if tid is None:
            raise DatasetError(f"{name}, line {no}: track_id {cells[col['track_id']]!r} is not an "
                               f"integer; use the track id of the camera's box file")
        if not ident:
            raise DatasetError(f"{name}, line {no}: the identity is empty; give every listed track an "
                               f"identity or delete the row")
        key = (cameras[cam], tid)
        if key in out and out[key][0] != ident:
            raise DatasetError(f"{name}, line {no}: track {tid} of camera {key[0]} is given identity "
                               f"{ident!r}, but line {out[key][1]} gives it {out[key][0]!r}; a track "
                               f"belongs to one identity: keep one of the rows")
        out.setdefault(key, (ident, no))
    if header is None:
        raise DatasetError(f"{name} is empty; it needs a header ({', '.join(IDENTITY_COLUMNS)}) and "
                           f"one row per track, or delete it to use track ids as identities")
    return out
