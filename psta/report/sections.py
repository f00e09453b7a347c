"""The report's sections as plain data (dicts of strings, :class:`Table` and :class:`Figure`).

One builder per section; the templates (``templates/report.html.j2`` and ``report.md.j2``)
lay each section out. Numbers arrive as fractions (results.json) and leave as percent strings.
"""
from __future__ import annotations

import math
from typing import Any

import pandas as pd

from psta.data.registry import PROTOCOLS

from . import figures as F
from .content import Figure, Table, fmt, fmt_int, pct

__all__ = ["METRIC_COLUMNS", "summary_section", "results_section", "cmc_section",
           "camera_section", "training_section", "dataset_section", "untrained_numbers"]

METRIC_COLUMNS = (("rank1", "Rank-1"), ("rank5", "Rank-5"), ("rank10", "Rank-10"),
                  ("rank20", "Rank-20"), ("mAP", "mAP"), ("mINP", "mINP"))


def untrained_numbers(results: dict, metrics: dict | None) -> dict[str, dict[str, float]]:
    """Untrained-model numbers in percent, from results.json (fractions) or metrics.json."""
    out: dict[str, dict[str, float]] = {}
    for name, rec in (results.get("untrained") or {}).items():
        if isinstance(rec, dict):
            out[name] = {k: pct(rec.get(k)) for k, _ in METRIC_COLUMNS if k in rec}
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


def _card(label: str, ours: float | None, paper: float | None) -> dict[str, str | None]:
    """A headline number; ``paper`` (percent) is None where no comparison is meaningful."""
    delta = None
    if paper is not None and ours is not None and math.isfinite(ours):
        delta = f"{'+' if ours - paper >= 0 else '−'}{abs(ours - paper):.1f}"
    return {"label": label, "value": fmt(ours), "paper": None if paper is None else fmt(paper),
            "delta": delta}


def _protocol_text(name: str) -> str:
    """What a registered protocol's gallery is ("" for a protocol the registry does not know)."""
    return PROTOCOLS[name].description if name in PROTOCOLS else ""


def summary_section(results: dict, dataset: str, ds_label: str, headline: str,
                    paper_row: dict | None, history: pd.DataFrame | None, stats: dict | None) -> dict:
    head = results["protocols"][headline]
    paper_row = paper_row or {}
    items = [("Dataset", f"{ds_label} ({dataset})")]
    split = (stats or {}).get("split")
    if split:   # one of a dataset's published train/test splits (iLIDS-VID, PRID-2011)
        items.append(("Split", f"{split['index']} of 0..{split['count'] - 1} ({split['source']}): "
                               f"{split['train_identities']} train / {split['test_identities']} test identities"))
    items += [
        ("Protocols", ", ".join(results["protocols"])),
        ("Headline protocol", f"{headline} — {_protocol_text(headline)}".rstrip(" —")),
        ("Test clip sampling", str(results.get("sampling", "–"))),
        ("Distance", str(results.get("metric", "–"))),
        ("Re-ranking", _rerank_text(results.get("rerank"))),
        ("Queries / gallery", f"{fmt_int(head.get('num_queries'))} / {fmt_int(head.get('num_gallery'))} "
                              f"({fmt_int(head.get('num_valid_queries'))} queries with a valid match)"),
    ]
    if history is not None:
        epochs = len(history)
        text = f"{epochs} epoch{'s' if epochs != 1 else ''}"
        if "loss_total" in history.columns:
            loss = pd.to_numeric(history["loss_total"], errors="coerce")
            text += f"; total loss {fmt(loss.iloc[0], 3)} → {fmt(loss.iloc[-1], 3)}"
        items.append(("Training", text))
    if stats:
        train = (stats.get("splits") or {}).get("train", {})
        items.append(("Training identities", fmt_int(stats.get("num_classes", train.get("identities")))))
    return {"key": "summary", "title": "Run summary", "protocol": headline, "facts": items,
            "cards": [_card("Rank-1", pct(head.get("rank1")), paper_row.get("rank1")),
                      _card("mAP", pct(head.get("mAP")), paper_row.get("mAP"))]}


