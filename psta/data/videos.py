"""Bring your own cameras: turn per-camera videos + box files into a MARS-layout dataset.

Input (``src_root``, the pipeline's ``data.root``)::

    <camera>.mp4 | .avi | .mkv     one video per camera
    <camera>.txt                   its boxes, MOTChallenge format (see psta.data.mot):
                                   frame, id, left, top, width, height[, conf, ...]; frames 1-based
    identities.csv                 optional: camera, track_id, identity (per-camera track -> person)

Cameras are numbered 1, 2, ... in sorted file-name order (MARS names hold one camera digit, so at
most 9). Without ``identities.csv`` a track id names the same person in every camera.

What happens, in this order (every count lands in the returned stats):

1. rows with ``conf == 0`` are ignored (MOTChallenge ground truth marks "do not consider"
   entries that way; ``skip_zero_conf``); with ``identities.csv``, tracks it does not list are
   dropped (``unlabelled``);
2. every box is clipped to the frame (``clipped``); a box with nothing inside the frame is
   dropped (``outside_frame``);
3. each track (boxes of one track id in one camera, in frame order) keeps every
   ``frame_stride``-th box; a track left with fewer than ``min_tracklet_len`` boxes is dropped
   (``dropped_short``); a longer one of L boxes is cut into ``ceil(L / max_tracklet_len)``
   tracklets of near-equal length (their lengths differ by at most one frame);
4. identities are split into train and test with a seeded fraction (``test_fraction``,
   ``seed``), separately among identities seen by two or more cameras and those seen by one,
   so the test set always holds identities that can be queried. Each multi-camera test
   identity gives one query tracklet per camera as long as every query keeps a gallery
   tracklet of its identity in another camera (so every query has a valid match under both the
   MARS and the torchreid protocol); single-camera test identities have no query and sit in
   the gallery with their real pid, as hard negatives (MARS's gallery-only identities);
5. the frames that carry kept boxes are decoded with decord in sorted batches of at most
   ``decode_batch`` frames / ``decode_batch_mb`` MiB, cut at keyframes (random-access reads;
   never the whole video; see :func:`iter_frame_batches`), each box is cropped
   and resized to ``height x width`` (PIL, antialiased bicubic) and written as a JPEG named
   ``PPPPCcTttttFfff.jpg`` under ``bbox_train/`` or ``bbox_test/``, with ``info/`` written by
   :mod:`psta.data.mars_layout`. The output root is written atomically.

pids: if every identity is an integer in 1..9999 it is its own pid; otherwise identities are
numbered 1..K in sorted order (the map is in ``stats["pids"]``). pid 0 (MARS distractor) and
-1 (junk) are never used.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import Field, model_validator

from psta.atomic import atomic_dir
from psta.config import FieldError, Section
from psta.data.mars_layout import (
    MAX_CAMERAS,
    MAX_FRAMES_PER_TRACKLET,
    MAX_PID,
    MAX_TRACKLETS_PER_CAMERA,
    track_numbers,
    tracklet_files,
    write_mars_info,
)
from psta.data.mot import MotBoxes, read_identities, read_mot_boxes
from psta.errors import DatasetError

__all__ = [
    "VideoIngestConfig",
    "VIDEO_EXTENSIONS",
    "IDENTITIES_FILE",
    "Camera",
    "find_cameras",
    "probe_video",
    "clip_boxes",
    "crop_resize",
    "iter_frame_batches",
    "batch_bounds",
    "frames_per_batch",
    "build_mars_from_videos",
]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv")
IDENTITIES_FILE = "identities.csv"

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
             "lanczos": Image.Resampling.LANCZOS}


class VideoIngestConfig(Section):
    """Knobs of :func:`build_mars_from_videos` (defaults: MARS-sized crops, every frame).

    height, width: person-crop size written (MARS: 256 x 128).
    frame_stride: keep every k-th box of a track (1 = all). DukeMTMC-VideoReID kept 12 frames a
        second of its 59.94 fps videos ("we crop pedestrian images from the videos for 12 frames
        every second", its README), i.e. frame_stride 5; MARS kept every frame of its tracks.
    min_tracklet_len: tracks with fewer sampled boxes are dropped (counted).
    max_tracklet_len: longer tracks are cut into ceil(L / max) near-equal tracklets (<= 999,
        the MARS frame-number width).
    test_fraction, seed: seeded identity split into train / test.
    interpolation: "bicubic" (default), "bilinear" or "lanczos"; PIL resizes with antialiasing.
    jpeg_quality: JPEG quality of the written crops.
    decode_batch, decode_batch_mb: frames per decord ``get_batch`` call, and a cap on their
        size as RGB (32 frames up to 1080p; 10 at 4K). Memory holds about two batches.
    skip_zero_conf: ignore rows whose 7th column (conf) is 0 (MOTChallenge "do not consider").
    on_empty_identity: "error" (default) or "drop" an identity that has boxes but no frame left
        after filtering.
    """

    height: int = Field(256, ge=8)
    width: int = Field(128, ge=4)
    frame_stride: int = Field(1, ge=1)
    min_tracklet_len: int = Field(2, ge=1, le=MAX_FRAMES_PER_TRACKLET)
    max_tracklet_len: int = Field(100, ge=1, le=MAX_FRAMES_PER_TRACKLET)  # three frame digits in MARS names
    test_fraction: float = Field(0.5, gt=0, lt=1)
    seed: int = Field(0, ge=0)
    interpolation: Literal["bicubic", "bilinear", "lanczos"] = "bicubic"
    jpeg_quality: int = Field(95, ge=1, le=100)
    decode_batch: int = Field(32, ge=1)
    decode_batch_mb: float = Field(256.0, gt=0)
    skip_zero_conf: bool = True
    on_empty_identity: Literal["error", "drop"] = "error"

    @model_validator(mode="after")
    def _lengths(self) -> "VideoIngestConfig":
        if self.min_tracklet_len > self.max_tracklet_len:
            raise FieldError("max_tracklet_len", self.max_tracklet_len,
                             f">= min_tracklet_len ({self.min_tracklet_len})")
        return self


# --------------------------------------------------------------------------------------------
# cameras and videos
# --------------------------------------------------------------------------------------------
@dataclass
class Camera:
    """One camera: ``camid`` 1-based, ``name`` the video's stem."""

    camid: int
    name: str
    video: Path
    boxes: Path
    num_frames: int = 0
    frame_height: int = 0
    frame_width: int = 0


def find_cameras(src_root: str | os.PathLike) -> list[Camera]:
    """The cameras under ``src_root``: its videos in sorted file-name order, each with its box file."""
    root = Path(src_root)
    if not root.is_dir():
        raise DatasetError(f"data.root {root} does not exist or is not a directory; set it to the folder "
                           f"holding one video per camera (<camera>.mp4/.avi/.mkv) and its <camera>.txt "
                           f"box file")
    videos = sorted((p for p in root.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS),
                    key=lambda p: p.name)
    if not videos:
        raise DatasetError(f"no videos (*{', *'.join(VIDEO_EXTENSIONS)}) in data.root {root}; put one video "
                           f"per camera there, each with its <camera>.txt box file (MOTChallenge format)")
    stems: dict[str, Path] = {}
    for v in videos:
        if v.stem in stems:
            raise DatasetError(f"{stems[v.stem].name} and {v.name} in {root} are the same camera "
                               f"{v.stem!r} (one box file {v.stem}.txt); keep one video per camera")
        stems[v.stem] = v
    if len(videos) > MAX_CAMERAS:
        raise DatasetError(f"{len(videos)} videos in {root} ({', '.join(v.name for v in videos)}), but MARS "
                           f"frame names hold a single camera digit: at most {MAX_CAMERAS} cameras. Split "
                           f"the cameras over several datasets (data.root folders)")
    cams = []
    for i, v in enumerate(videos, 1):
        box = v.with_suffix(".txt")
        if not box.is_file():
            raise DatasetError(f"video {v.name} has no box file {box.name} next to it in {root}; write its "
                               f"boxes there in MOTChallenge format (frame, id, left, top, width, height, "
                               f"conf, ...; frames 1-based), or move the video out of data.root")
        cams.append(Camera(camid=i, name=v.stem, video=v, boxes=box))
    return cams


def _open_video(path: Path):
    import decord  # imported here so importing psta.data does not load decord's native library

    try:
        return decord.VideoReader(str(path), ctx=decord.cpu(0))
    except (RuntimeError, OSError) as e:   # decord raises DECORDError (a RuntimeError)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DatasetError(f"cannot read video {path} with decord ({msg}); the file is damaged or not a "
                           f"video. Re-encode it (e.g. ffmpeg -i {path.name} -c:v libx264 "
                           f"{path.stem}.mp4) or remove it with its box file") from None


