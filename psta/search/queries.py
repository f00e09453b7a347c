"""What a search starts from: a folder of person crops, or one track of a video.

Each loader returns the query's frames as uint8 ``L x 3 x H x W`` at the model's input size
(resized as the frame cache resizes), ready for :func:`psta.search.frames.embed_frame_sets`,
plus a JSON-friendly description. Every bad query is one :class:`QueryError` naming the file
and the fix.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import torch

from psta.errors import DatasetError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class QueryError(DatasetError):
    """A search query (folder, video track, tracklet id, camera) that cannot be searched."""


def folder_query(folder: str | Path, height: int, width: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """The crops of one tracklet, in file-name order."""
    from psta.data.cache import load_frame

    folder = Path(folder)
    if not folder.is_dir():
        raise QueryError(f"query folder {folder} does not exist or is not a folder; pass a folder of "
                         f"person crops ({', '.join(IMAGE_EXTENSIONS)}) of one tracklet")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise QueryError(f"query folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}); put the "
                         "person crops of one tracklet there")
    frames = []
    for f in files:
        try:
            frames.append(load_frame(f, height, width))
        except (ValueError, RuntimeError, OSError) as e:
            raise QueryError(f"cannot read query image {f} ({str(e).splitlines()[0]}); replace it with a "
                             "readable JPEG/PNG crop or remove it from the folder") from None
    return torch.stack(frames), {"type": "folder", "folder": str(folder), "frames": [str(f) for f in files]}


def _track_boxes(boxes_file: Path, track_id: int, frame_stride: int, skip_zero_conf: bool):
    from psta.data.mot import read_mot_boxes

    boxes = read_mot_boxes(boxes_file)
    if skip_zero_conf:
        boxes = boxes.take(boxes.conf != 0)
    mine = np.flatnonzero(boxes.track == track_id)
    if len(mine) == 0:
        ids = np.unique(boxes.track)
        shown = ", ".join(str(int(i)) for i in ids[:20]) + (f", ... ({len(ids)} in all)" if len(ids) > 20 else "")
        raise QueryError(f"track id {track_id} is not in box file {boxes_file} (its track ids: {shown or 'none'}); "
                         "pass one of those with --track")
    mine = mine[np.argsort(boxes.frame[mine], kind="stable")][::frame_stride]
    return boxes.take(mine)


def video_query(video: str | Path, boxes_file: str | Path, track_id: int, height: int, width: int, *,
                crop_height: int, crop_width: int, frame_stride: int = 1, interpolation: str = "bicubic",
                skip_zero_conf: bool = True, decode_batch: int = 32) -> tuple[torch.Tensor, dict[str, Any]]:
    """The crops of one track of a video, cut as the videos ingest cuts them (crop, resize to
    ``crop_height x crop_width``), then resized to the model's input size."""
    from psta.data.videos import _open_video, clip_boxes, crop_resize, iter_frame_batches, probe_video, video_fps
    from psta.search.frames import to_model_size

    video, boxes_file = Path(video), Path(boxes_file)
    for f, what in ((video, "video"), (boxes_file, "box file")):
        if not f.is_file():
            raise QueryError(f"query {what} {f} does not exist; pass the camera's video and its MOTChallenge "
                             "box file (frame, id, left, top, width, height, ...)")
    n, fh, fw = probe_video(video)
    boxes = _track_boxes(boxes_file, track_id, frame_stride, skip_zero_conf)
    if boxes.frame.max() > n:
        raise QueryError(f"box file {boxes_file}: track {track_id} has boxes up to frame {int(boxes.frame.max())} "
                         f"but video {video} has {n} frames; is it the box file of that video?")
    box, _, outside = clip_boxes(boxes.left, boxes.top, boxes.width, boxes.height, fw, fh)
    keep = ~outside
    if not keep.any():
        raise QueryError(f"every box of track {track_id} in {boxes_file} lies outside the {fw} x {fh} frame")
    frame0, box = boxes.frame[keep] - 1, box[keep]
    if np.any(np.diff(frame0) == 0):
        f = int(frame0[np.flatnonzero(np.diff(frame0) == 0)[0]]) + 1
        raise QueryError(f"box file {boxes_file}: track {track_id} has two boxes in frame {f}; keep one")
    fps = video_fps(video)
    vr = _open_video(video)
    crops = []
    for _, arr in iter_frame_batches(vr, frame0, decode_batch, video):
        for frame in arr:
            crop = crop_resize(frame, box[len(crops)], crop_height, crop_width, interpolation)
            crops.append(torch.from_numpy(np.array(crop)).permute(2, 0, 1))
    del vr
    frames = to_model_size(torch.stack(crops), height, width)
    first, last = int(frame0[0]) + 1, int(frame0[-1]) + 1
    info = {"type": "video", "video": str(video), "boxes": str(boxes_file), "track_id": int(track_id),
            "num_frames": len(crops), "video_frame_first": first, "video_frame_last": last,
            "start_s": (first - 1) / fps if fps else None, "end_s": (last - 1) / fps if fps else None}
    return frames, info


def camera_ids(table: pd.DataFrame, cameras: Iterable[str]) -> set[int]:
    """0-based camids for cameras named as the dataset names them: its 1-based number
    (``3``, ``C3``) or, for video sources, the video's name (``cam_b``)."""
    labels = table.drop_duplicates("camid").sort_values("camid")
    by_name = {str(c).lower(): int(i) for i, c in zip(labels["camid"], labels["camera"])}
    by_name.update({str(int(i) + 1): int(i) for i in labels["camid"]})
    by_name.update({f"c{int(i) + 1}": int(i) for i in labels["camid"]})
    out = set()
    for spec in cameras:
        key = str(spec).strip().lower()
        if key not in by_name:
            known = ", ".join(f"{int(i) + 1} ({c})" for i, c in zip(labels["camid"], labels["camera"]))
            raise QueryError(f"camera {spec!r} is not in the gallery; its cameras are {known}")
        out.add(by_name[key])
    return out


def allowed_rows(table: pd.DataFrame, *, cameras: set[int] | None = None, exclude_camid: int | None = None,
                 ignore_pid_camid: tuple[int, int] | None = None) -> np.ndarray:
    """Boolean mask of the gallery rows a search may return.

    ``cameras``: only these camids; ``exclude_camid``: none of that camera
    (``--exclude-same-camera``); ``ignore_pid_camid``: the protocol's rule for a query of known
    identity and camera: rows of the same identity in the same camera are ignored.
    """
    camid = table["camid"].to_numpy(np.int64)
    mask = np.ones(len(table), bool)
    if cameras is not None:
        mask &= np.isin(camid, sorted(cameras))
    if exclude_camid is not None:
        mask &= camid != exclude_camid
    if ignore_pid_camid is not None:
        pid = table["pid"].to_numpy(dtype=np.float64, na_value=np.nan)
        mask &= ~((pid == ignore_pid_camid[0]) & (camid == ignore_pid_camid[1]))
    return mask
