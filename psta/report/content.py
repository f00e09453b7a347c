"""Plain data the report templates render: tables, figures and number formatting."""
from __future__ import annotations

import base64
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Figure", "Table", "data_uri", "fmt", "fmt_int", "pct"]


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
