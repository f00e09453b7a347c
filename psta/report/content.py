"""Plain data the report templates render: tables, figures and number formatting."""
from __future__ import annotations

import base64
import math
from dataclasses import dataclass, field
from typing import Any

from psta.data.registry import PROTOCOLS

__all__ = ["Figure", "Table", "camera_label", "ci_text", "data_uri", "fmt", "fmt_int", "fpr_text", "pct",
           "protocol_text"]


@dataclass(frozen=True)
class Table:
    """A table for both outputs. ``highlight``: row indices to emphasise; columns from
    ``numeric_from`` on are right-aligned."""
    id: str | None
    header: list[str]
    rows: list[list[str]]
    highlight: frozenset[int] = frozenset()
    numeric_from: int = 1
    css_class: str = ""


@dataclass(frozen=True)
class Figure:
    """A PNG figure: ``name`` is its file in the Markdown report's figures/ folder; the HTML
    report inlines it (``id`` and ``data`` become attributes of its ``<img>``)."""
    name: str
    png: bytes
    alt: str
    id: str | None = None
    caption: str = ""
    css_class: str = "figure"
    data: dict[str, str] = field(default_factory=dict)


def fmt(value: Any, digits: int = 1) -> str:
    """Percent value -> "91.5"; None / NaN -> an en dash."""
    if value is None:
        return "–"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "–" if not math.isfinite(v) else f"{v:.{digits}f}"


def pct(fraction: Any) -> float | None:
    """A fraction in [0, 1] -> percent; None stays None, a non-finite value becomes NaN."""
    if fraction is None:
        return None
    try:
        v = float(fraction)
    except (TypeError, ValueError):
        return None
    return 100.0 * v if math.isfinite(v) else float("nan")


def fmt_int(value: Any) -> str:
    """1234 -> "1,234"; None -> an en dash."""
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return "–" if value is None else str(value)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def ci_text(interval: Any) -> str:
    """A (low, high) interval of fractions -> "84.1–91.2" (percent); missing -> an en dash."""
    try:
        low, high = (pct(v) for v in interval)
    except (TypeError, ValueError):
        return "–"
    return "–" if low is None or high is None else f"{fmt(low)}–{fmt(high)}"


def camera_label(camid: Any) -> str:
    """A 0-based camera id as the datasets write it in file names: 0 -> "C1"."""
    try:
        return f"C{int(camid) + 1}"
    except (TypeError, ValueError):
        return str(camid)


def fpr_text(fpr: float) -> str:
    """0.001 -> "0.1%"; 0.0001 -> "0.01%"."""
    return f"{100 * float(fpr):g}%"


def protocol_text(name: str) -> str:
    """What a registered protocol's gallery is ("" for a protocol the registry does not know)."""
    return PROTOCOLS[name].description if name in PROTOCOLS else ""
