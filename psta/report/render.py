"""The run report: one self-contained HTML file and a Markdown twin with PNG figures.

Inputs (docs/CONTRACTS.md, "Evaluation outputs"):

* ``eval_dir/results.json`` (required), ``eval_dir/ranked.parquet`` and
  ``eval_dir/tracklets.parquet`` (ranked-list pictures);
* ``index_dir/stats.json`` (dataset statistics; ``index_dir/tracklets.parquet`` as a fallback
  for tracklet names and lengths);
* ``cache_dir``: the frame cache (frames of the ranked-list pictures);
* ``history_csv``: ``reports/train_history.csv`` (training curves);
* ``metrics_json``: ``reports/metrics.json`` (untrained numbers when results.json has none).

Every optional input that is missing or unreadable becomes a short "not available" note in
its section; a missing results.json is a :class:`ReportInputError` that says to run the
evaluate stage.
"""
from __future__ import annotations

import base64
import html
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from psta.atomic import atomic_dir, atomic_path
from psta.data.registry import PROTOCOLS

from . import figures as F

__all__ = ["PAPER_RESULTS", "HEADLINE_PROTOCOL", "ReportInputError", "build_report"]

#: The paper's headline table (PSTA, ICCV 2021; ImageNet-initialised ResNet-50), in percent.
PAPER_RESULTS: dict[str, dict[str, Any]] = {
    "mars": {"dataset": "MARS", "rank1": 91.5, "mAP": 85.8, "protocol": "mars_official"},
    "duke": {"dataset": "DukeMTMC-VideoReID", "rank1": 98.3, "mAP": 97.7, "protocol": "duke"},
}
#: the protocol the paper's numbers use, per dataset
HEADLINE_PROTOCOL = {"mars": "mars_official", "duke": "duke"}
EVALUATE_HINT = "run the evaluate stage first (`python -m pipeline evaluate`)"
METRIC_COLUMNS = (("rank1", "Rank-1"), ("rank5", "Rank-5"), ("rank10", "Rank-10"),
                  ("rank20", "Rank-20"), ("mAP", "mAP"), ("mINP", "mINP"))
RANKED_TOPK = 10
QUERY_FRAMES = 4


class ReportInputError(FileNotFoundError):
    """A required input of the report (the evaluation results) is missing or unreadable."""


# --------------------------------------------------------------------------- small helpers

def _fmt(value: Any, digits: int = 1) -> str:
    """Percent value -> "91.5"; None / NaN -> an en dash."""
    if value is None:
        return "–"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "–" if not math.isfinite(v) else f"{v:.{digits}f}"


def _pct(fraction: Any) -> float | None:
    if fraction is None:
        return None
    try:
        v = float(fraction)
    except (TypeError, ValueError):
        return None
    return 100.0 * v if math.isfinite(v) else float("nan")


def _int(value: Any) -> str:
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return "–" if value is None else str(value)


def _protocol_text(name: str) -> str:
    protocol = PROTOCOLS.get(name)
    return protocol.description if protocol else ""


@dataclass
class Table:
    """A table rendered to both HTML and Markdown. ``highlight``: row indices to emphasise."""
    header: list[str]
    rows: list[list[str]]
    highlight: set[int] = field(default_factory=set)
    numeric_from: int = 1   # columns from this index on are right-aligned
    css_class: str = ""

    def html(self, table_id: str | None = None) -> str:
        attrs = f' id="{table_id}"' if table_id else ""
        cls = f' class="{self.css_class}"' if self.css_class else ""
        head = "".join(f'<th{" class=num" if i >= self.numeric_from else ""}>{html.escape(h)}</th>'
                       for i, h in enumerate(self.header))
        body = []
        for r, row in enumerate(self.rows):
            cells = "".join(f'<td{" class=num" if i >= self.numeric_from else ""}>{html.escape(c)}</td>'
                            for i, c in enumerate(row))
            body.append(f'<tr{" class=hl" if r in self.highlight else ""}>{cells}</tr>')
        return f"<table{attrs}{cls}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"

    def markdown(self) -> str:
        def esc(s: str) -> str:
            return s.replace("|", "\\|")

        aligns = ["---:" if i >= self.numeric_from else "---" for i in range(len(self.header))]
        lines = ["| " + " | ".join(esc(h) for h in self.header) + " |", "|" + "|".join(aligns) + "|"]
        for r, row in enumerate(self.rows):
            cells = [f"**{esc(c)}**" if r in self.highlight and c not in ("", "–") else esc(c) for c in row]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


