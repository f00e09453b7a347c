"""The search answer as one self-contained HTML page (images inlined, opens from disk).

The query's frames come first (blue frames), then one row per ranked gallery tracklet: a strip
of its frames framed green when its identity is the query's, red when it is another identity,
grey when either is unknown (a query of unknown identity), with its distance, the
same-person decision, identity, camera and source. Colours and encoding are the report's
(psta.report.strips).
"""
from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from psta.report.strips import MATCH_COLOR, MISS_COLOR, QUERY_COLOR, png_bytes

UNKNOWN_COLOR = (150, 150, 150)
TILE_HEIGHT = 128
BORDER, GAP = 3, 3
RESULT_FRAMES = 6
QUERY_FRAMES = 8


def _tile(frame: np.ndarray, height: int) -> np.ndarray:
    from PIL import Image

    width = max(1, round(height * frame.shape[1] / frame.shape[0]))
    return np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.BICUBIC))


def strip_png(frames: Sequence[np.ndarray], color: tuple[int, int, int], height: int = TILE_HEIGHT) -> bytes:
    """``H x W x 3`` uint8 frames side by side, each framed in ``color``, as PNG."""
    tiles = []
    for frame in frames:
        t = _tile(frame, height)
        framed = np.empty((height + 2 * BORDER, t.shape[1] + 2 * BORDER, 3), np.uint8)
        framed[:] = color
        framed[BORDER:-BORDER, BORDER:-BORDER] = t
        tiles.append(framed)
        tiles.append(np.full((height + 2 * BORDER, GAP, 3), 255, np.uint8))
    return png_bytes(np.concatenate(tiles[:-1], axis=1))


def evenly(items: Sequence, n: int) -> list:
    if len(items) <= n:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]


def _read(path: str) -> np.ndarray:
    from torchvision.io import ImageReadMode, decode_image, read_file

    try:
        return decode_image(read_file(path), mode=ImageReadMode.RGB).permute(1, 2, 0).numpy()
    except (RuntimeError, OSError):
        return np.full((TILE_HEIGHT, TILE_HEIGHT // 2, 3), 200, np.uint8)  # a missing frame: grey tile


def _uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _color(query_pid: int | None, pid: int | None) -> tuple[int, int, int]:
    if query_pid is None or pid is None:
        return UNKNOWN_COLOR
    return MATCH_COLOR if pid == query_pid and pid > 0 else MISS_COLOR


def render_search_html(document: dict[str, Any], query_frames: np.ndarray) -> str:
    """The page for :func:`psta.search` ``document``; ``query_frames``: ``L x H x W x 3`` uint8."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    query = document["query"]
    rows = []
    for r in document["results"]:
        frames = [_read(p) for p in evenly(r["frames"], RESULT_FRAMES)]
        rows.append({**r, "strip": _uri(strip_png(frames, _color(query.get("pid"), r["pid"])))})
    env = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                      autoescape=select_autoescape(["html", "j2"]))
    return env.get_template("search.html.j2").render(
        query=query, gallery=document.get("gallery", {}), results=rows,
        query_strip=_uri(strip_png(evenly(list(query_frames), QUERY_FRAMES), QUERY_COLOR)),
        colors={"match": MATCH_COLOR, "miss": MISS_COLOR, "unknown": UNKNOWN_COLOR, "query": QUERY_COLOR},
    )
