"""The tracklet index (``data/index/``) and the ingest manifest.

``tracklets.parquet`` (one row per tracklet, ordered train, query, gallery), ``frames.parquet``
(one row per frame, sorted by (tracklet_id, frame_idx)) and ``stats.json``, with the explicit
schemas :data:`TRACKLETS_SCHEMA` and :data:`FRAMES_SCHEMA` of docs/CONTRACTS.md. The frames of
tracklet ``t`` are rows ``frame_offset[t] : frame_offset[t] + n_frames[t]``.

The ingest stage reads the raw dataset once, checks its frames and writes a manifest (one row
per frame file, :data:`MANIFEST_SCHEMA`); the index stage builds the index from the manifest
without touching the dataset again. :func:`ingest` and :func:`index_from_manifest` are those
two stages as library calls::

    ingest("mars", root, "data/ingest/manifest.parquet", on_bad_frame="error")
    #   = raw = read_dataset("mars", root); ok, bad = check_frames(root, raw.paths, ...)
    #     write_manifest(raw, ok, path)
    index_from_manifest("data/ingest/manifest.parquet", "data/index")
    #   = write_index(build_index(read_manifest(path)), out_dir)

Every failure happens before the output is renamed into place, so a failed stage leaves no
output behind.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from psta.atomic import atomic_dir, atomic_path
from psta.data.raw import ALL_SPLITS, SPLITS, RawTracklets, make_tracklet_frame
from psta.errors import DatasetError

__all__ = [
    "TrackletIndex",
    "TRACKLETS_SCHEMA",
    "FRAMES_SCHEMA",
    "MANIFEST_SCHEMA",
    "INDEX_FILES",
    "build_index",
    "write_index",
    "read_index",
    "write_manifest",
    "read_manifest",
    "ingest",
    "index_from_manifest",
]

SCHEMA_VERSION = 1

TRACKLETS_SCHEMA = pa.schema([
    pa.field("tracklet_id", pa.int64(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("pid", pa.int64(), nullable=False),
    pa.field("label", pa.int64(), nullable=False),
    pa.field("camid", pa.int64(), nullable=False),
    pa.field("n_frames", pa.int64(), nullable=False),
    pa.field("frame_offset", pa.int64(), nullable=False),
    pa.field("name", pa.string(), nullable=False),
])

FRAMES_SCHEMA = pa.schema([
    pa.field("tracklet_id", pa.int64(), nullable=False),
    pa.field("frame_idx", pa.int32(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
])

#: one row per frame file, in tracklet-major temporal order
MANIFEST_SCHEMA = pa.schema([
    pa.field("tracklet", pa.int64(), nullable=False),     # 0-based position in RawTracklets
    pa.field("split", pa.string(), nullable=False),
    pa.field("pid", pa.int64(), nullable=False),
    pa.field("camid", pa.int64(), nullable=False),
    pa.field("name", pa.string(), nullable=False),
    pa.field("row", pa.int64(), nullable=False),          # source row (MARS .mat row, 0-based)
    pa.field("junk", pa.bool_(), nullable=False),
    pa.field("distractor", pa.bool_(), nullable=False),
    pa.field("frame_idx", pa.int32(), nullable=False),    # position in the raw tracklet
    pa.field("path", pa.string(), nullable=False),
    pa.field("ok", pa.bool_(), nullable=False),           # passed check_frames
])

INDEX_FILES = ("tracklets.parquet", "frames.parquet", "stats.json")
_SPLIT_CODE = {s: i for i, s in enumerate(ALL_SPLITS)}


@dataclass
class TrackletIndex:
    """The tracklet index: ``tracklets`` and ``frames`` tables plus ``stats``.

    ``root`` is the dataset root the frame paths are relative to (``None`` if unknown).
    """

    tracklets: pd.DataFrame
    frames: pd.DataFrame
    stats: dict = field(default_factory=dict)
    root: Path | None = None

    @property
    def num_classes(self) -> int:
        """Number of training identities (labels 0..K-1)."""
        if "num_classes" in self.stats:
            return int(self.stats["num_classes"])
        label = self.tracklets["label"]
        return int(label.max()) + 1 if (label >= 0).any() else 0

    def split(self, name: str) -> pd.DataFrame:
        """The tracklet rows of one split (``"train"``, ``"query"``, ``"gallery"``)."""
        return self.tracklets[self.tracklets["split"] == name]

    def frame_paths(self, tracklet_id: int) -> list[str]:
        """Frame paths (relative to ``root``) of one tracklet in temporal order."""
        off = int(self.tracklets["frame_offset"].iat[tracklet_id])
        n = int(self.tracklets["n_frames"].iat[tracklet_id])
        return self.frames["path"].iloc[off:off + n].tolist()


# --------------------------------------------------------------------------------------------
# build
# --------------------------------------------------------------------------------------------
def _split_counts(pid: np.ndarray, n_frames: np.ndarray) -> dict:
    return {"tracklets": int(len(pid)), "identities": int(len(np.unique(pid[pid > 0]))),
            "frames": int(n_frames.sum())}


def _split_codes(t: pd.DataFrame) -> np.ndarray:
    """Each tracklet's split as its position in ALL_SPLITS; an unknown split name is refused."""
    split_s = t["split"].to_numpy(dtype=object)
    unknown = ~np.isin(split_s, ALL_SPLITS)
    if unknown.any():
        raise DatasetError(f"tracklet {t['name'].iat[int(np.flatnonzero(unknown)[0])]} has split "
                           f"{split_s[unknown][0]!r}; expected one of {ALL_SPLITS}")
    return np.select([split_s == s for s in ALL_SPLITS], range(len(ALL_SPLITS)), -1).astype(np.int64)


