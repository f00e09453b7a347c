"""A searchable gallery on disk (``data/gallery/``): FAISS index + Parquet tables + header.

Files (written atomically as one directory):

- ``index.faiss``: the L2-normalised embeddings, row r = row r of the table;
- ``tracklets.parquet`` (:data:`TABLE_SCHEMA`): what each row is: tracklet id, split, identity
  (pid, null when unknown), camera (0-based ``camid`` and the dataset's own ``camera`` label),
  its frames (count, first / last / representative frame path, relative to the header's
  ``root``) and, for video sources, the source video, its frame range (1-based) and times;
- ``frames.parquet``: every frame path of those tracklets (``frame_offset`` of the table);
- ``header.json``: format, embedding size, index type and knobs, file sizes, and what the
  stage adds (model identity, sampling, precision, dataset, threshold).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from psta.atomic import atomic_dir
from psta.errors import DatasetError
from psta.search import vectors
from psta.search.vectors import IndexConfig

FORMAT = "psta-gallery/v1"
INDEX_FILE, TABLE_FILE, FRAMES_FILE, HEADER_FILE = "index.faiss", "tracklets.parquet", "frames.parquet", "header.json"
REBUILD = "rebuild it with `python -m pipeline gallery` (or `dvc repro gallery`)"

TABLE_SCHEMA = pa.schema([
    pa.field("row", pa.int64(), nullable=False),
    pa.field("tracklet_id", pa.int64(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("pid", pa.int64()),
    pa.field("camid", pa.int64(), nullable=False),
    pa.field("camera", pa.string(), nullable=False),
    pa.field("name", pa.string(), nullable=False),
    pa.field("n_frames", pa.int64(), nullable=False),
    pa.field("frame_offset", pa.int64(), nullable=False),
    pa.field("first_frame", pa.string(), nullable=False),
    pa.field("last_frame", pa.string(), nullable=False),
    pa.field("representative_frame", pa.string(), nullable=False),
    pa.field("video", pa.string()),
    pa.field("video_frame_first", pa.int64()),
    pa.field("video_frame_last", pa.int64()),
    pa.field("start_s", pa.float64()),
    pa.field("end_s", pa.float64()),
])
FRAMES_SCHEMA = pa.schema([
    pa.field("tracklet_id", pa.int64(), nullable=False),
    pa.field("frame_idx", pa.int32(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
])
SOURCE_COLUMNS = ("camera", "video", "video_frame_first", "video_frame_last", "start_s", "end_s")


class GalleryError(DatasetError):
    """A gallery directory is missing, damaged, or does not fit the model or query."""


def gallery_tables(tracklets: pd.DataFrame, frames: pd.DataFrame,
                   sources: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The table and frames of the gallery rows ``tracklets`` (index rows, in gallery order).

    ``frames`` is the index's frames table; ``sources`` (video sources) maps a tracklet
    ``name`` to its camera name, video and frame range (:data:`SOURCE_COLUMNS`).
    """
    t = tracklets.reset_index(drop=True)
    starts, counts = t["frame_offset"].to_numpy(np.int64), t["n_frames"].to_numpy(np.int64)
    take = np.concatenate([np.arange(a, a + n) for a, n in zip(starts, counts)]) if len(t) else np.zeros(0, np.int64)
    paths = frames["path"].to_numpy(object)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    table = pd.DataFrame({
        "row": np.arange(len(t), dtype=np.int64), "tracklet_id": t["tracklet_id"].astype(np.int64),
        "split": t["split"].astype(str), "pid": t["pid"].astype("Int64"), "camid": t["camid"].astype(np.int64),
        "camera": [f"C{c + 1}" for c in t["camid"]], "name": t["name"].astype(str),
        "n_frames": counts, "frame_offset": offsets,
        "first_frame": paths[starts], "last_frame": paths[starts + counts - 1],
        "representative_frame": paths[starts + counts // 2],
    })
    for column in SOURCE_COLUMNS[1:]:
        table[column] = None
    if sources is not None:
        src = sources.set_index("name")
        known = table["name"].isin(src.index)
        for column in SOURCE_COLUMNS:
            table.loc[known, column] = src.loc[table.loc[known, "name"], column].to_numpy()
    gallery_frames = pd.DataFrame({
        "tracklet_id": frames["tracklet_id"].to_numpy(np.int64)[take],
        "frame_idx": frames["frame_idx"].to_numpy(np.int32)[take],
        "path": paths[take],
    })
    return table, gallery_frames


def write_gallery(out_dir: str | Path, embeddings: np.ndarray, table: pd.DataFrame,
                  frames: pd.DataFrame, config: IndexConfig, header: dict[str, Any]) -> dict[str, Any]:
    """Index ``embeddings`` (row r = table row r) and write the gallery directory atomically.
    Returns the header written (``header`` plus format, sizes and the index description)."""
    if len(embeddings) != len(table):
        raise ValueError(f"{len(embeddings)} embeddings for {len(table)} gallery rows")
    index = vectors.build_index(embeddings, config)
    with atomic_dir(out_dir) as tmp:
        vectors.write_index(index, tmp / INDEX_FILE)
        pq.write_table(pa.Table.from_pandas(table, schema=TABLE_SCHEMA, preserve_index=False), tmp / TABLE_FILE)
        pq.write_table(pa.Table.from_pandas(frames, schema=FRAMES_SCHEMA, preserve_index=False), tmp / FRAMES_FILE)
        full = {
            "format": FORMAT, **header, "num_vectors": int(len(table)),
            "embedding_dim": int(embeddings.shape[1]), "metric": "cosine",
            "index": config.index,
            "index_config": {**config.to_dict(), **({"ivf_nlist": int(index.nlist)} if config.index == "ivf" else {})},
            "files": {name: (tmp / name).stat().st_size for name in (INDEX_FILE, TABLE_FILE, FRAMES_FILE)},
        }
        (tmp / HEADER_FILE).write_text(json.dumps(full, indent=2) + "\n")
    return full


@dataclass
class Gallery:
    """An opened gallery directory: ``header``, ``table`` (pandas), ``config`` and the index."""

    path: Path
    header: dict[str, Any]
    table: pd.DataFrame
    config: IndexConfig
    index: Any
    _frames: list[str] | None = field(default=None, repr=False)

    @classmethod
    def open(cls, path: str | Path) -> "Gallery":
        path = Path(path)
        header_path = path / HEADER_FILE
        if not header_path.is_file():
            raise GalleryError(f"{path} is not a gallery (no {HEADER_FILE}); build it with "
                               "`python -m pipeline gallery` (or `dvc repro gallery`)")
        try:
            header = json.loads(header_path.read_text())
        except ValueError as e:
            raise GalleryError(f"gallery header {header_path} is unreadable ({e}); {REBUILD}") from None
        if header.get("format") != FORMAT:
            raise GalleryError(f"{path} holds gallery format {header.get('format')!r}, this code reads "
                               f"{FORMAT!r}; {REBUILD}")
        for name, size in header["files"].items():
            f = path / name
            if not f.is_file() or f.stat().st_size != size:
                raise GalleryError(f"gallery file {f} is missing or has the wrong size (truncated?); {REBUILD}")
        index = vectors.read_index(path / INDEX_FILE)
        table = pq.read_table(path / TABLE_FILE).to_pandas()
        if index.ntotal != len(table) or index.d != header["embedding_dim"]:
            raise GalleryError(f"gallery {path}: the index holds {index.ntotal} x {index.d} vectors but the "
                               f"table {len(table)} rows of {header['embedding_dim']}; {REBUILD}")
        config = IndexConfig.from_dict(header["index_config"])
        return cls(path, header, table, config, index)

    def vector(self, row: int) -> np.ndarray:
        """The stored (L2-normalised) embedding of one row."""
        if self.config.index == "ivf":
            self.index.make_direct_map()
        return self.index.reconstruct(int(row))

    def frame_paths(self, row: int, root: Path) -> list[Path]:
        """The frame files of one row, in temporal order (``root``: the dataset root)."""
        if self._frames is None:
            self._frames = pq.read_table(self.path / FRAMES_FILE, columns=["path"]).column("path").to_pylist()
        off, n = int(self.table.at[row, "frame_offset"]), int(self.table.at[row, "n_frames"])
        return [root / p for p in self._frames[off:off + n]]

    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, cosine distances)`` of the ``k`` nearest allowed rows, nearest first."""
        sims, rows = vectors.search(self.index, self.config, query.reshape(1, -1), k, allowed)
        keep = rows[0] >= 0
        return rows[0][keep], (1.0 - sims[0][keep]).astype(np.float64)
