"""The frame cache: every indexed frame, already at the model's input size, in a few big files.

Why: a training clip is 8 frames from random places of a random tracklet; reading them as
8 small JPEG files (open, decode, resize) per clip is what limits a data loader. The cache
stage does the decode + resize (antialias; bicubic, or per frame the interpolation its split
uses: the reference resizes training frames bicubically and test frames bilinearly) once and
stores the frames so that a clip is a handful of positional reads from a few shard files.

Layout of a cache directory (``format_version`` 2)::

    header.json       format, frame size, counts, per-file sizes and sha256, source fingerprint
    tracklets.npy     int64 (tracklet_table_rows, 2): frame_offset, n_frames per tracklet id
                      (row t = tracklet id t; n_frames 0 for ids absent from the index)
    crc32c.npy        uint32 (num_frames,): CRC-32C of every frame's stored bytes
    frames.npy        "jpeg" only: int64 (num_frames, 3): shard, byte offset, byte length
    shard-00000.bin   the frames, in frames.parquet row order (tracklet-major, temporal)

Frame row r of the cache is row r of frames.parquet, so the frames of tracklet t are rows
``frame_offset[t] : frame_offset[t] + n_frames[t]`` (contiguous). Formats:

- ``"raw"``: uint8 ``3 x H x W`` per frame (exactly what a clip tensor holds), fixed
  ``frames_per_shard`` per shard: row r lives in shard ``r // frames_per_shard`` at byte
  ``(r % frames_per_shard) * 3*H*W``. Lossless, fastest to read, 96 KiB a frame at 256 x 128.
- ``"jpeg"``: JPEG bytes per frame (the original file's bytes when it is already a JPEG of
  size H x W, as MARS frames are, else re-encoded at ``jpeg_quality``), located through
  frames.npy, decoded with ``torchvision.io.decode_jpeg`` (one batched call per clip).
  Roughly 10-20x smaller than raw.
- ``"auto"`` (build only) picks raw when it takes at most half the free disk, else jpeg.

Reads use ``os.preadv`` on file descriptors that each process opens lazily on first use
(and reopens after a fork), straight into the output tensor for raw: nothing is shared
across DataLoader workers and nothing is memory-mapped, so a loading loop's resident memory
stays bounded by its batch, whatever the size of the cache.

Integrity: opening checks the header, the version and every file's size (cheap); the small
tables are also checksummed at open; every frame read is checked against its CRC-32C (the
CPU's crc32 instruction via google-crc32c: see benchmarks/bench_integrity.py), so damaged bytes are never used whichever
stage reads them. :meth:`FrameCache.verify` recomputes every shard's sha256. Any mismatch is
one :class:`CacheError` naming the file and saying to rebuild.
"""
from __future__ import annotations

import collections
import hashlib
import io
import json
import os
import shutil
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import google_crc32c
import numpy as np
import pandas as pd
import torch
from torchvision.io import ImageReadMode, decode_image, decode_jpeg, encode_jpeg
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F
from tqdm.auto import tqdm

from psta.atomic import atomic_dir
from psta.errors import UserError

# torchvision 0.29 deprecates its image codecs in favour of TorchCodec (not a dependency
# here); they still work, and warning on every frame would drown the logs.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of "
                        "TorchVision are deprecated", category=DeprecationWarning)

FORMAT_VERSION = 2
FORMATS = ("raw", "jpeg")
HEADER_FILE = "header.json"
TRACKLETS_FILE = "tracklets.npy"
FRAMES_FILE = "frames.npy"
CRC_FILE = "crc32c.npy"
REBUILD_HINT = "rebuild it with the cache stage (`python -m pipeline cache`)"
_CHUNK = 64          # frames per build work item
INTERPOLATIONS = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}
_HASH_BLOCK = 8 << 20


class CacheError(UserError, ValueError):
    """A frame cache is missing, corrupt, truncated, of another version, or from another index."""