def _require_every_split(code: np.ndarray, kept: np.ndarray, junk: np.ndarray, emptied: np.ndarray,
                         root) -> None:
    """Every split of SPLITS keeps a tracklet, else one error counting what was dropped and why."""
    for s in SPLITS:
        if not (code[kept] == _SPLIT_CODE[s]).any():
            in_split = code == _SPLIT_CODE[s]
            raise DatasetError(
                f"split '{s}' is empty after indexing ({int(in_split.sum())} tracklets read, "
                f"{int((junk & in_split).sum())} junk, "
                f"{int((emptied & in_split).sum())} left without a good frame); "
                f"check the dataset at {root}")


def build_index(raw: RawTracklets, ok_mask: np.ndarray | None = None) -> TrackletIndex:
    """Build the index from reader output.

    Drops junk tracklets (counted), drops frames with ``ok_mask == False`` (counted; a tracklet
    left with no frame is dropped and counted), orders tracklets train -> query -> gallery
    (-> val, when the dataset has a validation list; source order within a split), relabels
    train pids to 0..K-1 in pid order and computes ``stats`` (plus the reader's ``raw.meta``).
    ``ok_mask`` defaults to ``raw.ok`` (set by :func:`read_manifest`), else all True.
    """
    raw.validate()
    t = raw.tracklets
    n_tr, n_fr = len(t), raw.num_frames
    ok = ok_mask if ok_mask is not None else raw.ok
    ok = np.ones(n_fr, bool) if ok is None else np.asarray(ok, bool)
    if ok.shape != (n_fr,):
        raise DatasetError(f"ok_mask has shape {ok.shape}; expected ({n_fr},), one flag per frame")

    code = _split_codes(t)
    pid = t["pid"].to_numpy(np.int64)
    junk = t["junk"].to_numpy(bool)
    dis = t["distractor"].to_numpy(bool)
    n_raw = t["n_frames"].to_numpy(np.int64)

    ft = raw.frame_tracklet()
    keep_f = ok & ~junk[ft]
    kept_n = np.bincount(ft[keep_f], minlength=n_tr).astype(np.int64)
    bad_f = int((~ok & ~junk[ft]).sum())
    emptied = ~junk & (kept_n == 0)
    keep_t = ~junk & (kept_n > 0)

    sel = np.flatnonzero(keep_t)
    sel = sel[np.argsort(code[sel], kind="stable")]
    _require_every_split(code, sel, junk, emptied, raw.root)
    m = len(sel)
    new_id = np.full(n_tr, -1, np.int64)
    new_id[sel] = np.arange(m)
    n_frames = kept_n[sel]
    offset = np.zeros(m, np.int64)
    np.cumsum(n_frames[:-1], out=offset[1:])

    kf = np.flatnonzero(keep_f)
    fid = new_id[ft[kf]]
    if len(fid) > 1 and (np.diff(fid) < 0).any():   # source order differs from split order
        kf = kf[np.argsort(fid, kind="stable")]
        fid = new_id[ft[kf]]
    frame_idx = (np.arange(len(kf), dtype=np.int64) - np.repeat(offset, n_frames)).astype(np.int32)
    paths = raw.paths.take(pa.array(kf))

    tpid, tcode = pid[sel], code[sel]
    train_pids = np.unique(tpid[tcode == 0])
    label = np.where(tcode == 0, np.searchsorted(train_pids, tpid), -1).astype(np.int64)
    tracklets = pa.table({
        "tracklet_id": pa.array(np.arange(m, dtype=np.int64)),
        "split": pa.array(np.asarray(ALL_SPLITS, dtype=object)[tcode], pa.string()),
        "pid": pa.array(tpid),
        "label": pa.array(label),
        "camid": pa.array(t["camid"].to_numpy(np.int64)[sel]),
        "n_frames": pa.array(n_frames),
        "frame_offset": pa.array(offset),
        "name": pa.array(t["name"].to_numpy(dtype=object)[sel], pa.string()),
    }, schema=TRACKLETS_SCHEMA)
    frames = pa.table({"tracklet_id": pa.array(fid), "frame_idx": pa.array(frame_idx),
                       "path": paths.cast(pa.string())}, schema=FRAMES_SCHEMA)

    tdis = dis[sel]
    stats = {
        "schema_version": SCHEMA_VERSION,
        "dataset": raw.dataset,
        "root": None if raw.root is None else str(raw.root),
        "splits": {s: _split_counts(tpid[tcode == i], n_frames[tcode == i]) for i, s in enumerate(ALL_SPLITS)
                   if s in SPLITS or (tcode == i).any()},
        "num_classes": int(len(train_pids)),
        "num_cameras": int(len(np.unique(t["camid"].to_numpy()[sel]))),
        "tracklets": int(m),
        "frames": int(n_frames.sum()),
        "junk_tracklets_dropped": int(junk.sum()),
        "junk_frames_dropped": int(n_raw[junk].sum()),
        "distractor_tracklets": int(tdis.sum()),
        "distractor_identities": int(len(np.unique(tpid[tdis & (tpid > 0)]))),
        "skipped_bad_frames": bad_f,
        "dropped_empty_tracklets": int(emptied.sum()),
        "tracklet_length": {"min": int(n_frames.min()), "max": int(n_frames.max()),
                            "mean": round(float(n_frames.mean()), 3)},
    }
    clash = sorted(set(raw.meta) & set(stats))
    if clash:
        raise DatasetError(f"reader facts {clash} would overwrite the index's own statistics")
    stats.update(raw.meta)
    return TrackletIndex(tracklets=_to_pandas(tracklets), frames=_to_pandas(frames), stats=stats,
                         root=raw.root)


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    return table.to_pandas()