@dataclass
class Figure:
    name: str          # file name in figures/
    png: bytes
    alt: str
    element_id: str | None = None
    caption: str = ""
    css_class: str = "figure"
    data: dict[str, str] = field(default_factory=dict)


@dataclass
class Section:
    """One report section: a list of blocks, each ("p"|"note"|"table"|"figure"|"h3"|"dl", payload)."""
    key: str
    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def note(self, text: str) -> None:
        self.blocks.append(("note", text))

    def h3(self, text: str) -> None:
        self.blocks.append(("h3", text))

    def table(self, table: Table, table_id: str | None = None) -> None:
        self.blocks.append(("table", (table, table_id)))

    def figure(self, fig: Figure) -> None:
        self.blocks.append(("figure", fig))

    def dl(self, items: list[tuple[str, str]]) -> None:
        self.blocks.append(("dl", items))


# --------------------------------------------------------------------------- inputs

def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def load_results(eval_dir: str | os.PathLike) -> dict:
    """``eval_dir/results.json``, checked; a clear error naming the file if it is missing."""
    path = Path(eval_dir) / "results.json"
    if not path.is_file():
        raise ReportInputError(
            f"evaluation results not found: {path} does not exist. The report needs the "
            f"evaluate stage's outputs; {EVALUATE_HINT}.")
    try:
        results = _read_json(path)
    except (OSError, ValueError) as e:
        raise ReportInputError(f"cannot read evaluation results {path}: {e}; {EVALUATE_HINT}.") from None
    if not isinstance(results, dict) or not isinstance(results.get("protocols"), dict) \
            or not results["protocols"]:
        raise ReportInputError(f"{path} has no 'protocols' results (see docs/CONTRACTS.md, "
                               f"'Evaluation outputs'); {EVALUATE_HINT}.")
    return results


def _optional_parquet(path: Path, notes: dict, key: str) -> pd.DataFrame | None:
    if not path.is_file():
        notes[key] = f"{path} not found"
        return None
    try:
        return pd.read_parquet(path)
    except Exception as e:  # a corrupt optional input: note it, render the rest
        notes[key] = f"cannot read {path}: {e}"
        return None


def _optional_json(path: Path | None, notes: dict, key: str) -> Any:
    if path is None:
        notes[key] = "no file given"
        return None
    if not path.is_file():
        notes[key] = f"{path} not found"
        return None
    try:
        return _read_json(path)
    except (OSError, ValueError) as e:
        notes[key] = f"cannot read {path}: {e}"
        return None


def _history(path: Path | None, notes: dict) -> pd.DataFrame | None:
    if path is None:
        notes["history"] = "no training history given"
        return None
    if not path.is_file():
        notes["history"] = f"{path} not found (it is written by the train stage)"
        return None
    try:
        df = pd.read_csv(path)
    except Exception as e:
        notes["history"] = f"cannot read {path}: {e}"
        return None
    if df.empty:
        notes["history"] = f"{path} has no epochs"
        return None
    return df


# --------------------------------------------------------------------------- sections

def _untrained(results: dict, metrics: dict | None) -> dict[str, dict[str, float]]:
    """Untrained-model numbers in percent, from results.json (fractions) or metrics.json."""
    out: dict[str, dict[str, float]] = {}
    for name, rec in (results.get("untrained") or {}).items():
        if isinstance(rec, dict):
            out[name] = {k: _pct(rec.get(k)) for k, _ in METRIC_COLUMNS if k in rec}
    if not out and isinstance(metrics, dict):
        for name, rec in (metrics.get("untrained") or {}).items():
            if isinstance(rec, dict):
                out[name] = {k: float(v) for k, v in rec.items() if k in dict(METRIC_COLUMNS)}
    return out


def _rerank_text(value: Any) -> str:
    if value is None or value is False:
        return "off"
    if value is True:
        return "on (k-reciprocal)"
    if isinstance(value, dict):
        return "on (" + ", ".join(f"{k}={v}" for k, v in value.items()) + ")"
    return str(value)