# --------------------------------------------------------------------------- frames

def _read_source(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"frame file not found: {path} (is data.root right? "
                                f"is the index up to date?)") from None


def _decode_resize(data: bytes, path: Path, height: int, width: int,
                   interpolation: str = "bicubic") -> tuple[torch.Tensor, bool]:
    try:
        img = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                           mode=ImageReadMode.RGB)
    except RuntimeError as e:
        raise ValueError(f"cannot decode frame file {path}: {e}") from None
    at_size = tuple(img.shape[-2:]) == (height, width)
    if not at_size:
        img = F.resize(img, [height, width], interpolation=INTERPOLATIONS[interpolation],
                       antialias=True)
    return img.contiguous(), at_size


def load_frame(path: str | os.PathLike, height: int, width: int,
               interpolation: str = "bicubic") -> torch.Tensor:
    """One source frame as the cache stores it: decoded RGB uint8 ``3 x H x W``, resized
    (``interpolation``, antialias) when it is not already ``H x W``. A raw cache holds exactly this."""
    path = Path(path)
    return _decode_resize(_read_source(path), path, height, width, interpolation)[0]


def _prepare_frame(path: Path, height: int, width: int, fmt: str, quality: int,
                   interpolation: str) -> tuple[bytes, bool]:
    """Bytes to store for one frame, and whether they are the source file's own bytes."""
    data = _read_source(path)
    img, at_size = _decode_resize(data, path, height, width, interpolation)
    if fmt == "raw":
        return img.numpy().tobytes(), False
    if at_size and data[:2] == b"\xff\xd8":  # a JPEG already at size: keep it as it is
        return data, True
    return encode_jpeg(img, quality=quality).numpy().tobytes(), False


def _prepare_chunk(paths: list[Path], height: int, width: int, fmt: str, quality: int,
                   interpolations: Sequence[str]):
    return [_prepare_frame(p, height, width, fmt, quality, i) for p, i in zip(paths, interpolations)]


def _interpolations(interpolation: str | Sequence[str], n: int) -> np.ndarray:
    """One interpolation name per frame row, each checked."""
    names = np.full(n, interpolation, dtype=object) if isinstance(interpolation, str) \
        else np.asarray(list(interpolation), dtype=object)
    if len(names) != n:
        raise ValueError(f"{len(names)} interpolation names for {n} frames; give one name or one per frame")
    unknown = sorted(set(names.tolist()) - set(INTERPOLATIONS))
    if unknown:
        raise ValueError(f"unknown interpolation {unknown[0]!r}; choose {' or '.join(INTERPOLATIONS)}")
    return names


# --------------------------------------------------------------------------- build

def frames_fingerprint(frames: pd.DataFrame) -> str:
    """sha256 of the (tracklet_id, frame_idx, path) columns: which frames a cache holds."""
    h = hashlib.sha256()
    h.update(frames["tracklet_id"].to_numpy(dtype=np.int64).tobytes())
    h.update(frames["frame_idx"].to_numpy(dtype=np.int32).tobytes())
    h.update("\n".join(frames["path"].astype(str).tolist()).encode("utf-8"))
    return h.hexdigest()


def _tracklet_table(frames: pd.DataFrame) -> np.ndarray:
    for col in ("tracklet_id", "frame_idx", "path"):
        if col not in frames.columns:
            raise ValueError(f"frames table has no column {col!r} (see docs/CONTRACTS.md)")
    if len(frames) == 0:
        raise ValueError("frames table is empty: nothing to cache")
    tid = frames["tracklet_id"].to_numpy(dtype=np.int64)
    fidx = frames["frame_idx"].to_numpy(dtype=np.int64)
    if tid.min() < 0 or np.any(np.diff(tid) < 0):
        raise ValueError("frames table must be sorted by tracklet_id (>= 0), as frames.parquet is")
    ids, first, counts = np.unique(tid, return_index=True, return_counts=True)
    expected = np.arange(len(tid), dtype=np.int64) - np.repeat(first, counts)
    bad = np.flatnonzero(fidx != expected)
    if len(bad):
        r = int(bad[0])
        raise ValueError(f"frames table row {r}: tracklet {tid[r]} has frame_idx {fidx[r]}, "
                         f"expected {expected[r]} (frame_idx must be 0..n-1 in order)")
    table = np.zeros((int(ids[-1]) + 1, 2), dtype=np.int64)
    table[ids, 0] = first
    table[ids, 1] = counts
    return table


