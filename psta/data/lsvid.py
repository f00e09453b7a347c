"""LS-VID (Li et al., ICCV 2019) exactly as published: reader and synthetic writer.

::

    LS-VID/                                        <- data.root
      list_sequence/list_seq_train.txt             "<path prefix> <label>" per tracklet
      list_sequence/list_seq_val.txt               (validation identities; optional here)
      list_sequence/list_seq_test.txt
      test/data/info_test.mat                      MATLAB v7.3 (HDF5): 'query', 1-based test rows
      tracklet_train/0001/00029_*.jpg ...          frames (also tracklet_val/, tracklet_test/)

A tracklet's frames are the files, in sorted order, whose path under ``data.root`` starts with
its prefix followed by ``_`` (``tracklet_test/0001/00029`` -> ``tracklet_test/0001/00029_*.jpg``).
File names have four ``_``-separated fields; the third is the camera (1-15). Label -1 marks
junk (flagged, dropped by the index). The test rows listed in ``query`` are the queries, the
other test rows the gallery; the validation list becomes the index's ``val`` split.
Protocols as the LS-VID authors' code: the gallery is queries + gallery rows (``lsvid``), and
gallery rows only (``lsvid_gallery_only``); items with the query's identity and camera ignored.
"""
from __future__ import annotations

import bisect
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from psta.atomic import atomic_dir
from psta.data.mat73 import read_mat73_integers, write_mat73
from psta.data.raw import RawTracklets, make_tracklet_frame
from psta.data.synthetic import Painter, SyntheticConfig, draw_pids, identity_tracklets
from psta.errors import DatasetError

__all__ = ["LISTS", "MAX_CAMERAS", "QUERY_FILE", "generate_lsvid", "read_lsvid"]

LISTS = {"train": "list_sequence/list_seq_train.txt", "val": "list_sequence/list_seq_val.txt",
         "test": "list_sequence/list_seq_test.txt"}
QUERY_FILE = "test/data/info_test.mat"
MAX_CAMERAS = 15
RELEASE = "the LS-VID release"
_NAME_RE = r"^[^_]+_[^_]+_(?P<cam>\d+)_[^_]+\.jpg$"