def _summary_section(results, dataset, ds_label, headline, paper_row, history, stats) -> Section:
    s = Section("summary", "Run summary")
    protocols = results["protocols"]
    head = protocols.get(headline) or next(iter(protocols.values()))
    head_name = headline if headline in protocols else next(iter(protocols))
    cards = [("Rank-1", _pct(head.get("rank1")), paper_row.get("rank1") if paper_row else None),
             ("mAP", _pct(head.get("mAP")), paper_row.get("mAP") if paper_row else None)]
    s.blocks.append(("cards", (cards, head_name)))
    items = [
        ("Dataset", f"{ds_label} ({dataset})"),
        ("Protocols", ", ".join(protocols)),
        ("Headline protocol", f"{head_name} — {_protocol_text(head_name)}".rstrip(" —")),
        ("Test clip sampling", str(results.get("sampling", "–"))),
        ("Distance", str(results.get("metric", "–"))),
        ("Re-ranking", _rerank_text(results.get("rerank"))),
        ("Queries / gallery", f"{_int(head.get('num_queries'))} / {_int(head.get('num_gallery'))} "
                              f"({_int(head.get('num_valid_queries'))} queries with a valid match)"),
    ]
    if history is not None:
        last = history.iloc[-1]
        epochs = len(history)
        txt = f"{epochs} epoch{'s' if epochs != 1 else ''}"
        if "loss_total" in history.columns:
            first = pd.to_numeric(history["loss_total"], errors="coerce").iloc[0]
            txt += f"; total loss {_fmt(first, 3)} → {_fmt(last.get('loss_total'), 3)}"
        items.append(("Training", txt))
    if stats:
        tr = (stats.get("splits") or {}).get("train", {})
        items.append(("Training identities", _int(stats.get("num_classes", tr.get("identities")))))
    s.dl(items)
    return s


def _results_section(results, dataset, ds_label, headline, paper_all, untrained, synthetic) -> Section:
    s = Section("results", "Results beside the paper")
    protocols = results["protocols"]
    header = ["Model", "Dataset", "Protocol"] + [label + " (%)" for _, label in METRIC_COLUMNS]
    rows, hl = [], set()
    paper_row = paper_all.get(dataset)
    ds_name = (paper_row or {}).get("dataset", dataset)
    if paper_row:
        rows.append(["PSTA paper (ImageNet ResNet-50)", ds_name, str(paper_row.get("protocol", headline))]
                    + [_fmt(paper_row.get(k)) for k, _ in METRIC_COLUMNS])
    order = sorted(protocols, key=lambda n: (n != headline, n))
    for name in order:
        rec = protocols[name]
        if name == headline:
            hl.add(len(rows))
        rows.append(["Ours, trained", ds_label, name] + [_fmt(_pct(rec.get(k))) for k, _ in METRIC_COLUMNS])
        if name in untrained:
            u = untrained[name]
            rows.append(["Ours, untrained (initialisation)", ds_label, name]
                        + [_fmt(u.get(k)) for k, _ in METRIC_COLUMNS])
    s.table(Table(header, rows, hl, numeric_from=3, css_class="results"), "results-table")
    notes = []
    for name in order:
        desc = _protocol_text(name)
        if desc:
            notes.append(f"{name}: {desc}.")
    if paper_row and synthetic:
        notes.append(f"This run is on the embedded synthetic dataset written in the {ds_name} "
                     f"layout: the paper's row is the real {ds_name}, shown for reference, not for "
                     "comparison. '–': not reported by the paper, or not computed (a gallery "
                     "shorter than the rank).")
    elif paper_row:
        notes.append(f"The paper's {ds_name} numbers use the {paper_row.get('protocol', headline)} "
                     "protocol; compare them with the highlighted row. '–': not reported by the "
                     "paper, or not computed (a gallery shorter than the rank).")
    s.p(" ".join(notes))
    if not untrained:
        s.note("Untrained-model numbers not available (set evaluate.untrained_baseline: true "
               "to see what training bought).")
    else:
        gains = []
        for name in order:
            if name in untrained and untrained[name].get("rank1") is not None:
                d = _pct(protocols[name].get("rank1")) - untrained[name]["rank1"]
                gains.append(f"{name}: rank-1 {'+' if d >= 0 else ''}{d:.1f} points over the untrained model")
        if gains:
            s.p("Training: " + "; ".join(gains) + ".")
    s.h3("The paper's headline table")
    prow = [[v.get("dataset", k), v.get("protocol", ""), _fmt(v.get("rank1")), _fmt(v.get("mAP"))]
            for k, v in paper_all.items()]
    s.table(Table(["Dataset", "Protocol", "Rank-1 (%)", "mAP (%)"], prow, numeric_from=2), "paper-table")
    return s


def _cmc_section(results, headline, paper_row) -> tuple[Section, Figure | None]:
    s = Section("cmc", "CMC curve")
    curves = {n: r["cmc"] for n, r in results["protocols"].items() if isinstance(r.get("cmc"), list) and r["cmc"]}
    if not curves:
        s.note("CMC curve not available: results.json holds no 'cmc' arrays.")
        return s, None
    paper = None
    if paper_row and paper_row.get("rank1") is not None:
        paper = {"rank1": float(paper_row["rank1"]),
                 "label": f"paper ({paper_row.get('protocol', headline)})"}
    fig = Figure("cmc.png", F.cmc_figure(curves, paper), "CMC curve", element_id="cmc-plot",
                 caption="Cumulative matching characteristic: the share of queries whose first "
                         "correct match is within the top k, for every protocol evaluated.")
    s.figure(fig)
    return s, fig


