"""Plots of the run report, each returned as PNG bytes.

Plots use matplotlib's object API with an explicit Agg canvas (``Figure`` +
``FigureCanvasAgg``), never pyplot: building a report neither needs a display nor changes the
caller's global matplotlib backend. Ranked-list pictures are in :mod:`psta.report.strips`.
"""
from __future__ import annotations

import io
import math
from typing import Sequence

import numpy as np

__all__ = ["cmc_figure", "roc_figure", "distance_figure", "ap_histogram_figure",
           "embedding_figure", "training_figure", "placeholder_png"]

# --------------------------------------------------------------------------- encoding

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

def cmc_figure(curves: dict[str, Sequence[float]], baseline: dict[str, Sequence[float]] | None = None,
               paper: dict | None = None, title: str = "CMC curve") -> bytes:
    """CMC step curves (fractions 0..1, rank 1 first), one per protocol, plotted in percent;
    ``baseline`` (the untrained model's curves) on the same axes, thin and dashed.

    ``paper``: optional ``{"rank1", "label"}`` (rank1 in percent) drawn as a star at rank 1.
    """
    fig = _new_figure(7.5, 4.4)
    ax = fig.add_subplot()
    lo, longest = 100.0, 1
    for group, dashed in ((curves, False), (baseline or {}, True)):
        for i, (name, cmc) in enumerate(group.items()):
            y = 100.0 * np.asarray(cmc, dtype=np.float64)
            if not len(y):
                continue
            x = np.arange(1, len(y) + 1)
            label = (f"{name}, untrained (rank-1 {y[0]:.1f}%)" if dashed else
                     f"{name} (rank-1 {y[0]:.1f}%, rank-10 {y[min(9, len(y) - 1)]:.1f}%)")
            ax.step(x, y, where="post", color=f"C{i}", lw=1.4 if dashed else 2.4 - 0.4 * i,
                    ls=(0, (4, 3)) if dashed else "-", alpha=0.75 if dashed else 1.0, label=label)
            lo, longest = min(lo, float(np.nanmin(y))), max(longest, len(y))
    if paper and paper.get("rank1") is not None:
        ax.plot([1], [paper["rank1"]], marker="*", ms=15, ls="none", color="0.15",
                label=f"{paper.get('label', 'paper')} rank-1 {paper['rank1']:.1f}%")
        lo = min(lo, float(paper["rank1"]))
    ax.set_xscale("log")
    ticks = [t for t in (1, 2, 5, 10, 20, 50, 100) if t <= longest]
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel("rank (log scale)")
    ax.set_ylabel("matching rate (%)")
    ax.set_ylim(max(0.0, math.floor((lo - 5) / 10) * 10), 101)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8, frameon=True)
    return _figure_png(fig)


# --------------------------------------------------------------------------- verification

def roc_figure(curves: dict[str, dict], operating: dict | None = None) -> bytes:
    """ROC curves (``{name: {"fpr": [...], "tpr": [...]}}``, fractions) with FPR on a log scale;
    ``operating``: ``{"fpr", "tpr", "label"}`` marked as the calibrated threshold's point."""
    fig = _new_figure(7.0, 4.4)
    ax = fig.add_subplot()
    floor = 1.0
    for i, (name, roc) in enumerate(curves.items()):
        fpr, tpr = np.asarray(roc["fpr"], float), 100 * np.asarray(roc["tpr"], float)
        positive = fpr > 0
        if positive.any():
            floor = min(floor, float(fpr[positive].min()))
        ax.plot(fpr, tpr, color=f"C{i}", lw=2.2 - 0.4 * i, label=name)
    if operating:
        ax.plot([max(operating["fpr"], floor)], [100 * operating["tpr"]], marker="o", ms=9,
                mfc="none", mew=2, color="0.1", ls="none", label=operating["label"])
        ax.axvline(operating["target_fpr"], color="0.4", lw=1, ls=":")
    ax.set_xscale("log")
    ax.set_xlim(max(min(floor, 1e-4) / 2, 1e-7), 1.0)
    ax.set_ylim(0, 101)
    ax.set_xlabel("false-positive rate (log scale)")
    ax.set_ylabel("true-positive rate (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title("ROC: same person or not")
    ax.legend(loc="lower right", fontsize=8)
    return _figure_png(fig)


def distance_figure(edges: Sequence[float], matching: Sequence[int], non_matching: Sequence[int],
                    threshold: float | None = None, distance: str = "distance") -> bytes:
    """The two distance distributions (densities, so both are visible) and the threshold."""
    fig = _new_figure(7.0, 3.8)
    ax = fig.add_subplot()
    edges = np.asarray(edges, float)
    for counts, colour, label in ((matching, "C2", "matching pairs"),
                                  (non_matching, "C3", "non-matching pairs")):
        counts = np.asarray(counts, float)
        density = counts / max(counts.sum(), 1) / np.diff(edges)
        ax.stairs(density, edges, fill=True, alpha=0.35, color=colour)
        ax.stairs(density, edges, color=colour, lw=1.6, label=f"{label} ({int(counts.sum()):,})")
    if threshold is not None and math.isfinite(threshold):
        ax.axvline(threshold, color="0.1", lw=1.6, ls="--", label=f"threshold {threshold:.4f}")
    ax.set_xlabel(f"{distance} distance")
    ax.set_ylabel("density")
    ax.set_title("distances of matching and non-matching pairs")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _figure_png(fig)


def ap_histogram_figure(edges: Sequence[float], counts: Sequence[int], mean_ap: float | None = None) -> bytes:
    """Histogram of per-query average precision (fractions on the edges, shown in percent)."""
    fig = _new_figure(7.0, 3.4)
    ax = fig.add_subplot()
    edges = 100 * np.asarray(edges, float)
    ax.stairs(np.asarray(counts, float), edges, fill=True, color="C0", alpha=0.6)
    if mean_ap is not None:
        ax.axvline(100 * mean_ap, color="0.1", ls="--", lw=1.4, label=f"mAP {100 * mean_ap:.1f}%")
        ax.legend(fontsize=8, loc="upper left")
    ax.set_xlim(0, 100)
    ax.set_xlabel("average precision of a query (%)")
    ax.set_ylabel("queries")
    ax.set_title("per-query AP")
    ax.grid(True, alpha=0.3)
    return _figure_png(fig)


def embedding_figure(points: np.ndarray, labels: Sequence[int], explained: Sequence[float]) -> bytes:
    """2-D points (a projection of embeddings), one colour per identity label."""
    fig = _new_figure(6.4, 4.8)
    ax = fig.add_subplot()
    labels = np.asarray(labels)
    for i, pid in enumerate(dict.fromkeys(labels.tolist())):
        sel = labels == pid
        ax.scatter(points[sel, 0], points[sel, 1], s=28, color=f"C{i % 10}",
                   marker="osD^v<>"[i // 10 % 7], label=f"id {pid}", alpha=0.85, edgecolors="none")
    ax.set_xlabel(f"PC 1 ({100 * explained[0]:.0f}% of variance)")
    ax.set_ylabel(f"PC 2 ({100 * explained[1]:.0f}% of variance)")
    ax.set_title("gallery embeddings, principal components")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
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