# --------------------------------------------------------------------------------------------
# write / read
# --------------------------------------------------------------------------------------------
def _table(df: pd.DataFrame, schema: pa.Schema, what: str) -> pa.Table:
    missing = [f.name for f in schema if f.name not in df.columns]
    if missing:
        raise DatasetError(f"{what}: DataFrame lacks columns {missing}")
    try:
        return pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as e:
        raise DatasetError(f"{what}: a column does not fit the schema ({e})") from None


def write_index(index: TrackletIndex, out_dir: str | os.PathLike) -> Path:
    """Write ``tracklets.parquet``, ``frames.parquet`` and ``stats.json`` into ``out_dir``.

    The directory is written next to ``out_dir`` and swapped in whole (``atomic_dir``), so a
    failure leaves the previous index (or nothing), never a partial one.
    """
    out_dir = Path(out_dir)
    tracklets = _table(index.tracklets, TRACKLETS_SCHEMA, "tracklets.parquet")
    frames = _table(index.frames, FRAMES_SCHEMA, "frames.parquet")
    _check_consistent(tracklets, frames, out_dir)
    with atomic_dir(out_dir) as tmp:
        pq.write_table(tracklets, tmp / "tracklets.parquet", compression="zstd")
        pq.write_table(frames, tmp / "frames.parquet", compression="zstd")
        (tmp / "stats.json").write_text(json.dumps(index.stats, indent=2, sort_keys=True) + "\n")
    return out_dir


def _check_schema(schema: pa.Schema, expected: pa.Schema, path: Path) -> None:
    for f in expected:
        idx = schema.get_field_index(f.name)
        if idx < 0:
            raise DatasetError(f"{path} lacks column '{f.name}' ({f.type}); it was not written by this "
                               f"version of psta: rebuild it (run the stage again)")
        got = schema.field(idx).type
        if got != f.type:
            raise DatasetError(f"column '{f.name}' of {path} has type {got}, expected {f.type}; "
                               f"rebuild the file (run the stage again)")