def _camera_section(results) -> Section:
    s = Section("cameras", "Per-camera results")
    protocols = {n: r.get("per_camera") for n, r in results["protocols"].items() if r.get("per_camera")}
    if not protocols:
        s.note("Per-camera numbers not available: results.json has no 'per_camera' entries.")
        return s
    cams = sorted({int(c) for pc in protocols.values() for c in pc})
    header = ["Query camera (camid)", "Queries"]
    for name in protocols:
        header += [f"Rank-1 (%) {name}", f"mAP (%) {name}"]
    rows = []
    for c in cams:
        nq = next(((pc.get(str(c)) or pc.get(c) or {}).get("num_queries") for pc in protocols.values()
                   if str(c) in pc or c in pc), None)
        row = [str(c), _int(nq)]
        for pc in protocols.values():
            m = pc.get(str(c), pc.get(c)) or {}
            row += [_fmt(_pct(m.get("rank1"))), _fmt(_pct(m.get("mAP")))]
        rows.append(row)
    s.table(Table(header, rows, numeric_from=1, css_class="cams"), "camera-table")
    s.p("Cameras are 0-based (camid 0 is camera 1 in MARS file names). Queries are grouped by "
        "their own camera; '–': no query of that camera has a valid match.")
    return s


def _training_section(history, notes) -> tuple[Section, Figure | None]:
    s = Section("training", "Training curves")
    if history is None:
        s.note(f"Training history not available: {notes.get('history', 'not given')}.")
        return s, None
    fig = Figure("training.png", F.training_figure(history), "Training curves",
                 element_id="training-plot",
                 caption="Mean losses per epoch, the learning-rate schedule and, when the run held "
                         "out identities, validation rank-1 / mAP.")
    s.figure(fig)
    last = history.iloc[-1]
    val = [c for c in ("val_rank1", "val_mAP") if c in history.columns]
    if val:
        best = []
        for c in val:
            v = pd.to_numeric(history[c], errors="coerce")
            if v.notna().any():
                v = v * 100 if v.abs().max() <= 1 else v
                at = history["epoch"].loc[v.idxmax()] if "epoch" in history.columns else v.idxmax()
                label = {"val_rank1": "rank-1", "val_mAP": "mAP"}[c]
                best.append(f"best {label} {v.max():.1f}% (epoch {at})")
        if best:
            s.p("Validation: " + ", ".join(best) + ".")
    if "clips_per_s" in history.columns:
        s.p(f"Throughput in the last epoch: {_fmt(last.get('clips_per_s'))} clips/s.")
    return s, fig


def _dataset_section(stats, notes) -> Section:
    s = Section("dataset", "Dataset statistics")
    if not stats:
        s.note(f"Dataset statistics not available: {notes.get('stats', 'no stats.json')}.")
        return s
    splits = stats.get("splits") or {}
    rows = []
    for name in ("train", "query", "gallery"):
        if name in splits:
            sp = splits[name]
            rows.append([name, _int(sp.get("tracklets")), _int(sp.get("identities")), _int(sp.get("frames"))])
    for name, sp in splits.items():
        if name not in ("train", "query", "gallery"):
            rows.append([name, _int(sp.get("tracklets")), _int(sp.get("identities")), _int(sp.get("frames"))])
    if "tracklets" in stats or "frames" in stats:
        rows.append(["all (indexed)", _int(stats.get("tracklets")), "", _int(stats.get("frames"))])
    if rows:
        s.table(Table(["Split", "Tracklets", "Identities", "Frames"], rows, {len(rows) - 1} if
                      rows[-1][0].startswith("all") else set()), "dataset-table")
    items = []
    for key, label in (("num_cameras", "Cameras"), ("num_classes", "Training identities (classes)"),
                       ("junk_tracklets_dropped", "Junk tracklets dropped"),
                       ("junk_frames_dropped", "Junk frames dropped"),
                       ("distractor_tracklets", "Distractor tracklets (pid 0, kept in the gallery)"),
                       ("distractor_identities", "Distractor identities"),
                       ("skipped_bad_frames", "Bad frames skipped"),
                       ("dropped_empty_tracklets", "Empty tracklets dropped")):
        if key in stats:
            items.append((label, _int(stats[key])))
    tl = stats.get("tracklet_length")
    if isinstance(tl, dict):
        items.append(("Tracklet length (frames)", f"min {_int(tl.get('min'))}, mean {_fmt(tl.get('mean'))}, "
                                                  f"max {_int(tl.get('max'))}"))
    if items:
        s.dl(items)
    s.p("Identities exclude distractors (pid 0); junk tracklets (pid -1) are not in the index.")
    return s