def probe_video(path: str | os.PathLike) -> tuple[int, int, int]:
    """``(num_frames, height, width)`` of a video (decodes its first frame).

    Also checks that decord can seek in it: its frame timestamps must increase. Some files
    (H.264 in AVI, for one) carry no packet timestamps; decord's seeks then land on the first
    frame while it counts on, so every random-access read would return the wrong frame.
    """
    path = Path(path)
    vr = _open_video(path)
    n = len(vr)
    if n < 1:
        raise DatasetError(f"video {path} has no frames; re-encode it or remove it with its box file")
    try:
        start = np.asarray(vr.get_frame_timestamp(list(range(n))), np.float64).reshape(n, -1)[:, 0]
    except RuntimeError:
        start = np.full(n, np.nan)
    ok = np.isfinite(start) & (start > -1e6)
    ok[1:] &= np.diff(start) > 0
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        raise DatasetError(
            f"video {path}: frame {i + 1} has no usable timestamp ({start[i]:g} s), so decord cannot seek "
            f"in this file and would return wrong frames (this happens with H.264 in AVI). Remux it "
            f"without re-encoding, e.g. ffmpeg -i {path.name} -c copy {path.stem}.mkv, and remove "
            f"{path.name} (the box file {path.stem}.txt stays as it is)")
    try:
        shape = vr[0].shape
    except RuntimeError as e:
        raise DatasetError(f"cannot decode the first frame of video {path} ({e}); re-encode it") from None
    return n, int(shape[0]), int(shape[1])


