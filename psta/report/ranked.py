"""The ranked-list section: which queries to show, and their pictures from the frame cache."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import strips
from .content import Figure, camera_label

__all__ = ["RANKED_TOPK", "QUERY_FRAMES", "pick_queries", "ranked_section"]

RANKED_TOPK = 10
QUERY_FRAMES = 3
RANKED_COLUMNS = ("protocol", "query_tracklet_id", "rank", "gallery_tracklet_id", "match",
                  "distance", "query_ap", "query_first_match_rank", "query_first_match_tracklet_id",
                  "query_first_match_distance", "query_margin")


def pick_queries(ranked: pd.DataFrame, protocol: str, num: int) -> tuple[list[dict], list[dict]]:
    """The ``num`` best queries and the ``num`` worst of the rest.

    Best: the largest margin between the closest non-matching and the closest matching
    gallery item (confidently right, rather than any of many tied at AP 100%). Worst: the
    lowest AP, then the smallest margin."""
    r = ranked[ranked["protocol"] == protocol]
    per_q = (r.groupby("query_tracklet_id", sort=True)
             .agg(ap=("query_ap", "first"), first=("query_first_match_rank", "first"),
                  margin=("query_margin", "first"), first_id=("query_first_match_tracklet_id", "first"),
                  first_distance=("query_first_match_distance", "first"))
             .reset_index())
    per_q = per_q[np.isfinite(per_q["ap"].to_numpy(dtype=np.float64))]
    if per_q.empty or num <= 0:
        return [], []
    best = per_q.sort_values(["margin", "ap", "query_tracklet_id"], ascending=[False, False, True],
                             na_position="last").head(num)
    rest = per_q[~per_q["query_tracklet_id"].isin(best["query_tracklet_id"])]
    worst = rest.sort_values(["ap", "margin", "query_tracklet_id"], ascending=[True, True, True],
                             na_position="first").head(num)

    def rows(df):
        out = []
        for q in df.itertuples():
            lst = r[r["query_tracklet_id"] == q.query_tracklet_id].sort_values("rank").head(RANKED_TOPK)
            out.append({"query": int(q.query_tracklet_id), "ap": float(q.ap), "first": int(q.first),
                        "margin": float(q.margin), "first_id": int(q.first_id),
                        "first_distance": float(q.first_distance),
                        "gallery": lst["gallery_tracklet_id"].astype(np.int64).tolist(),
                        "matches": lst["match"].astype(bool).tolist(),
                        "distances": lst["distance"].astype(np.float64).tolist(),
                        "ranks": lst["rank"].astype(np.int64).tolist()})
        return out

    return rows(best), rows(worst)


class _TrackletInfo:
    """Names, identities, cameras and lengths of tracklets, from the eval or index tables."""

    def __init__(self, tables: list[pd.DataFrame | None], cache):
        self.by_id: dict[int, dict] = {}
        for t in tables:
            if t is None or "tracklet_id" not in t.columns:
                continue
            for rec in t.to_dict("records"):
                self.by_id.setdefault(int(rec["tracklet_id"]), rec)
        self.cache = cache

    def n_frames(self, tid: int) -> int:
        rec = self.by_id.get(tid)
        if rec is not None and "n_frames" in rec:
            return int(rec["n_frames"])
        return int(self.cache.tracklet(tid)[1])

    def label(self, tid: int) -> str:
        """Identity and camera as the dataset writes it: "435 C2" ("distr." for pid 0)."""
        rec = self.by_id.get(tid)
        if rec is None:
            return f"#{tid}"
        pid = int(rec.get("pid", -1))
        who = "distr." if pid == 0 else str(pid)
        return f"{who} {camera_label(rec['camid'])}" if "camid" in rec else who

    def describe(self, tid: int) -> str:
        rec = self.by_id.get(tid)
        if rec is None:
            return f"tracklet {tid}"
        parts = [f"tracklet {tid}"]
        if rec.get("name"):
            parts.append(f"“{rec['name']}”")
        if "pid" in rec:
            parts.append(f"identity {int(rec['pid'])}")
        if "camid" in rec:
            parts.append(f"camera {camera_label(rec['camid'])}")
        if "n_frames" in rec:
            parts.append(f"{int(rec['n_frames'])} frames")
        return ", ".join(parts)


def _strip_figure(kind: str, i: int, q: dict, cache, info: _TrackletInfo, tile_height: int) -> Figure:
    n = info.n_frames(q["query"])
    qidx = np.unique(np.linspace(0, n - 1, min(QUERY_FRAMES, n)).round().astype(np.int64))
    qframes = cache.read(q["query"], qidx)
    gallery, matches = list(q["gallery"]), list(q["matches"])
    distances, ranks = list(q["distances"]), list(q["ranks"])
    beyond = kind == "worst" and q["first"] > (ranks[-1] if ranks else 0) and q["first_id"] >= 0
    if beyond:  # the first true match, after the top-k
        gallery.append(q["first_id"])
        matches.append(True)
        distances.append(q["first_distance"])
        ranks.append(q["first"])
    gframes = [cache.read(g, [info.n_frames(g) // 2])[0] for g in gallery]
    labels = [f"{info.label(g)}\n{d:.3f}" for g, d in zip(gallery, distances)]
    img = strips.ranked_strip(qframes, gframes, matches, tile_height=tile_height,
                              gallery_labels=labels, ranks=ranks,
                              query_label=f"query {info.label(q['query'])}")  # e.g. "query 435 C2"
    first = f"first match at rank {q['first']}" if q["first"] > 0 else "no valid match"
    caption = (f"{kind.capitalize()} #{i}: query {info.describe(q['query'])}; "
               f"AP {100 * q['ap']:.1f}%, {first}, {sum(q['matches'])} of the top "
               f"{len(q['matches'])} match; margin {q['margin']:.3f} (closest non-match minus "
               f"closest match distance)." + (" Last tile: the first true match." if beyond else ""))
    return Figure(f"ranked_{kind}_{i}.png", strips.png_bytes(img),
                  f"Ranked list of query tracklet {q['query']} ({kind} #{i})",
                  caption=caption, css_class="figure ranked",
                  data={"query": str(q["query"]), "kind": kind,
                        "matches": "".join("1" if m else "0" for m in matches),
                        "ranks": ",".join(str(r) for r in ranks)})


def _unavailable(ranked: pd.DataFrame | None, missing: str | None, num_examples: int) -> str | None:
    if ranked is None:
        return f"Ranked lists not available: {missing or 'no ranked.parquet'}."
    if num_examples <= 0:
        return "Ranked lists not requested (num_examples = 0)."
    absent = [c for c in RANKED_COLUMNS if c not in ranked.columns]
    if absent:
        return (f"Ranked lists not available: ranked.parquet lacks column(s) {absent} "
                "(see docs/CONTRACTS.md); rerun the evaluate stage.")
    if ranked.empty:
        return "Ranked lists not available: ranked.parquet is empty."
    return None


def ranked_section(ranked: pd.DataFrame | None, tables: list[pd.DataFrame | None],
                   cache_dir: Path | None, headline: str, num_examples: int,
                   missing: str | None, tile_height: int) -> dict:
    """``{"key", "title", "note", "protocol", "groups": [{"kind", "title", "figures"}], "error"}``;
    ``note`` says why there is nothing to show, ``error`` why the pictures stopped early."""
    section = {"key": "ranked", "title": "Ranked lists: best and worst queries", "note": None,
               "protocol": None, "groups": [], "error": None, "topk": RANKED_TOPK,
               "query_frames": QUERY_FRAMES}
    section["note"] = ("Ranked lists not available: no frame cache given." if cache_dir is None
                       else _unavailable(ranked, missing, num_examples))
    if section["note"]:
        return section
    protocols = list(dict.fromkeys(ranked["protocol"].astype(str)))
    protocol = headline if headline in protocols else protocols[0]
    best, worst = pick_queries(ranked, protocol, num_examples)
    try:
        from psta.data.cache import FrameCache
        cache = FrameCache(cache_dir)
    except Exception as e:
        section["note"] = (f"Ranked-list pictures not available: cannot open the frame cache "
                           f"{cache_dir} ({e}).")
        return section
    section["protocol"] = protocol
    info = _TrackletInfo(tables, cache)
    try:
        for kind, items in (("best", best), ("worst", worst)):
            group = {"kind": kind, "title": f"{kind.capitalize()} {len(items)} queries",
                     "count": len(items), "figures": []}
            section["groups"].append(group)
            for i, q in enumerate(items, start=1):
                group["figures"].append(_strip_figure(kind, i, q, cache, info, tile_height))
    except Exception as e:
        section["error"] = (f"Ranked-list pictures stopped early: could not read frames from "
                            f"{cache_dir} ({e}).")
    finally:
        cache.close()
    return section