def _results_table(protocols: dict, order: list[str], headline: str, ds_label: str,
                   paper_row: dict | None, untrained: dict) -> Table:
    header = ["Model", "Dataset", "Protocol"] + [label + " (%)" for _, label in METRIC_COLUMNS]
    rows, highlight = [], set()
    if paper_row:
        rows.append(["PSTA paper (ImageNet ResNet-50)", paper_row.get("dataset", ""),
                     str(paper_row.get("protocol", headline))]
                    + [fmt(paper_row.get(k)) for k, _ in METRIC_COLUMNS])
    for name in order:
        if name == headline:
            highlight.add(len(rows))
        rows.append(["Ours, trained", ds_label, name]
                    + [fmt(pct(protocols[name].get(k))) for k, _ in METRIC_COLUMNS])
        if name in untrained:
            rows.append(["Ours, untrained (initialisation)", ds_label, name]
                        + [fmt(untrained[name].get(k)) for k, _ in METRIC_COLUMNS])
    return Table("results-table", header, rows, frozenset(highlight), numeric_from=3,
                 css_class="results")


def _protocol_notes(order: list[str], paper_row: dict | None, headline: str, synthetic: bool) -> str:
    notes = [f"{name}: {PROTOCOLS[name].description}." for name in order if name in PROTOCOLS]
    if paper_row:
        ds_name = paper_row.get("dataset", "")
        if synthetic:
            notes.append(f"This run is on the embedded synthetic dataset written in the {ds_name} "
                         f"layout: the paper's row is the real {ds_name}, shown for reference, not "
                         "for comparison.")
        else:
            notes.append(f"The paper's {ds_name} numbers use the {paper_row.get('protocol', headline)} "
                         "protocol; compare them with the highlighted row.")
        notes.append("'–': not reported by the paper, or not computed (a gallery shorter than the rank).")
    return " ".join(notes)


def _training_gains(protocols: dict, order: list[str], untrained: dict) -> str | None:
    gains = []
    for name in order:
        if name in untrained and untrained[name].get("rank1") is not None:
            d = pct(protocols[name].get("rank1")) - untrained[name]["rank1"]
            gains.append(f"{name}: rank-1 {'+' if d >= 0 else ''}{d:.1f} points over the untrained model")
    return "Training: " + "; ".join(gains) + "." if gains else None


def results_section(results: dict, headline: str, ds_label: str, paper_all: dict,
                    paper_row: dict | None, untrained: dict, synthetic: bool) -> dict:
    protocols = results["protocols"]
    order = sorted(protocols, key=lambda n: (n != headline, n))
    paper_rows = [[v.get("dataset", k), v.get("protocol", ""), fmt(v.get("rank1")), fmt(v.get("mAP"))]
                  for k, v in paper_all.items()]
    return {
        "key": "results", "title": "Results beside the paper",
        "table": _results_table(protocols, order, headline, ds_label, paper_row, untrained),
        "protocol_notes": _protocol_notes(order, paper_row, headline, synthetic),
        "untrained_missing": not untrained,
        "gains": _training_gains(protocols, order, untrained) if untrained else None,
        "paper_table": Table("paper-table", ["Dataset", "Protocol", "Rank-1 (%)", "mAP (%)"],
                             paper_rows, numeric_from=2),
    }


def cmc_section(results: dict, headline: str, paper_row: dict | None) -> dict:
    curves = {n: r["cmc"] for n, r in results["protocols"].items()
              if isinstance(r.get("cmc"), list) and r["cmc"]}
    figure = None
    if curves:
        paper = None
        if paper_row and paper_row.get("rank1") is not None:
            paper = {"rank1": float(paper_row["rank1"]),
                     "label": f"paper ({paper_row.get('protocol', headline)})"}
        figure = Figure("cmc.png", F.cmc_figure(curves, paper), "CMC curve", id="cmc-plot",
                        caption="Cumulative matching characteristic: the share of queries whose "
                                "first correct match is within the top k, for every protocol "
                                "evaluated.")
    return {"key": "cmc", "title": "CMC curve", "figure": figure}