def _pick_queries(ranked: pd.DataFrame, protocol: str, num: int) -> tuple[list[dict], list[dict]]:
    r = ranked[ranked["protocol"] == protocol]
    per_q = (r.groupby("query_tracklet_id", sort=True)
             .agg(ap=("query_ap", "first"), first=("query_first_match_rank", "first"))
             .reset_index())
    per_q = per_q[np.isfinite(per_q["ap"].to_numpy(dtype=np.float64))]
    if per_q.empty or num <= 0:
        return [], []
    firstkey = per_q["first"].where(per_q["first"] > 0, np.iinfo(np.int64).max)
    best = (per_q.assign(fk=firstkey).sort_values(["ap", "fk", "query_tracklet_id"],
                                                  ascending=[False, True, True]).head(num))
    rest = per_q[~per_q["query_tracklet_id"].isin(best["query_tracklet_id"])]
    worst = (rest.assign(fk=firstkey[rest.index]).sort_values(["ap", "fk", "query_tracklet_id"],
                                                              ascending=[True, False, True]).head(num))

    def rows(df):
        out = []
        for q in df.itertuples():
            lst = r[r["query_tracklet_id"] == q.query_tracklet_id].sort_values("rank").head(RANKED_TOPK)
            out.append({"query": int(q.query_tracklet_id), "ap": float(q.ap), "first": int(q.first),
                        "gallery": lst["gallery_tracklet_id"].astype(np.int64).tolist(),
                        "matches": lst["match"].astype(bool).tolist()})
        return out

    return rows(best), rows(worst)


class _TrackletInfo:
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
        rec = self.by_id.get(tid)
        if rec is None:
            return f"#{tid}"
        pid = int(rec.get("pid", -1))
        who = "distractor" if pid == 0 else f"id {pid}"
        return f"{who} c{int(rec.get('camid', -1))}" if "camid" in rec else who

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
            parts.append(f"camid {int(rec['camid'])}")
        if "n_frames" in rec:
            parts.append(f"{int(rec['n_frames'])} frames")
        return ", ".join(parts)