def _read_table(path: Path, schema: pa.Schema) -> pa.Table:
    if not path.is_file():
        raise DatasetError(f"{path} is missing; run the stage that writes it "
                           f"(`python -m pipeline index` for the index)")
    try:
        have = pq.read_schema(path)
    except Exception as e:
        raise DatasetError(f"{path} is not a readable Parquet file ({e}); rebuild it") from None
    _check_schema(have, schema, path)
    table = pq.read_table(path, columns=schema.names)
    if any(table.column(f.name).null_count for f in schema):
        raise DatasetError(f"{path} holds null values; rebuild it")
    return table.cast(schema)


def _check_consistent(tracklets: pa.Table, frames: pa.Table, where: Path) -> None:
    tid = tracklets.column("tracklet_id").to_numpy()
    n = tracklets.column("n_frames").to_numpy()
    off = tracklets.column("frame_offset").to_numpy()
    expect = np.zeros(len(n), np.int64)
    np.cumsum(n[:-1], out=expect[1:])
    if not np.array_equal(tid, np.arange(len(tid))):
        raise DatasetError(f"{where / 'tracklets.parquet'}: tracklet_id is not 0..N-1 in order")
    if (n < 1).any() or not np.array_equal(off, expect) or int(n.sum()) != frames.num_rows:
        raise DatasetError(f"{where}: frame_offset / n_frames do not tile frames.parquet "
                           f"({frames.num_rows} rows); rebuild the index")
    ftid = frames.column("tracklet_id").to_numpy()
    if not np.array_equal(ftid, np.repeat(tid, n)):
        raise DatasetError(f"{where / 'frames.parquet'}: rows are not sorted by tracklet_id as "
                           f"tracklets.parquet says; rebuild the index")