def camera_section(results: dict) -> dict:
    section = {"key": "cameras", "title": "Per-camera results", "table": None}
    protocols = {n: r["per_camera"] for n, r in results["protocols"].items() if r.get("per_camera")}
    if not protocols:
        return section
    cams = sorted({int(c) for pc in protocols.values() for c in pc})
    header = ["Query camera (camid)", "Queries"]
    for name in protocols:
        header += [f"Rank-1 (%) {name}", f"mAP (%) {name}"]
    rows = []
    for c in cams:
        per_cam = [pc.get(str(c), pc.get(c)) or {} for pc in protocols.values()]
        num_queries = next((m.get("num_queries") for m in per_cam if m), None)
        row = [str(c), fmt_int(num_queries)]
        for m in per_cam:
            row += [fmt(pct(m.get("rank1"))), fmt(pct(m.get("mAP")))]
        rows.append(row)
    section["table"] = Table("camera-table", header, rows, numeric_from=1, css_class="cams")
    return section


def _best_validation(history: pd.DataFrame) -> str | None:
    best = []
    for column, label in (("val_rank1", "rank-1"), ("val_mAP", "mAP")):
        if column not in history.columns:
            continue
        v = pd.to_numeric(history[column], errors="coerce")
        if v.notna().any():
            v = v * 100 if v.abs().max() <= 1 else v
            at = history["epoch"].loc[v.idxmax()] if "epoch" in history.columns else v.idxmax()
            best.append(f"best {label} {v.max():.1f}% (epoch {at})")
    return "Validation: " + ", ".join(best) + "." if best else None


def training_section(history: pd.DataFrame | None, missing: str | None) -> dict:
    section = {"key": "training", "title": "Training curves", "figure": None,
               "missing": missing or "not given", "validation": None, "throughput": None}
    if history is None:
        return section
    section["figure"] = Figure(
        "training.png", F.training_figure(history), "Training curves", id="training-plot",
        caption="Mean losses per epoch, the learning-rate schedule and, when the run held out "
                "identities, validation rank-1 / mAP.")
    section["validation"] = _best_validation(history)
    if "clips_per_s" in history.columns:
        section["throughput"] = fmt(history.iloc[-1].get("clips_per_s"))
    return section


_STAT_ITEMS = (("num_cameras", "Cameras"), ("num_classes", "Training identities (classes)"),
               ("junk_tracklets_dropped", "Junk tracklets dropped"),
               ("junk_frames_dropped", "Junk frames dropped"),
               ("distractor_tracklets", "Distractor tracklets (pid 0, kept in the gallery)"),
               ("distractor_identities", "Distractor identities"),
               ("skipped_bad_frames", "Bad frames skipped"),
               ("dropped_empty_tracklets", "Empty tracklets dropped"))


def _split_table(stats: dict) -> Table | None:
    splits = stats.get("splits") or {}
    names = [n for n in ("train", "query", "gallery") if n in splits]
    names += [n for n in splits if n not in ("train", "query", "gallery")]
    rows = [[n, fmt_int(splits[n].get("tracklets")), fmt_int(splits[n].get("identities")),
             fmt_int(splits[n].get("frames"))] for n in names]
    highlight = frozenset()
    if "tracklets" in stats or "frames" in stats:
        rows.append(["all (indexed)", fmt_int(stats.get("tracklets")), "", fmt_int(stats.get("frames"))])
        highlight = frozenset({len(rows) - 1})
    return Table("dataset-table", ["Split", "Tracklets", "Identities", "Frames"], rows,
                 highlight) if rows else None


def dataset_section(stats: dict | None, missing: str | None) -> dict:
    section = {"key": "dataset", "title": "Dataset statistics", "available": bool(stats),
               "table": None, "facts": [], "missing": missing or "no stats.json"}
    if not stats:
        return section
    section["table"] = _split_table(stats)
    items = [(label, fmt_int(stats[key])) for key, label in _STAT_ITEMS if key in stats]
    length = stats.get("tracklet_length")
    if isinstance(length, dict):
        items.append(("Tracklet length (frames)", f"min {fmt_int(length.get('min'))}, mean "
                                                  f"{fmt(length.get('mean'))}, max {fmt_int(length.get('max'))}"))
    section["facts"] = items
    return section
