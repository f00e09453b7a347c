"""Ranked-list pictures: a query's frames, then its ranked gallery tracklets, framed by match.

Assembled with numpy (tiles and coloured borders) and encoded losslessly with Pillow, so the
border colours in the PNG are exactly :data:`MATCH_COLOR` / :data:`MISS_COLOR`.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["MATCH_COLOR", "MISS_COLOR", "QUERY_COLOR", "StripLayout", "strip_layout",
           "ranked_strip", "png_bytes"]

MATCH_COLOR = (34, 160, 60)     # green frame: same identity as the query
MISS_COLOR = (214, 39, 40)      # red frame: another identity (or a distractor)
QUERY_COLOR = (52, 101, 164)    # blue frame: the query's own frames
BACKGROUND = (255, 255, 255)
TEXT_COLOR = (40, 40, 40)

# strip geometry (pixels)
BORDER = 4          # coloured frame around every tile
GAP = 4             # between tiles
SEPARATOR = 24      # between the query frames and the ranked gallery, and before a rank jump
MARGIN = 6
LABEL_BAND = 16     # text band above the tiles (rank)
CAPTION_BAND = 32   # two text lines below the tiles (identity and camera; distance)
FONT_SIZE = 13


def png_bytes(image: np.ndarray) -> bytes:
    """Encode an ``H x W x 3`` uint8 array as PNG (lossless)."""
    from PIL import Image

    arr = np.ascontiguousarray(image, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, mode="RGB").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


@dataclass(frozen=True)
class StripLayout:
    """Pixel geometry of a ranked-list strip. Boxes are ``(x0, y0, x1, y1)``, end-exclusive,
    and include the coloured border (``BORDER`` pixels wide on every side)."""
    width: int
    height: int
    tile_height: int
    tile_width: int
    query_boxes: tuple[tuple[int, int, int, int], ...]
    gallery_boxes: tuple[tuple[int, int, int, int], ...]


def strip_layout(num_query: int, num_gallery: int, tile_height: int, tile_width: int,
                 breaks: Sequence[int] = ()) -> StripLayout:
    """Where each framed tile sits in a strip of ``num_query`` query frames, then ``num_gallery``
    ranked gallery tracklets, left to right; a separator goes before the gallery tiles whose
    positions are in ``breaks`` (a rank that does not follow the previous one)."""
    bw, bh = tile_width + 2 * BORDER, tile_height + 2 * BORDER
    y0 = MARGIN + LABEL_BAND
    x = MARGIN
    q = []
    for _ in range(num_query):
        q.append((x, y0, x + bw, y0 + bh))
        x += bw + GAP
    x += SEPARATOR - GAP if num_query else 0
    g = []
    for i in range(num_gallery):
        if i in breaks and i > 0:
            x += SEPARATOR - GAP
        g.append((x, y0, x + bw, y0 + bh))
        x += bw + GAP
    width = x - GAP + MARGIN if (num_query or num_gallery) else 2 * MARGIN
    height = y0 + bh + CAPTION_BAND + MARGIN
    return StripLayout(width, height, tile_height, tile_width, tuple(q), tuple(g))


def _to_hwc(frame) -> np.ndarray:
    arr = frame.numpy() if hasattr(frame, "numpy") else np.asarray(frame)
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[0] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(1, 2, 0)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"a frame must be 3 x H x W or H x W x 3, got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.uint8)


def _resize(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    if frame.shape[:2] == (height, width):
        return frame
    from PIL import Image

    return np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.BICUBIC))


def _framed(tile: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    h, w = tile.shape[:2]
    out = np.empty((h + 2 * BORDER, w + 2 * BORDER, 3), np.uint8)
    out[:] = color
    out[BORDER:BORDER + h, BORDER:BORDER + w] = tile
    return out


def ranked_strip(query_frames: Sequence, gallery_frames: Sequence, matches: Sequence[bool], *,
                 tile_height: int = 128, gallery_labels: Sequence[str] | None = None,
                 ranks: Sequence[int] | None = None, query_label: str = "query") -> np.ndarray:
    """One ranked list as a picture: the query's frames (blue frames), a gap, then the ranked
    gallery tracklets (one frame each), framed :data:`MATCH_COLOR` where ``matches[i]`` and
    :data:`MISS_COLOR` otherwise. Ranks above (``ranks``, default 1, 2, ...; a gap before a rank
    that does not follow the previous one), ``gallery_labels`` below (one or two lines each).

    Frames are uint8 ``3 x H x W`` (as the frame cache returns) or ``H x W x 3``; they are
    resized to ``tile_height`` (keeping the first frame's aspect ratio). Returns ``H x W x 3``
    uint8; the tiles sit where :func:`strip_layout` says.
    """
    q = [_to_hwc(f) for f in query_frames]
    g = [_to_hwc(f) for f in gallery_frames]
    if len(matches) != len(g):
        raise ValueError(f"{len(g)} gallery frames but {len(matches)} match flags")
    ranks = list(ranks) if ranks is not None else list(range(1, len(g) + 1))
    breaks = [i for i in range(1, len(ranks)) if ranks[i] != ranks[i - 1] + 1]
    ref = (q or g or [np.zeros((2, 1, 3), np.uint8)])[0]
    tile_w = max(1, int(round(tile_height * ref.shape[1] / ref.shape[0])))
    lay = strip_layout(len(q), len(g), tile_height, tile_w, breaks)
    img = np.empty((lay.height, lay.width, 3), np.uint8)
    img[:] = BACKGROUND
    for frame, (x0, y0, x1, y1) in zip(q, lay.query_boxes):
        img[y0:y1, x0:x1] = _framed(_resize(frame, tile_height, tile_w), QUERY_COLOR)
    for frame, m, (x0, y0, x1, y1) in zip(g, matches, lay.gallery_boxes):
        img[y0:y1, x0:x1] = _framed(_resize(frame, tile_height, tile_w), MATCH_COLOR if m else MISS_COLOR)
    return _label(img, lay, query_label, gallery_labels, matches, ranks)


def _font():
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _label(img: np.ndarray, lay: StripLayout, query_label: str, gallery_labels: Sequence[str] | None,
           matches: Sequence[bool], ranks: Sequence[int]) -> np.ndarray:
    """Rank numbers above the gallery tiles, labels below; text only in the label bands."""
    from PIL import Image, ImageDraw

    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    font = _font()
    top = MARGIN + LABEL_BAND // 2
    if lay.query_boxes and query_label:
        x0, x1 = lay.query_boxes[0][0], lay.query_boxes[-1][2]
        draw.text(((x0 + x1) / 2, top), query_label, fill=QUERY_COLOR, font=font, anchor="mm")
    line = CAPTION_BAND // 2
    for i, (x0, _, x1, y1) in enumerate(lay.gallery_boxes):
        cx = (x0 + x1) / 2
        draw.text((cx, top), str(ranks[i]), fill=TEXT_COLOR, font=font, anchor="mm")
        if gallery_labels is None or i >= len(gallery_labels):
            continue
        colour = MATCH_COLOR if matches[i] else MISS_COLOR
        for k, text in enumerate(str(gallery_labels[i]).split("\n")[:2]):
            draw.text((cx, y1 + line * k + line // 2), text, font=font, anchor="mm", fill=colour)
    return np.asarray(pil)