def read_index(index_dir: str | os.PathLike) -> TrackletIndex:
    """Read and validate an index directory written by :func:`write_index`.

    Raises :class:`DatasetError` naming the file if it is missing, a column is missing or has
    the wrong type, or the tables are inconsistent.
    """
    d = Path(index_dir)
    if not d.is_dir():
        raise DatasetError(f"index directory {d} does not exist; run the index stage "
                           f"(`python -m pipeline index`) first")
    tracklets = _read_table(d / "tracklets.parquet", TRACKLETS_SCHEMA)
    frames = _read_table(d / "frames.parquet", FRAMES_SCHEMA)
    _check_consistent(tracklets, frames, d)
    sp = d / "stats.json"
    if not sp.is_file():
        raise DatasetError(f"{sp} is missing; rebuild the index")
    try:
        stats = json.loads(sp.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{sp} is not valid JSON ({e}); rebuild the index") from None
    if not isinstance(stats, dict):
        raise DatasetError(f"{sp} must hold a JSON object; rebuild the index")
    split = tracklets.column("split").to_numpy(zero_copy_only=False)
    if not np.isin(split, ALL_SPLITS).all():
        raise DatasetError(f"{d / 'tracklets.parquet'}: column 'split' holds values other than {ALL_SPLITS}")
    root = stats.get("root")
    return TrackletIndex(tracklets=_to_pandas(tracklets), frames=_to_pandas(frames), stats=stats,
                         root=Path(root) if root else None)


# --------------------------------------------------------------------------------------------
# manifest
# --------------------------------------------------------------------------------------------
def write_manifest(raw: RawTracklets, ok_mask: np.ndarray | None, path: str | os.PathLike) -> Path:
    """Write the ingest manifest: one row per frame file (:data:`MANIFEST_SCHEMA`), atomically.

    Tracklet-level fields are repeated on each of its frames; ``ok`` is ``ok_mask`` (all True
    if ``None``). The dataset name, root and the reader's ``meta`` (JSON) go in the Parquet
    schema metadata.
    """
    raw.validate()
    path = Path(path)
    n = raw.num_frames
    ok = np.ones(n, bool) if ok_mask is None else np.asarray(ok_mask, bool)
    if ok.shape != (n,):
        raise DatasetError(f"ok_mask has shape {ok.shape}; expected ({n},), one flag per frame")
    t = raw.tracklets
    ft = raw.frame_tracklet()
    take = pa.array(ft)
    off = t["frame_offset"].to_numpy(np.int64)

    def col(name: str, typ: pa.DataType) -> pa.Array:
        values = t[name].to_numpy(dtype=object if typ == pa.string() else None)
        return pa.array(values, typ).take(take)

    table = pa.table({
        "tracklet": pa.array(ft),
        "split": col("split", pa.string()),
        "pid": col("pid", pa.int64()),
        "camid": col("camid", pa.int64()),
        "name": col("name", pa.string()),
        "row": col("row", pa.int64()),
        "junk": col("junk", pa.bool_()),
        "distractor": col("distractor", pa.bool_()),
        "frame_idx": pa.array((np.arange(n, dtype=np.int64) - off[ft]).astype(np.int32)),
        "path": raw.paths.cast(pa.string()),
        "ok": pa.array(ok),
    }, schema=MANIFEST_SCHEMA)
    meta = {b"psta.manifest": str(SCHEMA_VERSION).encode(), b"psta.dataset": raw.dataset.encode(),
            b"psta.root": ("" if raw.root is None else str(raw.root)).encode(),
            b"psta.meta": json.dumps(raw.meta, sort_keys=True).encode()}
    table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path


def read_manifest(path: str | os.PathLike) -> RawTracklets:
    """Read a manifest back into :class:`RawTracklets` (with ``ok`` set from the ``ok`` column)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"manifest {path} is missing; run the ingest stage "
                           f"(`python -m pipeline ingest`) first")
    table = _read_table(path, MANIFEST_SCHEMA)
    meta = pq.read_schema(path).metadata or {}
    if b"psta.manifest" not in meta:
        raise DatasetError(f"{path} is not a psta manifest (no psta.manifest schema metadata); "
                           f"rerun the ingest stage")
    tr = table.column("tracklet").to_numpy()
    if len(tr) == 0:
        raise DatasetError(f"manifest {path} has no frames; rerun the ingest stage")
    starts = np.flatnonzero(np.r_[True, tr[1:] != tr[:-1]])
    if not np.array_equal(tr[starts], np.arange(len(starts))):
        raise DatasetError(f"manifest {path}: rows are not grouped by tracklet 0..N-1; rerun ingest")
    counts = np.diff(np.r_[starts, len(tr)])
    fidx = table.column("frame_idx").to_numpy().astype(np.int64)
    if not np.array_equal(fidx, np.arange(len(tr)) - np.repeat(starts, counts)):
        raise DatasetError(f"manifest {path}: frame_idx is not 0..n-1 within each tracklet; rerun ingest")
    head = table.take(pa.array(starts))

    def col(name: str) -> np.ndarray:
        return head.column(name).to_numpy(zero_copy_only=False)

    df = make_tracklet_frame(split=col("split"), pid=col("pid"), camid=col("camid"), name=col("name"),
                             row=col("row"), junk=col("junk"), distractor=col("distractor"),
                             n_frames=counts)
    root = meta.get(b"psta.root", b"").decode()
    return RawTracklets(dataset=meta.get(b"psta.dataset", b"unknown").decode(),
                        root=Path(root) if root else None, tracklets=df,
                        paths=table.column("path").combine_chunks(),
                        ok=table.column("ok").to_numpy(zero_copy_only=False),
                        meta=json.loads(meta.get(b"psta.meta", b"{}")))


# --------------------------------------------------------------------------------------------
# the two stages as library calls
# --------------------------------------------------------------------------------------------
def ingest(dataset: str, root: str | os.PathLike, manifest_path: str | os.PathLike,
           on_bad_frame: str = "error", *, decode: bool = True, workers: int | None = None,
           **options) -> dict:
    """Read the raw dataset, check every frame, write the manifest. Returns a summary.

    ``options`` go to the dataset's reader (``split``, ``split_file``, ``split_seed``).

    With ``on_bad_frame="error"`` the first bad frame raises :class:`DatasetError` and nothing
    is written; with ``"skip"`` bad frames are flagged ``ok = False`` in the manifest and the
    index stage drops (and counts) them.
    """
    from psta.data import check_frames, read_dataset

    raw = read_dataset(dataset, root, **options)
    ok, bad, _ = check_frames(root, raw.paths, on_bad_frame, decode=decode, workers=workers)
    write_manifest(raw, ok, manifest_path)
    t = raw.tracklets
    return {"dataset": dataset, "tracklets": len(t), "frames": raw.num_frames,
            "junk_tracklets": int(t["junk"].sum()), "bad_frames": len(bad),
            "bad_examples": [f"{p}: {why}" for p, why in bad[:20]], "split": raw.meta.get("split")}


def index_from_manifest(manifest_path: str | os.PathLike, out_dir: str | os.PathLike) -> TrackletIndex:
    """Build the index from an ingest manifest and write it to ``out_dir`` (atomically)."""
    index = build_index(read_manifest(manifest_path))
    write_index(index, out_dir)
    return index