def _ranked_section(ranked, eval_tracklets, index_tracklets, cache_dir, headline, num_examples,
                    notes, tile_height) -> tuple[Section, list[Figure]]:
    s = Section("ranked", "Ranked lists: best and worst queries")
    figs: list[Figure] = []
    if ranked is None:
        s.note(f"Ranked lists not available: {notes.get('ranked', 'no ranked.parquet')}.")
        return s, figs
    if num_examples <= 0:
        s.note("Ranked lists not requested (num_examples = 0).")
        return s, figs
    missing = [c for c in ("protocol", "query_tracklet_id", "rank", "gallery_tracklet_id", "match",
                           "query_ap", "query_first_match_rank") if c not in ranked.columns]
    if missing:
        s.note(f"Ranked lists not available: ranked.parquet lacks column(s) {missing} "
               "(see docs/CONTRACTS.md); rerun the evaluate stage.")
        return s, figs
    protocols = list(dict.fromkeys(ranked["protocol"].astype(str)))
    if not protocols:
        s.note("Ranked lists not available: ranked.parquet is empty.")
        return s, figs
    protocol = headline if headline in protocols else protocols[0]
    best, worst = _pick_queries(ranked, protocol, num_examples)
    try:
        from psta.data.cache import FrameCache
        cache = FrameCache(cache_dir)
    except Exception as e:
        s.note(f"Ranked-list pictures not available: cannot open the frame cache {cache_dir} ({e}).")
        return s, figs
    info = _TrackletInfo([eval_tracklets, index_tracklets], cache)
    s.p(f"Protocol {protocol}. Each strip: {QUERY_FRAMES} frames of the query tracklet (blue), then "
        f"its top-{RANKED_TOPK} gallery tracklets (middle frame of each), framed green when the "
        "identity matches the query and red otherwise; below each, its identity and 0-based "
        "camid. Best = highest average precision (AP), worst = lowest AP.")
    try:
        for kind, items in (("best", best), ("worst", worst)):
            s.h3(f"{'Best' if kind == 'best' else 'Worst'} {len(items)} queries")
            if not items:
                s.note(f"No {kind} queries left to show (too few valid queries).")
            for i, q in enumerate(items, start=1):
                n = info.n_frames(q["query"])
                qidx = np.unique(np.linspace(0, n - 1, min(QUERY_FRAMES, n)).round().astype(np.int64))
                qframes = cache.read(q["query"], qidx)
                gframes = [cache.read(g, [info.n_frames(g) // 2])[0] for g in q["gallery"]]
                img = F.ranked_strip(qframes, gframes, q["matches"], tile_height=tile_height,
                                     gallery_labels=[info.label(g) for g in q["gallery"]])
                first = f"first match at rank {q['first']}" if q["first"] > 0 else "no valid match"
                caption = (f"{kind.capitalize()} #{i}: query {info.describe(q['query'])}; "
                           f"AP {100 * q['ap']:.1f}%, {first}, {sum(q['matches'])} of the top "
                           f"{len(q['matches'])} match.")
                figs.append(Figure(f"ranked_{kind}_{i}.png", F.png_bytes(img),
                                   f"Ranked list of query tracklet {q['query']} ({kind} #{i})",
                                   caption=caption, css_class="figure ranked",
                                   data={"query": str(q["query"]), "kind": kind,
                                         "matches": "".join("1" if m else "0" for m in q["matches"])}))
                s.figure(figs[-1])
    except Exception as e:
        s.note(f"Ranked-list pictures stopped early: could not read frames from {cache_dir} ({e}).")
    finally:
        cache.close()
    return s, figs


# --------------------------------------------------------------------------- output

CSS = """
:root { --fg:#1f2328; --muted:#59636e; --line:#d1d9e0; --bg:#ffffff; --soft:#f6f8fa; --accent:#0969da;
        --good:#1a7f37; --hl:#fff8c5; }
* { box-sizing: border-box; }
body { margin:0; background:var(--soft); color:var(--fg);
       font: 15px/1.5 -apple-system, BlinkMacSystemFont, "Segoe UI", "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 48px; background: var(--bg);
       min-height: 100vh; box-shadow: 0 0 0 1px var(--line); }
h1 { font-size: 26px; margin: 4px 0 2px; }
h2 { font-size: 20px; margin: 34px 0 10px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
h3 { font-size: 16px; margin: 22px 0 8px; }
.subtitle { color: var(--muted); margin: 0 0 14px; }
nav { font-size: 14px; margin: 8px 0 4px; }
nav a { color: var(--accent); text-decoration: none; margin-right: 14px; white-space: nowrap; }
table { border-collapse: collapse; margin: 8px 0 10px; font-size: 14px; }
th, td { border: 1px solid var(--line); padding: 5px 10px; text-align: left; }
th { background: var(--soft); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) { background: #fbfcfd; }
tr.hl td { background: var(--hl); font-weight: 600; }
.tablewrap { overflow-x: auto; }
dl.kv { display: grid; grid-template-columns: max-content 1fr; gap: 4px 18px; margin: 10px 0; font-size: 14px; }
dl.kv dt { color: var(--muted); }
dl.kv dd { margin: 0; }
.cards { display: flex; gap: 14px; flex-wrap: wrap; margin: 8px 0 6px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 16px; min-width: 210px; }
.card .label { color: var(--muted); font-size: 13px; }
.card .value { font-size: 28px; font-weight: 650; }
.card .paper { color: var(--muted); font-size: 13px; }
figure { margin: 10px 0 18px; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); }
figure.ranked img { border: none; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
p.note { color: var(--muted); font-style: italic; background: var(--soft); border-left: 3px solid var(--line);
         padding: 6px 10px; }
footer { margin-top: 36px; color: var(--muted); font-size: 12px; }
"""


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _render_html(title: str, subtitle: str, sections: list[Section], footer: str) -> str:
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{html.escape(title)}</title>", f"<style>{CSS}</style>", "</head>", "<body>", "<main>",
           f"<h1>{html.escape(title)}</h1>", f'<p class="subtitle">{html.escape(subtitle)}</p>',
           "<nav>" + "".join(f'<a href="#{s.key}">{html.escape(s.title)}</a>' for s in sections) + "</nav>"]
    for s in sections:
        out.append(f'<section id="{s.key}">')
        out.append(f"<h2>{html.escape(s.title)}</h2>")
        for kind, payload in s.blocks:
            if kind == "p":
                out.append(f"<p>{html.escape(payload)}</p>")
            elif kind == "note":
                out.append(f'<p class="note">{html.escape(payload)}</p>')
            elif kind == "h3":
                out.append(f"<h3>{html.escape(payload)}</h3>")
            elif kind == "dl":
                out.append('<dl class="kv">' + "".join(
                    f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in payload) + "</dl>")
            elif kind == "table":
                table, tid = payload
                out.append(f'<div class="tablewrap">{table.html(tid)}</div>')
            elif kind == "cards":
                cards, proto = payload
                parts = []
                for label, ours, paper in cards:
                    ref = (f"paper {_fmt(paper)}% · Δ {'+' if ours - paper >= 0 else '−'}{abs(ours - paper):.1f} points"
                           if paper is not None and ours is not None and math.isfinite(ours) else "")
                    parts.append(f'<div class="card"><div class="label">{html.escape(label)} '
                                 f'({html.escape(proto)})</div><div class="value">{_fmt(ours)}%</div>'
                                 f'<div class="paper">{html.escape(ref)}</div></div>')
                out.append('<div class="cards">' + "".join(parts) + "</div>")
            elif kind == "figure":
                f: Figure = payload
                attrs = f' id="{f.element_id}"' if f.element_id else ""
                attrs += "".join(f' data-{k}="{html.escape(v)}"' for k, v in f.data.items())
                out.append(f'<figure class="{f.css_class}"><img{attrs} alt="{html.escape(f.alt)}" '
                           f'src="{_data_uri(f.png)}">'
                           + (f"<figcaption>{html.escape(f.caption)}</figcaption>" if f.caption else "")
                           + "</figure>")
        out.append("</section>")
    out += [f"<footer>{html.escape(footer)}</footer>", "</main>", "</body>", "</html>", ""]
    return "\n".join(out)


def _render_md(title: str, subtitle: str, sections: list[Section], footer: str) -> str:
    out = [f"# {title}", "", f"_{subtitle}_", ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        for kind, payload in s.blocks:
            if kind == "p":
                out += [payload, ""]
            elif kind == "note":
                out += [f"> {payload}", ""]
            elif kind == "h3":
                out += [f"### {payload}", ""]
            elif kind == "dl":
                out += [Table(["Item", "Value"], [[k, v] for k, v in payload], numeric_from=99).markdown(), ""]
            elif kind == "table":
                out += [payload[0].markdown(), ""]
            elif kind == "cards":
                cards, proto = payload
                for label, ours, paper in cards:
                    ref = f" (paper: {_fmt(paper)}%)" if paper is not None else ""
                    out.append(f"- **{label}** ({proto}): **{_fmt(ours)}%**{ref}")
                out.append("")
            elif kind == "figure":
                f: Figure = payload
                out += [f"![{f.alt}](figures/{f.name})", ""]
                if f.caption:
                    out += [f"_{f.caption}_", ""]
    out += ["---", "", f"_{footer}_", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------- entry point

def build_report(eval_dir: str | os.PathLike, index_dir: str | os.PathLike | None,
                 cache_dir: str | os.PathLike | None, history_csv: str | os.PathLike | None,
                 metrics_json: str | os.PathLike | None, out_html: str | os.PathLike,
                 out_md: str | os.PathLike, *, num_examples: int = 3,
                 paper: dict[str, dict[str, Any]] | None = None, tile_height: int = 128,
                 data_source: str | None = None) -> dict:
    """Render the run report: ``out_html`` (self-contained) and ``out_md`` + ``figures/``.

    Args:
        eval_dir: the evaluate stage's directory (``results.json`` required; ``ranked.parquet``
            and ``tracklets.parquet`` for the ranked-list pictures).
        index_dir: the tracklet index directory (``stats.json``; ``tracklets.parquet``).
        cache_dir: the frame cache directory (frames of the ranked-list pictures).
        history_csv: ``reports/train_history.csv`` (training curves), or None.
        metrics_json: ``reports/metrics.json`` (untrained numbers if results.json has none), or None.
        out_html, out_md: the two report files; the Markdown figures go to
            ``Path(out_md).parent / "figures"`` (replaced as a whole).
        num_examples: how many best and how many worst queries to picture.
        paper: the paper's table, ``{dataset key: {"dataset", "rank1", "mAP", "protocol"}}`` in
            percent; default :data:`PAPER_RESULTS`.
        tile_height: pixel height of a frame in the ranked-list pictures.
        data_source: the ingest's ``data.source``; ``"synthetic"`` labels the dataset as the
            synthetic demo and drops the comparisons with the paper (its numbers are on the
            real dataset).

    Returns:
        ``{"html", "md", "figures_dir"`` (paths as str), ``"figures"`` (file names),
        ``"num_figures"``, ``"html_bytes"``, ``"md_bytes"``, ``"figure_bytes"``,
        ``"missing"`` ({input: why} for optional inputs not used), ``"examples"``
        ({"best": [query tracklet ids], "worst": [...]}), ``"protocol_shown"``}.

    Raises:
        ReportInputError: ``eval_dir/results.json`` is missing or unreadable.
    """
    eval_dir = Path(eval_dir)
    results = load_results(eval_dir)
    notes: dict[str, str] = {}
    paper_all = dict(PAPER_RESULTS if paper is None else paper)
    protocols = results["protocols"]
    dataset = str(results.get("dataset") or ("duke" if "duke" in protocols else "mars")).lower()
    headline = (paper_all.get(dataset) or {}).get("protocol") or HEADLINE_PROTOCOL.get(dataset)
    if headline not in protocols:
        headline = next(iter(protocols))
    paper_row = paper_all.get(dataset)

    index_dir = Path(index_dir) if index_dir is not None else None
    stats = _optional_json(index_dir / "stats.json" if index_dir else None, notes, "stats")
    metrics = _optional_json(Path(metrics_json) if metrics_json is not None else None, notes, "metrics")
    history = _history(Path(history_csv) if history_csv is not None else None, notes)
    ranked = _optional_parquet(eval_dir / "ranked.parquet", notes, "ranked")
    eval_tracklets = _optional_parquet(eval_dir / "tracklets.parquet", notes, "eval_tracklets")
    index_tracklets = None
    if index_dir is not None and (index_dir / "tracklets.parquet").is_file():
        index_tracklets = _optional_parquet(index_dir / "tracklets.parquet", notes, "index_tracklets")
    untrained = _untrained(results, metrics)
    if not untrained:
        notes.setdefault("untrained", "no untrained-model numbers")

    synthetic = data_source == "synthetic"
    ds_name = (paper_row or {}).get("dataset", dataset)
    ds_label = f"synthetic, {ds_name} layout" if synthetic else ds_name
    comparable = None if synthetic else paper_row  # no deltas to the paper on the demo data
    sections = [_summary_section(results, dataset, ds_label, headline, comparable, history, stats)]
    sections.append(_results_section(results, dataset, ds_label, headline, paper_all, untrained, synthetic))
    cmc_sec, cmc_fig = _cmc_section(results, headline, comparable)
    sections.append(cmc_sec)
    sections.append(_camera_section(results))
    train_sec, train_fig = _training_section(history, notes)
    sections.append(train_sec)
    sections.append(_dataset_section(stats, notes))
    if cache_dir is None:
        ranked_sec, ranked_figs = Section("ranked", "Ranked lists: best and worst queries"), []
        ranked_sec.note("Ranked lists not available: no frame cache given.")
    else:
        ranked_sec, ranked_figs = _ranked_section(ranked, eval_tracklets, index_tracklets,
                                                  Path(cache_dir), headline, num_examples, notes,
                                                  tile_height)
    sections.append(ranked_sec)

    figs = [f for f in (cmc_fig, train_fig) if f is not None] + ranked_figs
    title = f"PSTA video re-identification — {ds_label} run report"
    subtitle = (f"Pyramid Spatial-Temporal Aggregation (ICCV 2021) reproduction · dataset {dataset} · "
                f"protocols {', '.join(protocols)}")
    footer = (f"Generated by psta.report from {eval_dir}"
              + (f", {index_dir}" if index_dir else "") + (f", {cache_dir}" if cache_dir else "")
              + (f", {history_csv}" if history_csv else "") + (f", {metrics_json}" if metrics_json else "")
              + ". Numbers in percent.")

    out_html, out_md = Path(out_html), Path(out_md)
    fig_dir = out_md.parent / "figures"
    with atomic_dir(fig_dir) as tmp:
        for f in figs:
            (tmp / f.name).write_bytes(f.png)
    md_text = _render_md(title, subtitle, sections, footer)
    with atomic_path(out_md) as tmp:
        tmp.write_text(md_text, encoding="utf-8")
    html_text = _render_html(title, subtitle, sections, footer)
    with atomic_path(out_html) as tmp:
        tmp.write_text(html_text, encoding="utf-8")

    return {
        "html": str(out_html), "md": str(out_md), "figures_dir": str(fig_dir),
        "figures": [f.name for f in figs], "num_figures": len(figs),
        "html_bytes": out_html.stat().st_size, "md_bytes": out_md.stat().st_size,
        "figure_bytes": sum(len(f.png) for f in figs),
        "missing": {k: v for k, v in notes.items() if k not in ("index_tracklets",)},
        "examples": {"best": [int(f.data["query"]) for f in ranked_figs if f.data.get("kind") == "best"],
                     "worst": [int(f.data["query"]) for f in ranked_figs if f.data.get("kind") == "worst"]},
        "protocol_shown": headline,
    }
