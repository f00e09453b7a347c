"""Figures of the run report, each returned as PNG bytes.

Plots use matplotlib's object API with an explicit Agg canvas (``Figure`` +
``FigureCanvasAgg``), never pyplot: building a report neither needs a display nor changes the
caller's global matplotlib backend. Ranked-list pictures are assembled with numpy (tiles and
coloured borders) and encoded losslessly with Pillow, so the border colours in the PNG are
exactly :data:`MATCH_COLOR` / :data:`MISS_COLOR`.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = [
    "MATCH_COLOR", "MISS_COLOR", "QUERY_COLOR", "StripLayout", "strip_layout", "ranked_strip",
    "png_bytes", "cmc_figure", "training_figure", "placeholder_png",
]

MATCH_COLOR = (34, 160, 60)     # green frame: same identity as the query
MISS_COLOR = (214, 39, 40)      # red frame: another identity (or a distractor)
QUERY_COLOR = (52, 101, 164)    # blue frame: the query's own frames
BACKGROUND = (255, 255, 255)
TEXT_COLOR = (40, 40, 40)

# strip geometry (pixels)
BORDER = 4          # coloured frame around every tile
GAP = 4             # between tiles
SEPARATOR = 24      # between the query frames and the ranked gallery
MARGIN = 6
LABEL_BAND = 16     # text band above (rank) and below (identity) the tiles


# --------------------------------------------------------------------------- encoding

def png_bytes(image: np.ndarray) -> bytes:
    """Encode an ``H x W x 3`` uint8 array as PNG (lossless)."""
    from PIL import Image

    arr = np.ascontiguousarray(image, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, mode="RGB").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _figure_png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def _new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def placeholder_png(text: str, width: float = 6.0, height: float = 1.2) -> bytes:
    """A small grey panel that says ``text`` (for the Markdown report's missing figures)."""
    fig = _new_figure(width, height)
    ax = fig.add_subplot()
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", color="0.4", fontsize=11, wrap=True)
    return _figure_png(fig)


# --------------------------------------------------------------------------- CMC

def cmc_figure(curves: dict[str, Sequence[float]], paper: dict | None = None,
               title: str = "CMC curve") -> bytes:
    """CMC curves (fractions 0..1, rank 1 first), one line per protocol, plotted in percent.

    ``paper``: optional ``{"protocol", "rank1", "label"}`` (rank1 in percent) drawn as a star
    at rank 1 for comparison.
    """
    fig = _new_figure(7.5, 4.4)
    ax = fig.add_subplot()
    markers = "osD^v<>"
    styles = ("-", (0, (5, 3)), (0, (1, 2)), "-.")
    lo = 100.0
    for i, (name, cmc) in enumerate(curves.items()):  # later protocols dashed, on top
        y = 100.0 * np.asarray(cmc, dtype=np.float64)
        if not len(y):
            continue
        x = np.arange(1, len(y) + 1)
        marks = [r - 1 for r in (1, 5, 10, 20) if r <= len(y)]
        ax.plot(x, y, color=f"C{i}", lw=2.6 if i == 0 else 2.0, ls=styles[i % len(styles)],
                marker=markers[i % len(markers)], markevery=marks, ms=6, label=f"{name}  (rank-1 {y[0]:.1f}%, rank-10 {y[min(9, len(y) - 1)]:.1f}%)")
        lo = min(lo, float(np.nanmin(y)))
    if paper and paper.get("rank1") is not None:
        ax.plot([1], [paper["rank1"]], marker="*", ms=15, ls="none", color="0.15",
                label=f"{paper.get('label', 'paper')} rank-1 {paper['rank1']:.1f}%")
        lo = min(lo, float(paper["rank1"]))
    ax.set_xscale("log")
    ticks = [t for t in (1, 2, 5, 10, 20, 50, 100) if t <= max([len(c) for c in curves.values()] + [1])]
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel("rank (log scale)")
    ax.set_ylabel("matching rate (%)")
    ax.set_ylim(max(0.0, math.floor((lo - 5) / 10) * 10), 101)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=9, frameon=True)
    return _figure_png(fig)


# --------------------------------------------------------------------------- training curves

def _percent(values: np.ndarray) -> np.ndarray:
    finite = values[np.isfinite(values)]
    return values * 100.0 if len(finite) and np.nanmax(np.abs(finite)) <= 1.0 else values


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