class _DLPack:
    """Expose a decord NDArray through the DLPack protocol, for a zero-copy ``np.from_dlpack``."""

    def __init__(self, nd):
        self.nd = nd

    def __dlpack__(self, **_):
        return self.nd.to_dlpack()

    def __dlpack_device__(self):
        return (1, 0)        # kDLCPU, device 0


def _as_numpy(nd) -> np.ndarray:
    """A decord batch as a (read-only) numpy array without copying it; ``asnumpy()`` copies."""
    try:
        return np.from_dlpack(_DLPack(nd))
    except (AttributeError, TypeError, BufferError, RuntimeError):
        return nd.asnumpy()


def frames_per_batch(max_frames: int, max_mb: float, height: int, width: int) -> int:
    """Frames per ``get_batch`` call: ``max_frames``, fewer if a batch of RGB frames would take
    more than ``max_mb`` MiB (never fewer than one)."""
    return max(1, min(int(max_frames), int(max_mb * 2**20) // max(1, height * width * 3)))


def batch_bounds(frames: np.ndarray, keyframes, max_frames: int) -> list[tuple[int, int]]:
    """Cut sorted 0-based ``frames`` into ``[a, b)`` runs of at most ``max_frames`` frames,
    ending a run at a keyframe boundary (GOP) when one falls inside it, so the next run starts
    in a GOP nothing has been decoded from yet (restarting there costs no re-decoding)."""
    frames = np.asarray(frames, np.int64)
    keys = np.asarray(sorted(int(k) for k in keyframes) or [0], np.int64)
    gop = np.searchsorted(keys, frames, side="right")
    out, a, n = [], 0, len(frames)
    while a < n:
        b = min(a + max_frames, n)
        if b < n and gop[b] == gop[b - 1]:
            change = np.flatnonzero(gop[a + 1:b] != gop[a:b - 1])
            if len(change):
                b = a + 1 + int(change[-1])
        out.append((a, b))
        a = b
    return out


def iter_frame_batches(vr, frames: np.ndarray, batch: int, path: Path | str = "video"):
    """Yield ``(frame_indices, uint8 array n x H x W x 3)`` for sorted unique 0-based ``frames``,
    at most ``batch`` frames per decord ``get_batch`` call (runs cut at keyframes, see
    :func:`batch_bounds`).

    After each batch the reader is rewound (``vr.seek(0)``), which stops decord's decoder
    thread: left alone, it keeps decoding the packets its reader pushed ahead while the caller
    works on the batch, up to the whole rest of the video held as RGB frames (decord issues
    #157, #208). The next batch then restarts from its keyframe (exact: decord's
    ``SeekAccurate``), so memory stays at one batch plus the decoder's own frames. As runs end
    at keyframes, the restart re-decodes nothing unless a GOP is longer than ``batch`` frames.
    """
    frames = np.asarray(frames, np.int64)
    try:
        keys = vr.get_key_indices()
    except RuntimeError:
        keys = []
    bounds = batch_bounds(frames, keys, batch)
    for k, (a, b) in enumerate(bounds):
        idx = frames[a:b]
        try:
            arr = _as_numpy(vr.get_batch(idx.tolist()))
            if k + 1 < len(bounds):
                vr.seek(0)
        except RuntimeError as e:
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DatasetError(f"decoding frames {int(idx[0]) + 1}..{int(idx[-1]) + 1} (1-based) of video "
                               f"{path} failed ({msg}); the file is damaged: re-encode it (e.g. ffmpeg -i "
                               f"in.mp4 -c:v libx264 out.mp4)") from None
        yield idx, arr


def clip_boxes(left, top, width, height, frame_w: int, frame_h: int):
    """Integer pixel boxes ``(x0, y0, x1, y1)`` clipped to the frame, plus masks ``clipped``
    (the box reached outside the frame) and ``outside`` (nothing of it is inside).

    A box covers every pixel it touches: ``x0 = floor(left)``, ``x1 = ceil(left + width)``.
    """
    left, top = np.asarray(left, np.float64), np.asarray(top, np.float64)
    x0 = np.floor(left).astype(np.int64)
    y0 = np.floor(top).astype(np.int64)
    x1 = np.ceil(left + np.asarray(width, np.float64)).astype(np.int64)
    y1 = np.ceil(top + np.asarray(height, np.float64)).astype(np.int64)
    clipped = (x0 < 0) | (y0 < 0) | (x1 > frame_w) | (y1 > frame_h)
    box = np.stack([np.clip(x0, 0, frame_w), np.clip(y0, 0, frame_h),
                    np.clip(x1, 0, frame_w), np.clip(y1, 0, frame_h)], axis=1)
    outside = (box[:, 2] <= box[:, 0]) | (box[:, 3] <= box[:, 1])
    return box, clipped & ~outside, outside


def crop_resize(frame: np.ndarray, box, height: int, width: int, interpolation: str = "bicubic") -> Image.Image:
    """Crop ``box`` = (x0, y0, x1, y1) out of an H x W x 3 uint8 frame and resize it to
    ``height x width`` (PIL, antialiased)."""
    x0, y0, x1, y1 = (int(v) for v in box)
    return Image.fromarray(np.ascontiguousarray(frame[y0:y1, x0:x1])).resize((width, height), _RESAMPLE[interpolation])


# --------------------------------------------------------------------------------------------
# planning
# --------------------------------------------------------------------------------------------
@dataclass
class _Track:
    cam: int              # 0-based position in the camera list
    track_id: int
    identity: str
    frame0: np.ndarray    # sampled boxes: 0-based video frames, increasing
    box: np.ndarray       # (L, 4) int64 x0, y0, x1, y1


def _check_frames_in_video(cam: Camera, boxes: MotBoxes) -> None:
    past = boxes.frame > cam.num_frames
    if past.any():
        i = int(np.flatnonzero(past)[0])
        raise DatasetError(
            f"box file {cam.boxes.name}, line {int(boxes.line[i])}: frame {int(boxes.frame[i])} is past the end "
            f"of video {cam.video.name}, which has {cam.num_frames} frames (box frames are 1-based: "
            f"1..{cam.num_frames}); {int(past.sum())} row(s) do this. The box file belongs to another or a "
            f"longer version of the video: fix the box file or replace the video")


def _check_duplicates(cam: Camera, boxes: MotBoxes) -> None:
    order = np.lexsort((boxes.frame, boxes.track))
    t, f = boxes.track[order], boxes.frame[order]
    dup = (t[1:] == t[:-1]) & (f[1:] == f[:-1])
    if dup.any():
        k = int(np.flatnonzero(dup)[0])
        a, b = sorted((int(boxes.line[order[k]]), int(boxes.line[order[k + 1]])))
        raise DatasetError(
            f"box file {cam.boxes.name}, lines {a} and {b}: track {int(t[k])} has two boxes in frame "
            f"{int(f[k])}; a track has one box per frame (a detection file with track id -1 has no "
            f"tracks: give tracker output or ground truth). Delete one of the rows")


def _assign_pids(identities: list[str]) -> tuple[dict[str, int], bool]:
    """identity -> pid; ``True`` if identities were renumbered 1..K."""
    def as_int(s: str):
        try:
            return int(s)
        except ValueError:
            return None

    ints = [as_int(s) for s in identities]
    if all(v is not None and 1 <= v <= MAX_PID for v in ints) and len(set(ints)) == len(ints):
        return {s: int(v) for s, v in zip(identities, ints)}, False
    if len(identities) > MAX_PID:
        raise DatasetError(f"{len(identities)} identities, but MARS names hold 4 identity digits (at most "
                           f"{MAX_PID}); split the cameras over several datasets")
    order = sorted(identities, key=lambda s: (0, as_int(s), s) if as_int(s) is not None else (1, 0, s))
    return {s: i for i, s in enumerate(order, 1)}, True


def _even_pieces(n: int, max_len: int) -> list[tuple[int, int]]:
    """``ceil(n / max_len)`` consecutive ``[a, b)`` ranges covering 0..n, lengths differing by <= 1."""
    k = -(-n // max_len)
    bounds = [(i * n) // k for i in range(k + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(k)]


def _choose_queries(tcam: np.ndarray, rng: np.random.Generator) -> list[int]:
    """Query tracklets of one test identity (positions into ``tcam``): one per camera, as long as
    every query keeps a non-query tracklet of the identity in another camera."""
    cams, counts = np.unique(tcam, return_counts=True)
    if len(cams) < 2:
        return []
    order = sorted(range(len(cams)), key=lambda i: (-int(counts[i]), int(cams[i])))
    chosen: list[int] = []
    for i in order:
        trial = chosen + [i]
        left = counts.copy()
        left[trial] -= 1
        if all(any(left[j] > 0 for j in range(len(cams)) if j != a) for a in trial):
            chosen = trial
    out = []
    for i in sorted(chosen):
        members = np.flatnonzero(tcam == cams[i])
        out.append(int(members[int(rng.integers(len(members)))]))
    return out


def _split_identities(ids: list[str], multi: set[str], frac: float, rng: np.random.Generator) -> set[str]:
    """The test identities: ``round(frac * n)`` of the multi-camera ones (at least one) and of the
    single-camera ones, leaving at least one train identity."""
    def pick(group: list[str], n: int) -> set[str]:
        return set(group[i] for i in rng.permutation(len(group))[:n])

    mult = [s for s in ids if s in multi]
    single = [s for s in ids if s not in multi]
    if not mult:
        raise DatasetError(
            f"no identity is seen by two or more cameras ({len(ids)} identities, each in one camera), so "
            f"no query can have a match in another camera. The same person must carry one identity in "
            f"every camera: without identities.csv, the same track id; with it, the same identity")
    n_m = min(max(1, math.floor(frac * len(mult) + 0.5)), len(mult))
    n_s = min(math.floor(frac * len(single) + 0.5), len(single))
    if n_m + n_s == len(ids):             # keep a train identity
        if n_s > 0:
            n_s -= 1
        elif n_m > 1:
            n_m -= 1
        else:
            raise DatasetError(f"only {len(ids)} identity left after filtering; a train and a test split "
                               f"need at least two identities")
    return pick(mult, n_m) | pick(single, n_s)


# --------------------------------------------------------------------------------------------
# the builder, in its steps
# --------------------------------------------------------------------------------------------
@dataclass
class _Collected:
    """What :func:`_collect_tracks` kept of the box files, and what it counted."""

    tracks: list[_Track]
    seen_ids: dict[str, list[str]]      # identity -> why its tracks were dropped
    seen_keys: set[tuple[str, int]]     # (camera name, track id) with any box
    boxes: dict[str, int]
    track_counts: dict[str, int]
    cameras: list[dict]


@dataclass
class _Tracklets:
    """Every tracklet cut from the kept tracks: ``track`` (position in the track list), frame
    range ``[a, b)`` of that track, ``length``, ``pid``, ``cam`` (1-based, as in MARS names)."""

    track: np.ndarray
    a: np.ndarray
    b: np.ndarray
    length: np.ndarray
    pid: np.ndarray
    cam: np.ndarray


def _read_inputs(src: Path, cams: list[Camera]) -> tuple[dict | None, list[MotBoxes]]:
    """identities.csv (if any) and every camera's boxes, checked before any decoding."""
    idfile = src / IDENTITIES_FILE
    idmap = None
    if idfile.is_file():
        spellings = {c.name: c.name for c in cams} | {c.video.name: c.name for c in cams}
        idmap = read_identities(idfile, spellings, display=str(idfile))
    per_cam: list[MotBoxes] = []
    for cam in cams:
        cam.num_frames, cam.frame_height, cam.frame_width = probe_video(cam.video)
        boxes = read_mot_boxes(cam.boxes, display=str(cam.boxes))
        _check_frames_in_video(cam, boxes)
        per_cam.append(boxes)
    return idmap, per_cam


def _camera_stats(cam: Camera, boxes: MotBoxes) -> dict:
    return {"camera": cam.camid, "name": cam.name, "video": cam.video.name, "box_file": cam.boxes.name,
            "video_frames": cam.num_frames, "frame_size": [cam.frame_height, cam.frame_width],
            "boxes": len(boxes), "frames_decoded": 0, "crops": 0}


def _collect_tracks(cams: list[Camera], per_cam: list[MotBoxes], idmap: dict | None,
                    cfg: VideoIngestConfig) -> _Collected:
    """Steps 1-3 of the module doc: filter the boxes, keep the sampled tracks long enough."""
    bstats = dict(read=0, ignored_zero_conf=0, unlabelled=0, outside_frame=0, clipped=0,
                  not_sampled=0, in_short_tracks=0, written=0)
    tstats = dict(read=0, unlabelled=0, outside_frame=0, dropped_short=0, kept=0)
    got = _Collected([], {}, set(), bstats, tstats, [])
    for ci, (cam, boxes) in enumerate(zip(cams, per_cam)):
        bstats["read"] += len(boxes)
        got.cameras.append(_camera_stats(cam, boxes))
        if cfg.skip_zero_conf:
            ign = boxes.conf == 0
            bstats["ignored_zero_conf"] += int(ign.sum())
            boxes = boxes.take(~ign)
        _check_duplicates(cam, boxes)
        box, clipped, outside = clip_boxes(boxes.left, boxes.top, boxes.width, boxes.height,
                                           cam.frame_width, cam.frame_height)
        for tid in np.unique(boxes.track):
            tid = int(tid)
            got.seen_keys.add((cam.name, tid))
            tstats["read"] += 1
            m = np.flatnonzero(boxes.track == tid)
            if idmap is not None and (cam.name, tid) not in idmap:
                tstats["unlabelled"] += 1
                bstats["unlabelled"] += len(m)
                continue
            ident = idmap[(cam.name, tid)][0] if idmap is not None else str(tid)
            why = got.seen_ids.setdefault(ident, [])
            bstats["clipped"] += int(clipped[m].sum())
            bstats["outside_frame"] += int(outside[m].sum())
            m = m[~outside[m]]
            if len(m) == 0:
                tstats["outside_frame"] += 1
                why.append(f"track {tid} of {cam.name}: every box outside the frame")
                continue
            m = m[np.argsort(boxes.frame[m], kind="stable")]
            s = m[::cfg.frame_stride]
            bstats["not_sampled"] += len(m) - len(s)
            if len(s) < cfg.min_tracklet_len:
                tstats["dropped_short"] += 1
                bstats["in_short_tracks"] += len(s)
                why.append(f"track {tid} of {cam.name}: {len(s)} sampled frame(s) < min_tracklet_len "
                           f"{cfg.min_tracklet_len}")
                continue
            tstats["kept"] += 1
            got.tracks.append(_Track(ci, tid, ident, boxes.frame[s] - 1, box[s]))
    return got


def _kept_identities(got: _Collected, idmap: dict | None, idfile: Path, src: Path,
                     cfg: VideoIngestConfig) -> tuple[list[str], list[str]]:
    """The identities with frames left, and those without (an error unless dropping them)."""
    if idmap is not None:
        for (cname, tid), (ident, line) in sorted(idmap.items(), key=lambda kv: kv[1][1]):
            if (cname, tid) not in got.seen_keys:
                raise DatasetError(
                    f"{idfile}, line {line}: track {tid} of camera {cname} (identity {ident!r}) has no box "
                    f"in {cname}.txt" + (" (rows with conf 0 are ignored)" if cfg.skip_zero_conf else "")
                    + "; fix the track id or delete the row")
    kept_ids = sorted({t.identity for t in got.tracks})
    empty = sorted(set(got.seen_ids) - set(kept_ids))
    if empty and cfg.on_empty_identity == "error":
        shown = "; ".join(f"{s!r} ({', '.join(got.seen_ids[s][:2])})" for s in empty[:5])
        more = f" and {len(empty) - 5} more" if len(empty) > 5 else ""
        raise DatasetError(
            f"{len(empty)} identit{'y has' if len(empty) == 1 else 'ies have'} no frames left after "
            f"filtering: {shown}{more}. Lower min_tracklet_len (now {cfg.min_tracklet_len}) or "
            f"frame_stride (now {cfg.frame_stride}), fix their boxes, remove them from the box files "
            f"/ identities.csv, or set on_empty_identity: drop to drop them (counted in the stats)")
    if not kept_ids:
        raise DatasetError(f"no track of the box files in {src} is left after filtering; see the "
                           f"min_tracklet_len / frame_stride settings and the boxes")
    return kept_ids, empty


def _cut_tracklets(tracks: list[_Track], pids: dict[str, int], max_len: int) -> _Tracklets:
    """Sort the tracks by (pid, camera, track, first frame) and cut each into tracklets."""
    tracks.sort(key=lambda t: (pids[t.identity], t.cam, t.track_id, int(t.frame0[0])))
    pieces = [(k, a, b) for k, t in enumerate(tracks) for a, b in _even_pieces(len(t.frame0), max_len)]
    track, a, b = (np.array(col) for col in zip(*pieces))
    return _Tracklets(track=track, a=a, b=b, length=b - a,
                      pid=np.array([pids[tracks[k].identity] for k in track], np.int64),
                      cam=np.array([tracks[k].cam + 1 for k in track], np.int64))


def _split_and_pick_queries(tracks: list[_Track], tl: _Tracklets, kept_ids: list[str], pids: dict[str, int],
                            cfg: VideoIngestConfig) -> tuple[set[str], set[str], np.ndarray, np.ndarray]:
    """Step 4: (test identities, multi-camera identities, per-tracklet is_test and is_query)."""
    id_cams = {s: set() for s in kept_ids}
    for t in tracks:
        id_cams[t.identity].add(t.cam)
    multi = {s for s, c in id_cams.items() if len(c) >= 2}
    rng = np.random.default_rng([cfg.seed, 4242])
    test_ids = _split_identities(kept_ids, multi, cfg.test_fraction, rng)
    test_pids = np.array(sorted(pids[s] for s in test_ids), np.int64)
    is_test = np.isin(tl.pid, test_pids)
    is_query = np.zeros(len(tl.pid), bool)
    for p in test_pids:
        members = np.flatnonzero(tl.pid == p)
        for q in _choose_queries(tl.cam[members], rng):
            is_query[members[q]] = True
    return test_ids, multi, is_test, is_query


def _mars_splits(tl: _Tracklets, is_test: np.ndarray) -> dict[str, dict]:
    """The train and test tracklets as :func:`write_mars_info` takes them (``tl``: positions)."""
    splits = {}
    for name, sel in (("train", np.flatnonzero(~is_test)), ("test", np.flatnonzero(is_test))):
        tnum = track_numbers(tl.pid[sel], tl.cam[sel])
        if len(tnum) and tnum.max() > MAX_TRACKLETS_PER_CAMERA:
            i = int(np.argmax(tnum))
            raise DatasetError(f"identity with pid {int(tl.pid[sel][i])} has more than {MAX_TRACKLETS_PER_CAMERA} "
                               f"tracklets in camera {int(tl.cam[sel][i])}, more than MARS names can number; "
                               f"raise max_tracklet_len or frame_stride")
        splits[name] = {"pid": tl.pid[sel], "cam": tl.cam[sel], "tnum": tnum, "length": tl.length[sel], "tl": sel}
    return splits


def _write_crops(tmp: Path, cams: list[Camera], tracks: list[_Track], tl: _Tracklets, written: dict,
                 cfg: VideoIngestConfig, got: _Collected) -> None:
    """Step 5: decode each camera's needed frames once, in order, and write every crop."""
    cam_jobs: list[list] = [[] for _ in cams]    # per camera: (frame0 array, box array, path list)
    for split in ("train", "test"):
        for k, (sub, names) in zip(written[split]["tl"], tracklet_files(written, split), strict=True):
            t = tracks[int(tl.track[k])]
            a, b = int(tl.a[k]), int(tl.b[k])
            (tmp / sub).mkdir(parents=True, exist_ok=True)
            cam_jobs[t.cam].append((t.frame0[a:b], t.box[a:b], [f"{sub}/{n}" for n in names]))
    for ci, cam in enumerate(cams):
        if not cam_jobs[ci]:
            continue
        frame0 = np.concatenate([j[0] for j in cam_jobs[ci]])
        box = np.concatenate([j[1] for j in cam_jobs[ci]])
        paths = [p for j in cam_jobs[ci] for p in j[2]]
        order = np.argsort(frame0, kind="stable")
        frame0, box = frame0[order], box[order]
        uniq = np.unique(frame0)
        vr = _open_video(cam.video)
        pos = 0
        batch = frames_per_batch(cfg.decode_batch, cfg.decode_batch_mb, cam.frame_height, cam.frame_width)
        for idx, arr in iter_frame_batches(vr, uniq, batch, cam.video):
            end = int(np.searchsorted(frame0, idx[-1], side="right"))
            slot = np.searchsorted(idx, frame0[pos:end])
            for j in range(pos, end):
                crop_resize(arr[slot[j - pos]], box[j], cfg.height, cfg.width, cfg.interpolation).save(
                    tmp / paths[order[j]], format="JPEG", quality=cfg.jpeg_quality)
            pos = end
        del vr
        got.cameras[ci]["frames_decoded"] = int(len(uniq))
        got.cameras[ci]["crops"] = int(len(frame0))
        got.boxes["written"] += int(len(frame0))


def build_mars_from_videos(src_root: str | os.PathLike, out_root: str | os.PathLike,
                           cfg: VideoIngestConfig | None = None) -> dict:
    """Build a MARS-layout dataset at ``out_root`` from the camera videos and box files in
    ``src_root`` (see the module docstring); ``psta.data.read_mars(out_root)`` reads it.

    ``out_root`` is replaced atomically: on any error nothing is left there (an existing one
    is kept unchanged). Bad input raises :class:`DatasetError` naming the file (and line).

    Returns stats: ``cameras`` (per camera: video, frames, boxes, frames decoded, crops),
    ``boxes`` / ``tracks`` / ``identities`` (read and what each filter dropped), ``splits``
    (train / query / gallery: identities, tracks, tracklets, frames), ``pids``
    (identity -> pid), ``config``.
    """
    cfg = cfg or VideoIngestConfig()
    src, out = Path(src_root), Path(out_root)
    cams = find_cameras(src)
    rs, ro = src.resolve(), out.resolve()
    if ro == rs or ro in rs.parents:
        raise DatasetError(f"output root {out} would replace data.root {src} (or a folder holding it); "
                           f"write the MARS tree somewhere else")
    idmap, per_cam = _read_inputs(src, cams)
    got = _collect_tracks(cams, per_cam, idmap, cfg)
    kept_ids, empty = _kept_identities(got, idmap, src / IDENTITIES_FILE, src, cfg)
    pids, renumbered = _assign_pids(kept_ids)
    tl = _cut_tracklets(got.tracks, pids, cfg.max_tracklet_len)
    test_ids, multi, is_test, is_query = _split_and_pick_queries(got.tracks, tl, kept_ids, pids, cfg)
    splits = _mars_splits(tl, is_test)
    with atomic_dir(out) as tmp:
        written = write_mars_info(tmp, splits["train"], splits["test"], is_query[splits["test"]["tl"]])
        _write_crops(tmp, cams, got.tracks, tl, written, cfg, got)

    def split_stats(mask: np.ndarray) -> dict:
        return {"identities": int(len(np.unique(tl.pid[mask]))),
                "tracks": int(len(np.unique(tl.track[mask]))),
                "tracklets": int(mask.sum()), "frames": int(tl.length[mask].sum())}

    single_test = sorted(pids[s] for s in test_ids if s not in multi)
    return {
        "source": str(src),
        "root": str(out),
        "num_cameras": len(cams),
        "cameras": got.cameras,
        "identity_source": IDENTITIES_FILE if idmap is not None else "track ids",
        "boxes": got.boxes,
        "tracks": got.track_counts,
        "identities": {
            "read": len(got.seen_ids), "kept": len(kept_ids), "dropped": len(empty), "dropped_names": empty,
            "train": len(kept_ids) - len(test_ids), "test": len(test_ids),
            "test_single_camera": len(single_test), "test_single_camera_pids": single_test,
            "renumbered": renumbered,
        },
        "splits": {"train": split_stats(~is_test), "query": split_stats(is_query),
                   "gallery": split_stats(is_test & ~is_query)},
        "tracklets": int(len(tl.pid)),
        "frames": int(tl.length.sum()),
        "pids": {s: pids[s] for s in kept_ids},
        "config": cfg.to_dict(),
    }
