"""A search's answer: the ranked gallery rows as JSON-friendly records.

``{"query": {...}, "results": [{"rank", "tracklet_id", "pid", "camid", "camera", "distance",
"same_person", "frames", ...}], "gallery": {...}}``. ``distance`` is the cosine distance
``1 - cos`` (evaluation's); ``same_person`` is ``distance <= threshold`` with the calibrated
verification threshold, null when the gallery has none.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from psta.search.gallery import Gallery


def _value(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    try:
        import pandas as pd

        if v is pd.NA:
            return None
    except ImportError:  # pragma: no cover
        pass
    return v.item() if isinstance(v, np.generic) else v


def ranked_results(gallery: Gallery, rows: np.ndarray, distances: np.ndarray, root: Path,
                   threshold: float | None) -> list[dict[str, Any]]:
    out = []
    for rank, (row, dist) in enumerate(zip(rows.tolist(), distances.tolist()), start=1):
        rec = gallery.table.iloc[row]
        pid = _value(rec["pid"])
        item = {
            "rank": rank, "tracklet_id": int(rec["tracklet_id"]), "pid": None if pid is None else int(pid),
            "camid": int(rec["camid"]), "camera": str(rec["camera"]), "distance": round(float(dist), 6),
            "same_person": None if threshold is None else bool(dist <= threshold),
            "frames": [str(p) for p in gallery.frame_paths(row, root)],
            "name": str(rec["name"]), "split": str(rec["split"]),
        }
        if _value(rec["video"]) is not None:
            item.update({k: _value(rec[k]) for k in ("video", "video_frame_first", "video_frame_last",
                                                      "start_s", "end_s")})
        out.append(item)
    return out


def gallery_summary(gallery: Gallery) -> dict[str, Any]:
    h = gallery.header
    return {"path": str(gallery.path), "num_vectors": h["num_vectors"], "index": h["index"],
            "model": h.get("model"), "sampling": h.get("sampling"), "threshold": h.get("threshold")}
