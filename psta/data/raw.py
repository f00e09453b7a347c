"""``RawTracklets``: what a dataset reader returns, before the index is built.

Tracklet metadata lives in a DataFrame (one row per tracklet); the frame paths of all
tracklets live in one flat pyarrow string array in tracklet-major, temporal order, so the
frames of tracklet ``i`` are ``paths[frame_offset[i] : frame_offset[i] + n_frames[i]]``.
Nothing here touches the JPEG files.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from psta.errors import DatasetError

SPLITS = ("train", "query", "gallery")
#: splits a dataset may add: "val", identities held out of training for validation (LS-VID's
#: list_seq_val.txt); never trained on, never part of the test protocol
OPTIONAL_SPLITS = ("val",)
ALL_SPLITS = SPLITS + OPTIONAL_SPLITS

#: columns of ``RawTracklets.tracklets`` and their numpy/pandas dtypes
TRACKLET_COLUMNS = {
    "split": "str",        # "train" / "query" / "gallery" (/ "val")
    "pid": "int64",        # the dataset's own identity (MARS: 0 distractor, -1 junk)
    "camid": "int64",      # 0-based camera
    "name": "str",         # MARS "0065C1T0002", Duke "train/0001/0001"
    "row": "int64",        # MARS: 0-based row of tracks_{train,test}_info; Duke: ordinal in split
    "junk": "bool",        # dropped (and counted) by the index
    "distractor": "bool",  # MARS pid 0; Duke: gallery identity without a query
    "n_frames": "int64",
    "frame_offset": "int64",
}


@dataclass
class RawTracklets:
    """Tracklets of one dataset as read from disk (junk included, flagged).

    Attributes:
        dataset: ``"mars"`` or ``"duke"``.
        root: the dataset root the frame paths are relative to (``None`` if unknown).
        tracklets: one row per tracklet, columns :data:`TRACKLET_COLUMNS`.
        paths: ``pa.StringArray`` of every frame path, relative to ``root``.
        ok: optional per-frame validity mask (from a manifest); ``None`` = all frames usable.
        meta: facts about this reading that the index records in ``stats.json`` (JSON values;
            e.g. ``"split"``: which of a dataset's published train/test splits was read).
        generated_splits: the dataset's whole list of ``{"train": [...], "test": [...]}``
            splits when the reader drew it itself (PRID-2011 without a split file), for the
            ingest stage to write next to its outputs; ``None`` otherwise.
    """

    dataset: str
    root: Path | None
    tracklets: pd.DataFrame
    paths: pa.Array
    ok: np.ndarray | None = None
    meta: dict = field(default_factory=dict)
    generated_splits: list[dict] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.paths, pa.ChunkedArray):
            self.paths = self.paths.combine_chunks()
        if self.root is not None:
            self.root = Path(self.root)

    def __len__(self) -> int:
        return len(self.tracklets)

    @property
    def num_frames(self) -> int:
        return len(self.paths)

    def frame_paths(self, i: int) -> list[str]:
        """Frame paths (relative to ``root``) of tracklet ``i`` in temporal order."""
        off = int(self.tracklets["frame_offset"].iat[i])
        n = int(self.tracklets["n_frames"].iat[i])
        return self.paths.slice(off, n).to_pylist()

    def frame_tracklet(self) -> np.ndarray:
        """For every frame, the position of its tracklet in ``tracklets`` (int64)."""
        return np.repeat(np.arange(len(self.tracklets), dtype=np.int64),
                         self.tracklets["n_frames"].to_numpy(np.int64))

    def validate(self) -> None:
        """Check the internal layout (offsets contiguous, columns present)."""
        missing = [c for c in TRACKLET_COLUMNS if c not in self.tracklets.columns]
        if missing:
            raise DatasetError(f"RawTracklets.tracklets lacks columns {missing}")
        n = self.tracklets["n_frames"].to_numpy(np.int64)
        off = self.tracklets["frame_offset"].to_numpy(np.int64)
        expect = np.concatenate([[0], np.cumsum(n)[:-1]]) if len(n) else n
        if (n < 1).any() or not np.array_equal(off, expect) or int(n.sum()) != len(self.paths):
            raise DatasetError("RawTracklets: frame_offset/n_frames do not tile the path array")
        if self.ok is not None and len(self.ok) != len(self.paths):
            raise DatasetError(f"RawTracklets.ok has {len(self.ok)} entries for {len(self.paths)} frames")


def make_tracklet_frame(split, pid, camid, name, row, junk, distractor, n_frames) -> pd.DataFrame:
    """Assemble the ``tracklets`` DataFrame with the canonical dtypes and computed offsets."""
    n_frames = np.asarray(n_frames, dtype=np.int64)
    offset = np.zeros(len(n_frames), dtype=np.int64)
    if len(n_frames) > 1:
        np.cumsum(n_frames[:-1], out=offset[1:])
    df = pd.DataFrame({
        "split": pd.array(np.asarray(split, dtype=object), dtype="str"),
        "pid": np.asarray(pid, dtype=np.int64),
        "camid": np.asarray(camid, dtype=np.int64),
        "name": pd.array(np.asarray(name, dtype=object), dtype="str"),
        "row": np.asarray(row, dtype=np.int64),
        "junk": np.asarray(junk, dtype=bool),
        "distractor": np.asarray(distractor, dtype=bool),
        "n_frames": n_frames,
        "frame_offset": offset,
    })
    return df


__all__ = ["ALL_SPLITS", "OPTIONAL_SPLITS", "RawTracklets", "SPLITS", "TRACKLET_COLUMNS", "make_tracklet_frame"]