def resolve_format(fmt: str, num_frames: int, height: int, width: int,
                   out_dir: str | os.PathLike, max_disk_fraction: float = 0.5) -> tuple[str, str]:
    """``(format, reason)``: ``fmt`` itself, or for ``"auto"`` raw when its size is at most
    ``max_disk_fraction`` of the free disk at ``out_dir``, else jpeg."""
    if fmt in FORMATS:
        return fmt, "requested"
    if fmt != "auto":
        raise ValueError(f"unknown cache format {fmt!r}; use one of {FORMATS + ('auto',)}")
    need = num_frames * 3 * height * width
    where = Path(out_dir).absolute()
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free
    gib = 1 << 30
    if need <= max_disk_fraction * free:
        return "raw", f"auto: raw needs {need / gib:.2f} GiB, {free / gib:.1f} GiB free"
    return "jpeg", (f"auto: raw would need {need / gib:.1f} GiB, more than "
                    f"{max_disk_fraction:.0%} of {free / gib:.1f} GiB free")


class _ShardWriter:
    def __init__(self, out: Path, fmt: str, shard_bytes: int, frame_bytes: int, num_frames: int):
        self.out, self.fmt, self.shard_bytes = out, fmt, shard_bytes
        self.frame_bytes = frame_bytes
        self.frames_per_shard = max(1, shard_bytes // frame_bytes)
        self.frames = np.zeros((num_frames, 3), dtype=np.int64) if fmt == "jpeg" else None
        self.crc = np.zeros(num_frames, dtype=np.uint32)
        self.shards: list[dict] = []
        self._f = None

    def _open(self, first_row: int) -> None:
        self._close_current()
        name = f"shard-{len(self.shards):05d}.bin"
        self._f = open(self.out / name, "wb")
        self._hash = hashlib.sha256()
        self.shards.append({"file": name, "bytes": 0, "first_frame": first_row, "num_frames": 0})

    def _close_current(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
            self.shards[-1]["sha256"] = self._hash.hexdigest()

    def add(self, row: int, data: bytes) -> None:
        cur = self.shards[-1] if self.shards else None
        if self.fmt == "raw":
            if len(data) != self.frame_bytes:
                raise AssertionError("raw frame of the wrong size")
            if cur is None or cur["num_frames"] == self.frames_per_shard:
                self._open(row)
        elif cur is None or (cur["bytes"] > 0 and cur["bytes"] + len(data) > self.shard_bytes):
            self._open(row)
        cur = self.shards[-1]
        if self.frames is not None:
            self.frames[row] = (len(self.shards) - 1, cur["bytes"], len(data))
        self._f.write(data)
        self._hash.update(data)
        self.crc[row] = google_crc32c.value(data)
        cur["bytes"] += len(data)
        cur["num_frames"] += 1

    def close(self) -> list[dict]:
        self._close_current()
        return self.shards

    def abort(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def _map_ordered(fn: Callable, items: Iterable[tuple], num_workers: int) -> Iterator:
    """``fn(*item)`` for each item, in order; at most ~2 x num_workers items in flight."""
    if num_workers <= 0:
        for item in items:
            yield fn(*item)
        return
    # threads: decode / resize / encode are torch ops that release the GIL
    ex = ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="frame-cache")
    pending: collections.deque = collections.deque()
    try:
        for item in items:
            pending.append(ex.submit(fn, *item))
            if len(pending) >= 2 * num_workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def _save_table(path: Path, array: np.ndarray) -> dict:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    data = buf.getvalue()
    path.write_bytes(data)
    return {"file": path.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def build_frame_cache(frames_df: pd.DataFrame, root: str | os.PathLike | None,
                      out_dir: str | os.PathLike, height: int = 256, width: int = 128,
                      format: str = "auto", shard_bytes: int = 1 << 30, num_workers: int = 0,
                      jpeg_quality: int = 95, progress: bool = True,
                      interpolation: str | Sequence[str] = "bicubic") -> dict:
    """Build the frame cache of ``frames_df`` (the frames.parquet table) into ``out_dir``.

    Args:
        frames_df: the frames.parquet table (columns ``tracklet_id, frame_idx, path``, sorted
            by (tracklet_id, frame_idx); other columns are ignored).
        root: the dataset root that ``path`` is relative to (None: paths are usable as is).
        out_dir: the cache directory; written atomically (a failed build leaves the previous
            cache, or nothing).
        height, width: the stored frame size (the model's input size).
        format: ``"raw"``, ``"jpeg"`` or ``"auto"`` (see :func:`resolve_format`).
        shard_bytes: target shard size (raw: ``shard_bytes // (3*H*W)`` frames per shard).
        num_workers: decoding threads (0: decode in the calling thread).
        jpeg_quality: quality of re-encoded frames (jpeg format, frames not already a JPEG
            of size H x W).
        progress: show a tqdm progress bar (on a terminal only).
        interpolation: ``"bicubic"`` or ``"bilinear"`` (antialiased) for frames that are not
            already H x W: one name, or one per frame row (e.g. bicubic for the training
            split and bilinear for the test splits, as the reference resizes them).

    Returns:
        stats: format (and why), num_frames, num_tracklets, bytes, shards, passthrough
        frames, build seconds and frames per second.
    """
    t0 = time.perf_counter()
    frames = frames_df
    height, width = int(height), int(width)
    table = _tracklet_table(frames)
    n = len(frames)
    fmt, reason = resolve_format(format, n, height, width, out_dir)
    interps = _interpolations(interpolation, n)
    root_path = Path(root) if root is not None else Path()
    rel = frames["path"].to_numpy()
    fingerprint = frames_fingerprint(frames)
    frame_bytes = 3 * height * width
    passthrough = 0

    # work items are made as they are consumed: one chunk of Paths at a time
    items = (([root_path / str(p) for p in rel[a:a + _CHUNK]], height, width, fmt, jpeg_quality,
              interps[a:a + _CHUNK]) for a in range(0, n, _CHUNK))
    with atomic_dir(out_dir) as tmp:
        writer = _ShardWriter(tmp, fmt, int(shard_bytes), frame_bytes, n)
        row = 0
        try:
            with tqdm(total=n, unit="frame", desc=f"frame cache ({fmt})", disable=None if progress else True,
                      mininterval=1.0) as bar:
                for results in _map_ordered(_prepare_chunk, items, num_workers):
                    for data, kept in results:
                        writer.add(row, data)
                        passthrough += kept
                        row += 1
                    bar.update(len(results))
        except BaseException:
            writer.abort()
            raise
        shards = writer.close()
        tables = [_save_table(tmp / TRACKLETS_FILE, table), _save_table(tmp / CRC_FILE, writer.crc)]
        if fmt == "jpeg":
            tables.append(_save_table(tmp / FRAMES_FILE, writer.frames))
        header = {
            "format_version": FORMAT_VERSION,
            "format": fmt,
            "height": height,
            "width": width,
            "channels": 3,
            "dtype": "uint8",
            "frame_layout": "CHW",
            "num_frames": n,
            "tracklet_table_rows": int(table.shape[0]),
            "frame_bytes": frame_bytes if fmt == "raw" else None,
            "frames_per_shard": writer.frames_per_shard if fmt == "raw" else None,
            "jpeg_quality": jpeg_quality if fmt == "jpeg" else None,
            "resize": {"antialias": True,  # frames per interpolation (only those not at size are resized)
                       "interpolation": {k: int(v) for k, v in collections.Counter(interps.tolist()).items()}},
            "tables": tables,
            "shards": shards,
            "source": {"num_frames": n, "frames_sha256": fingerprint},
        }
        (tmp / HEADER_FILE).write_text(json.dumps(header, indent=1, sort_keys=True) + "\n")
    seconds = time.perf_counter() - t0
    total = sum(s["bytes"] for s in shards) + sum(t["bytes"] for t in tables)
    return {
        "format": fmt,
        "format_reason": reason,
        "num_frames": n,
        "num_tracklets": int((table[:, 1] > 0).sum()),
        "height": height,
        "width": width,
        "bytes": int(total),
        "shards": len(shards),
        "passthrough_frames": int(passthrough),
        "build_seconds": round(seconds, 3),
        "frames_per_second": round(n / max(seconds, 1e-9), 1),
    }


# --------------------------------------------------------------------------- read

class FrameCache:
    """Read clips from a frame cache directory built by :func:`build_frame_cache`.

    ``FrameCache(path)`` checks the header and every file's size (and the small tables'
    checksums); ``verify()`` checks every shard's sha256. ``read(tracklet_id, indices)`` and
    ``read_rows(rows)`` return uint8 ``len x 3 x H x W`` tensors. Safe to use from many
    DataLoader workers (file descriptors are opened lazily, per process) and threads.
    """

    def __init__(self, path: str | os.PathLike, verify: bool = False, check_reads: bool = True):
        self.path = Path(path)
        header_path = self.path / HEADER_FILE
        if not header_path.is_file():
            raise CacheError(f"{self.path} is not a frame cache (no {HEADER_FILE}); "
                             f"build it with the cache stage (`python -m pipeline cache`)")
        try:
            header = json.loads(header_path.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise CacheError(f"frame cache header {header_path} is unreadable ({e}); "
                             f"{REBUILD_HINT}") from None
        version = header.get("format_version")
        if version != FORMAT_VERSION:
            raise CacheError(f"frame cache {self.path} has format_version {version!r}, this code "
                             f"reads version {FORMAT_VERSION}; {REBUILD_HINT}")
        if header.get("format") not in FORMATS:
            raise CacheError(f"frame cache {self.path}: unknown format {header.get('format')!r}; "
                             f"{REBUILD_HINT}")
        self.header = header
        self.format: str = header["format"]
        self.height: int = int(header["height"])
        self.width: int = int(header["width"])
        self.num_frames: int = int(header["num_frames"])
        self._shards = header["shards"]
        for s in self._shards:
            self._check_size(s)
        tables = {}
        for t in header["tables"]:
            self._check_size(t)
            data = (self.path / t["file"]).read_bytes()
            if hashlib.sha256(data).hexdigest() != t["sha256"]:
                raise CacheError(f"frame cache file {self.path / t['file']} fails its sha256 "
                                 f"check (corrupt); {REBUILD_HINT}")
            tables[t["file"]] = np.load(io.BytesIO(data), allow_pickle=False)
        self._tracklets: np.ndarray = tables[TRACKLETS_FILE]
        self._frames: np.ndarray | None = tables.get(FRAMES_FILE)
        self._crc: np.ndarray | None = tables[CRC_FILE] if check_reads else None
        if self.format == "raw":
            self.frame_bytes = int(header["frame_bytes"])
            self.frames_per_shard = int(header["frames_per_shard"])
        self._lock = threading.Lock()
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()
        if verify:
            self.verify()

    # -- bookkeeping
    def _check_size(self, entry: dict) -> None:
        f = self.path / entry["file"]
        try:
            size = f.stat().st_size
        except FileNotFoundError:
            raise CacheError(f"frame cache file {f} is missing; {REBUILD_HINT}") from None
        if size != entry["bytes"]:
            raise CacheError(f"frame cache file {f} has {size} bytes, the header says "
                             f"{entry['bytes']} (truncated or corrupt); {REBUILD_HINT}")

    def __len__(self) -> int:
        return self.num_frames

    def __repr__(self) -> str:
        return (f"FrameCache({str(self.path)!r}, format={self.format!r}, "
                f"{self.height}x{self.width}, frames={self.num_frames})")

    @property
    def num_tracklets(self) -> int:
        """Size of the tracklet id space (``max tracklet_id + 1``)."""
        return int(self._tracklets.shape[0])

    def tracklet(self, tracklet_id: int) -> tuple[int, int]:
        """``(frame_offset, n_frames)`` of a tracklet (row range of its frames)."""
        if not 0 <= tracklet_id < len(self._tracklets) or self._tracklets[tracklet_id, 1] == 0:
            raise KeyError(f"tracklet {tracklet_id} is not in the frame cache {self.path}")
        off, n = self._tracklets[tracklet_id]
        return int(off), int(n)

    def check_tracklets(self, tracklets: pd.DataFrame) -> None:
        """Raise CacheError unless every row's (tracklet_id, frame_offset, n_frames) matches."""
        tid = tracklets["tracklet_id"].to_numpy(dtype=np.int64)
        want = tracklets[["frame_offset", "n_frames"]].to_numpy(dtype=np.int64)
        ok = (tid >= 0) & (tid < len(self._tracklets))
        have = np.zeros_like(want)
        have[ok] = self._tracklets[tid[ok]]
        bad = np.flatnonzero(~ok | np.any(have != want, axis=1))
        if len(bad):
            i = int(bad[0])
            raise CacheError(
                f"frame cache {self.path} does not match the index: tracklet {tid[i]} has "
                f"(frame_offset, n_frames) = {tuple(want[i])} in the index but "
                f"{tuple(have[i])} in the cache ({len(bad)} tracklets differ); {REBUILD_HINT}")

    def _fd(self, shard: int) -> int:
        pid = os.getpid()
        if pid != self._pid:  # forked: close the inherited copies, never use them
            for inherited in self._fds.values():
                try:
                    os.close(inherited)
                except OSError:
                    pass
            self._fds = {}
            self._lock = threading.Lock()
            self._pid = pid
        fd = self._fds.get(shard)
        if fd is None:
            with self._lock:
                fd = self._fds.get(shard)
                if fd is None:
                    fd = os.open(self.path / self._shards[shard]["file"], os.O_RDONLY)
                    self._fds[shard] = fd
        return fd

    def close(self) -> None:
        """Close this process's file descriptors (reads reopen them as needed)."""
        if getattr(self, "_pid", None) == os.getpid():
            for fd in getattr(self, "_fds", {}).values():
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._fds = {}

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fds"], state["_lock"], state["_pid"] = {}, None, None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def _short_read(self, shard: int) -> CacheError:
        return CacheError(f"frame cache file {self.path / self._shards[shard]['file']} is "
                          f"shorter than its header says (truncated); {REBUILD_HINT}")

    def _check_crc(self, row: int, data, shard: int) -> None:
        # google-crc32c takes numpy rows and bytes, not a bytearray (a jpeg frame: a small copy)
        if google_crc32c.value(data if isinstance(data, np.ndarray) else bytes(data)) != int(self._crc[row]):
            raise CacheError(f"frame cache file {self.path / self._shards[shard]['file']} is "
                             f"damaged: frame row {row} fails its CRC-32C check; {REBUILD_HINT}")

    # -- reads
    def read(self, tracklet_id: int, frame_indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        """Frames ``frame_indices`` (0-based, within the tracklet) of a tracklet: uint8 T x 3 x H x W."""
        off, n = self.tracklet(int(tracklet_id))
        idx = np.asarray(frame_indices, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"frame index out of range for tracklet {tracklet_id} "
                             f"({n} frames): {idx.tolist()}")
        return self.read_rows(off + idx)

    def read_rows(self, rows: Sequence[int] | np.ndarray) -> torch.Tensor:
        """Frames by global row (frames.parquet row): uint8 ``len(rows) x 3 x H x W``."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.num_frames):
            raise IndexError(f"frame row out of range [0, {self.num_frames}): {rows.tolist()}")
        if self.format == "raw":
            return self._read_raw(rows)
        return self._read_jpeg(rows)

    def _read_raw(self, rows: np.ndarray) -> torch.Tensor:
        out = torch.empty((len(rows), 3, self.height, self.width), dtype=torch.uint8)
        buf = out.numpy().reshape(len(rows), self.frame_bytes)
        fps, fb = self.frames_per_shard, self.frame_bytes
        r = rows.tolist()
        i = 0
        while i < len(r):  # one read per run of consecutive rows in one shard
            shard, j = r[i] // fps, i + 1
            while j < len(r) and r[j] == r[j - 1] + 1 and r[j] // fps == shard:
                j += 1
            want = (j - i) * fb
            if os.preadv(self._fd(shard), [buf[i:j]], (r[i] % fps) * fb) != want:
                raise self._short_read(shard)
            if self._crc is not None:
                for k in range(i, j):
                    self._check_crc(r[k], buf[k], shard)
            i = j
        return out

    def _read_jpeg(self, rows: np.ndarray) -> torch.Tensor:
        if len(rows) < 2 or np.all(np.diff(rows) > 0):  # sorted, distinct: the usual clip
            uniq, inverse = rows, None
        else:
            uniq, inverse = np.unique(rows, return_inverse=True)
        datas = []
        for row, (shard, offset, length) in zip(uniq.tolist(), self._frames[uniq].tolist()):
            b = bytearray(length)
            if os.preadv(self._fd(shard), [b], offset) != length:
                raise self._short_read(shard)
            if self._crc is not None:
                self._check_crc(row, b, shard)
            datas.append(torch.frombuffer(b, dtype=torch.uint8))
        try:
            imgs = decode_jpeg(datas, mode=ImageReadMode.RGB) if datas else []
        except RuntimeError as e:
            files = sorted({self._shards[s]["file"] for s in self._frames[uniq, 0].tolist()})
            raise CacheError(f"frame cache {self.path}: cannot decode frames from {files} "
                             f"({e}); run verify() to find the corrupt shard and "
                             f"{REBUILD_HINT}") from None
        for img in imgs:
            if img.shape != (3, self.height, self.width):
                raise CacheError(f"frame cache {self.path}: a frame decodes to "
                                 f"{tuple(img.shape)}, header says 3x{self.height}x{self.width}; "
                                 f"{REBUILD_HINT}")
        if not imgs:
            return torch.empty((0, 3, self.height, self.width), dtype=torch.uint8)
        if inverse is None:
            return torch.stack(imgs)
        return torch.stack([imgs[k] for k in inverse.reshape(-1).tolist()])

    # -- integrity
    def verify(self, progress: bool = False) -> dict:
        """Recompute every shard's sha256; raise CacheError naming the first bad shard."""
        total = 0
        for s in tqdm(self._shards, desc="verify frame cache", unit="shard", disable=not progress):
            self._check_size(s)
            f = self.path / s["file"]
            h = hashlib.sha256()
            with open(f, "rb") as fh:
                while block := fh.read(_HASH_BLOCK):
                    h.update(block)
            if h.hexdigest() != s["sha256"]:
                raise CacheError(f"frame cache file {f} fails its sha256 check (corrupt); "
                                 f"{REBUILD_HINT}")
            total += s["bytes"]
        return {"shards": len(self._shards), "bytes": total}