def training_figure(history) -> bytes:
    """Losses, learning rate and validation rank-1 / mAP per epoch from a history DataFrame.

    Columns used when present: ``epoch``, ``loss_*``, ``lr``, ``val_rank1``, ``val_mAP``
    (fractions or percent; fractions are shown in percent).
    """
    import pandas as pd

    h = history
    epoch = (pd.to_numeric(h["epoch"], errors="coerce").to_numpy(dtype=np.float64)
             if "epoch" in h.columns else np.arange(len(h), dtype=np.float64))
    fig = _new_figure(12.0, 3.7)
    axes = fig.subplots(1, 3)

    def col(name: str) -> np.ndarray:
        return pd.to_numeric(h[name], errors="coerce").to_numpy(dtype=np.float64)

    ax = axes[0]
    losses = [c for c in h.columns if c.startswith("loss_")]
    order = {"loss_total": 0, "loss_ce": 1, "loss_triplet": 2}
    losses.sort(key=lambda c: (order.get(c, 9), c))
    for i, c in enumerate(losses):
        y = col(c)
        ok = np.isfinite(y)
        ax.plot(epoch[ok], y[ok], color=f"C{i}", lw=2 if c == "loss_total" else 1.5,
                marker="o" if ok.sum() < 30 else None, ms=3, label=c.removeprefix("loss_"))
    ax.set_title("training losses")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (mean per step)")
    if losses:
        ax.legend(fontsize=8)
    else:
        _no_data(ax, "no loss columns")

    ax = axes[1]
    if "lr" in h.columns:
        y = col("lr")
        ok = np.isfinite(y)
        ax.plot(epoch[ok], y[ok], color="C4", lw=2, drawstyle="steps-post")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    else:
        _no_data(ax, "no lr column")
    ax.set_title("learning rate")
    ax.set_xlabel("epoch")
    ax.set_ylabel("lr")

    ax = axes[2]
    plotted = False
    for c, color, label in (("val_rank1", "C0", "rank-1"), ("val_mAP", "C1", "mAP")):
        if c in h.columns:
            y = _percent(col(c))
            ok = np.isfinite(y)
            if ok.any():
                ax.plot(epoch[ok], y[ok], color=color, lw=2, marker="o", ms=4, label=label)
                plotted = True
    ax.set_title("validation (held-out identities)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("%")
    if plotted:
        ax.legend(fontsize=8)
    else:
        _no_data(ax, "no validation during training")
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return _figure_png(fig)


# --------------------------------------------------------------------------- ranked lists

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


def strip_layout(num_query: int, num_gallery: int, tile_height: int, tile_width: int) -> StripLayout:
    """Where each framed tile sits in a strip of ``num_query`` query frames, then ``num_gallery``
    ranked gallery tracklets, left to right."""
    bw, bh = tile_width + 2 * BORDER, tile_height + 2 * BORDER
    y0 = MARGIN + LABEL_BAND
    x = MARGIN
    q = []
    for i in range(num_query):
        q.append((x, y0, x + bw, y0 + bh))
        x += bw + GAP
    x += SEPARATOR - GAP if num_query else 0
    g = []
    for i in range(num_gallery):
        g.append((x, y0, x + bw, y0 + bh))
        x += bw + GAP
    width = x - GAP + MARGIN if (num_query or num_gallery) else 2 * MARGIN
    height = y0 + bh + LABEL_BAND + MARGIN
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
                 query_label: str = "query") -> np.ndarray:
    """One ranked list as a picture: the query's frames (blue frames), a gap, then the ranked
    gallery tracklets (one frame each), framed :data:`MATCH_COLOR` where ``matches[i]`` and
    :data:`MISS_COLOR` otherwise. Rank numbers above, ``gallery_labels`` below.

    Frames are uint8 ``3 x H x W`` (as the frame cache returns) or ``H x W x 3``; they are
    resized to ``tile_height`` (keeping the first frame's aspect ratio). Returns ``H x W x 3``
    uint8; the tiles sit where :func:`strip_layout` says.
    """
    q = [_to_hwc(f) for f in query_frames]
    g = [_to_hwc(f) for f in gallery_frames]
    if len(matches) != len(g):
        raise ValueError(f"{len(g)} gallery frames but {len(matches)} match flags")
    ref = (q or g or [np.zeros((2, 1, 3), np.uint8)])[0]
    tile_w = max(1, int(round(tile_height * ref.shape[1] / ref.shape[0])))
    lay = strip_layout(len(q), len(g), tile_height, tile_w)
    img = np.empty((lay.height, lay.width, 3), np.uint8)
    img[:] = BACKGROUND
    for frame, (x0, y0, x1, y1) in zip(q, lay.query_boxes):
        img[y0:y1, x0:x1] = _framed(_resize(frame, tile_height, tile_w), QUERY_COLOR)
    for frame, m, (x0, y0, x1, y1) in zip(g, matches, lay.gallery_boxes):
        img[y0:y1, x0:x1] = _framed(_resize(frame, tile_height, tile_w), MATCH_COLOR if m else MISS_COLOR)
    return _label(img, lay, query_label, gallery_labels, matches)


def _label(img: np.ndarray, lay: StripLayout, query_label: str,
           gallery_labels: Sequence[str] | None, matches: Sequence[bool]) -> np.ndarray:
    """Rank numbers above the gallery tiles, labels below; text only in the label bands."""
    from PIL import Image, ImageDraw, ImageFont

    pil = Image.fromarray(img)
    draw = ImageDraw.Draw(pil)
    try:
        font = ImageFont.load_default(size=11)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        font = ImageFont.load_default()
    top = MARGIN + LABEL_BAND // 2
    if lay.query_boxes and query_label:
        x0, x1 = lay.query_boxes[0][0], lay.query_boxes[-1][2]
        draw.text(((x0 + x1) / 2, top), query_label, fill=QUERY_COLOR, font=font, anchor="mm")
    bottom = lay.gallery_boxes[0][3] + LABEL_BAND // 2 if lay.gallery_boxes else 0
    for i, (x0, y0, x1, y1) in enumerate(lay.gallery_boxes):
        cx = (x0 + x1) / 2
        draw.text((cx, top), str(i + 1), fill=TEXT_COLOR, font=font, anchor="mm")
        if gallery_labels is not None and i < len(gallery_labels):
            draw.text((cx, bottom), str(gallery_labels[i]), font=font, anchor="mm",
                      fill=MATCH_COLOR if matches[i] else MISS_COLOR)
    return np.asarray(pil)