def _read_list(root: Path, part: str) -> list[tuple[str, int]]:
    rel = LISTS[part]
    rows = []
    for k, line in enumerate((root / rel).read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[1].lstrip("-").isdigit():
            raise DatasetError(f"line {k} of {rel} ({line.strip()!r}) is not '<path prefix> <label>'; "
                               f"restore the file from {RELEASE}")
        rows.append((fields[0].strip("/"), int(fields[1])))
    if not rows:
        raise DatasetError(f"split '{part}' is empty: {rel} lists no tracklets")
    return rows


class _Folders:
    """Sorted file names per folder, listed once each."""

    def __init__(self, root: Path):
        self.root, self.names = root, {}

    def frames(self, prefix: str, rel: str, line: int) -> list[str]:
        folder, _, base = prefix.rpartition("/")
        if folder not in self.names:
            try:
                with os.scandir(self.root / folder) as it:
                    self.names[folder] = sorted(e.name for e in it if e.is_file())
            except (FileNotFoundError, NotADirectoryError):
                raise DatasetError(f"line {line} of {rel}: folder {folder}/ of tracklet {prefix} is missing "
                                   f"under {self.root}; restore it from {RELEASE}") from None
        names = self.names[folder]
        key = base + "_"
        lo, hi = bisect.bisect_left(names, key), bisect.bisect_left(names, base + "`")  # '`' follows '_'
        if lo == hi:
            raise DatasetError(f"line {line} of {rel}: tracklet {prefix} has no frames (no file "
                               f"{prefix}_*.jpg under {self.root}); restore them from {RELEASE}")
        return [f"{folder}/{n}" for n in names[lo:hi]]


def _cameras(paths: list[str], counts: np.ndarray, prefixes: list[str]) -> np.ndarray:
    """The camera of every tracklet, from the third field of its frames' names (all equal)."""
    base = pc.replace_substring_regex(pa.array(paths, pa.string()), r"^.*/", "")
    m = pc.extract_regex(base, _NAME_RE)
    valid = m.is_valid().to_numpy(zero_copy_only=False)
    if not valid.all():
        i = int(np.flatnonzero(~valid)[0])
        raise DatasetError(f"frame {paths[i]} has an unparsable name; LS-VID frame names have four "
                           f"'_'-separated fields, the third the camera, and end in .jpg. Rename or "
                           f"remove the file")
    cam = pc.cast(m.field(0), pa.int64()).to_numpy()
    of = np.repeat(np.arange(len(counts)), counts)
    first = np.r_[0, np.cumsum(counts)[:-1]]
    bad = (cam < 1) | (cam > MAX_CAMERAS)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DatasetError(f"frame {paths[i]} names camera {cam[i]}; LS-VID cameras are 1..{MAX_CAMERAS}")
    mixed = cam != cam[first][of]
    if mixed.any():
        i = int(np.flatnonzero(mixed)[0])
        raise DatasetError(f"tracklet {prefixes[of[i]]} mixes cameras: frame {paths[i]} has camera {cam[i]}, "
                           f"its first frame {paths[first[of[i]]]} camera {cam[first[of[i]]]}. A tracklet "
                           f"holds one camera's frames; fix the list or move the frame")
    return cam[first]


def _queries(root: Path, n_test: int) -> np.ndarray:
    if not (root / QUERY_FILE).is_file():
        raise DatasetError(f"LS-VID query file {QUERY_FILE} is missing under {root}; restore it from {RELEASE}")
    q = read_mat73_integers(root / QUERY_FILE, "query", QUERY_FILE, RELEASE).ravel()
    if q.size == 0:
        raise DatasetError(f"split 'query' is empty: 'query' in {QUERY_FILE} lists no rows")
    bad = (q < 1) | (q > n_test)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise DatasetError(f"entry {k + 1} of 'query' in {QUERY_FILE} is {q[k]}, outside the {n_test} rows "
                           f"of {LISTS['test']} (1-based); restore both from the same {RELEASE}")
    if len(np.unique(q)) != len(q):
        raise DatasetError(f"'query' in {QUERY_FILE} lists a row twice; restore it from {RELEASE}")
    if len(q) == n_test:
        raise DatasetError(f"split 'gallery' is empty: every row of {LISTS['test']} is a query")
    return q - 1


def read_lsvid(root: str | os.PathLike) -> RawTracklets:
    """Read LS-VID at ``root`` (the ``LS-VID/`` folder): the lists, the query file and the folder
    listings; no image is opened.

    Raises :class:`DatasetError` naming the file/line and the fix for: a missing root, list,
    query file or tracklet folder; a malformed list line; a tracklet without frames; an
    unparsable frame name or camera; a tracklet mixing cameras; a query file without 'query' or
    with rows outside the test list; validation identities that also train; an empty split.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(
            f"LS-VID root {root} does not exist or is not a directory. Set data.root to the LS-VID/ "
            f"folder itself (holding list_sequence/, test/ and the tracklet folders), or use the "
            f"synthetic demo dataset (synthetic.layout: lsvid).")
    parts = [p for p in ("train", "test", "val") if p != "val" or (root / LISTS["val"]).is_file()]
    for part in parts:
        if not (root / LISTS[part]).is_file():
            raise DatasetError(f"LS-VID list {LISTS[part]} is missing under {root}; restore it from {RELEASE}")
    lists = {part: _read_list(root, part) for part in parts}
    if "val" in lists:
        both = sorted({label for _, label in lists["val"]} & {label for _, label in lists["train"]} - {-1})
        if both:
            raise DatasetError(f"identity {both[0]} is in both {LISTS['val']} and {LISTS['train']}: "
                               f"validation identities must not train; restore the lists from {RELEASE}")
    query = _queries(root, len(lists["test"]))
    folders, paths, counts, split, prefixes, pids, rows = _Folders(root), [], [], [], [], [], []
    for part in parts:
        is_query = np.zeros(len(lists[part]), bool)
        if part == "test":
            is_query[query] = True
        for k, ((prefix, label), q) in enumerate(zip(lists[part], is_query)):
            frames = folders.frames(prefix, LISTS[part], k + 1)
            paths += frames
            counts.append(len(frames))
            split.append({"train": "train", "val": "val"}.get(part, "query" if q else "gallery"))
            prefixes.append(prefix)
            pids.append(label)
            rows.append(k)
    counts = np.asarray(counts, np.int64)
    camid = _cameras(paths, counts, prefixes) - 1
    pid = np.asarray(pids, np.int64)
    tracklets = make_tracklet_frame(split=split, pid=pid, camid=camid, name=prefixes, row=rows,
                                    junk=pid == -1, distractor=np.zeros(len(pid), bool), n_frames=counts)
    return RawTracklets(dataset="lsvid", root=root, tracklets=tracklets, paths=pa.array(paths, pa.string()))


# ------------------------------------------------------------------------------ synthetic
def _skipped_queries(rows: list[dict], with_queries: bool) -> int:
    """Queries without a same-identity gallery item from another camera under a protocol."""
    test = [r for r in rows if r["part"] == "test"]
    gallery = [r for r in test if with_queries or not r["query"]]
    return sum(1 for q in test if q["query"] and not any(
        g["pid"] == q["pid"] and g["cam"] != q["cam"] for g in gallery))


def _plan(rng: np.random.Generator, cfg: SyntheticConfig, ncam: int) -> list[dict]:
    """Every tracklet: list, identity, camera, query flag, length (global tracklet numbers)."""
    n_val = max(2, cfg.num_train_ids // 4)
    train, test, extra = draw_pids(rng, cfg, n_val + 1)
    rows = []

    def add(part, pid, cam, query=False):
        rows.append({"part": part, "pid": int(pid), "cam": int(cam), "query": query,
                     "n": int(rng.integers(cfg.min_len, cfg.max_len + 1)), "tnum": len(rows) + 1})

    for part, pids in (("train", train), ("val", extra[:n_val]), ("test", test)):
        for p in pids:
            cams, per = identity_tracklets(rng, cfg, ncam, int(p))
            qcams = set()     # test: queries in some cameras, at least one camera left for the gallery
            if part == "test":
                qcams = set(rng.choice(cams, int(rng.integers(1, len(cams))), replace=False).tolist())
            for c, m in zip(cams, per):
                for j in range(int(m)):
                    add(part, p, c, j == 0 and int(c) in qcams)
    lonely = int(extra[n_val])             # a query whose identity no other camera saw
    cam = int(rng.integers(1, ncam + 1))
    add("test", lonely, cam, True)
    add("test", lonely, cam)
    return rows


def generate_lsvid(root: str | os.PathLike, cfg: SyntheticConfig | None = None, *,
                   workers: int | None = None) -> dict:
    """Write a synthetic dataset in the exact LS-VID layout under ``root`` (atomically).

    ``num_train_ids`` training, ``max(2, num_train_ids // 4)`` validation and ``num_test_ids``
    test identities over 15 cameras (``cfg.num_cameras``), plus one test identity whose query
    has no match in another camera (counted and skipped by either protocol). Frames
    ``<tracklet>_<identity>_<camera>_<frame>.jpg``; ``test/data/info_test.mat`` is a real MATLAB
    v7.3 (HDF5) file. Returns the planted per-split counts and the queries each protocol skips.
    """
    cfg = cfg or SyntheticConfig()
    ncam = cfg.cameras_for(MAX_CAMERAS, MAX_CAMERAS)
    root = Path(root)
    rows = _plan(np.random.default_rng([cfg.seed, 60, 0]), cfg, ncam)
    painter = Painter(cfg, ncam, stream=61)
    jobs = [(r["pid"], r["cam"] - 1, r["n"], k, False) for k, r in enumerate(rows)]
    with atomic_dir(root) as tmp:
        lines = {part: [] for part in LISTS}
        for r, frames in zip(rows, painter.render_many(jobs, workers)):
            folder = f"tracklet_{r['part']}/{r['pid']:04d}"
            (tmp / folder).mkdir(parents=True, exist_ok=True)
            for f, data in enumerate(frames, start=1):
                (tmp / folder / f"{r['tnum']:05d}_{r['pid']:04d}_{r['cam']:02d}_{f:04d}.jpg").write_bytes(data)
            lines[r["part"]].append(f"{folder}/{r['tnum']:05d} {r['pid']}\n")
        for part, rel in LISTS.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text("".join(lines[part]))
        test = [r for r in rows if r["part"] == "test"]
        query = np.array([k + 1 for k, r in enumerate(test) if r["query"]], np.float64)[:, None]
        (tmp / QUERY_FILE).parent.mkdir(parents=True)
        write_mat73(tmp / QUERY_FILE, {"query": query})

    def counts(sel):
        return {"tracklets": len(sel), "identities": len({r["pid"] for r in sel}), "frames": sum(r["n"] for r in sel)}
    return {
        "dataset": "lsvid",
        "root": str(root),
        "seed": cfg.seed,
        "num_cameras": ncam,
        "splits": {"train": counts([r for r in rows if r["part"] == "train"]),
                   "query": counts([r for r in test if r["query"]]),
                   "gallery": counts([r for r in test if not r["query"]]),
                   "val": counts([r for r in rows if r["part"] == "val"])},
        "skipped_queries": {"lsvid": _skipped_queries(rows, True),
                            "lsvid_gallery_only": _skipped_queries(rows, False)},
        "files": sum(r["n"] for r in rows),
    }
