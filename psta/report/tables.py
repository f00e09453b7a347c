"""The report's tables: our results (and the paper's), verification, per camera, the dataset."""
from __future__ import annotations

from typing import Any

from .content import Table, camera_label, ci_text, fmt, fmt_int, fpr_text, pct, protocol_text

__all__ = ["METRIC_COLUMNS", "results_section", "camera_section", "dataset_section",
           "untrained_numbers"]

METRIC_COLUMNS = (("rank1", "Rank-1"), ("rank5", "Rank-5"), ("rank10", "Rank-10"),
                  ("rank20", "Rank-20"), ("mAP", "mAP"), ("mINP", "mINP"))
CI_AFTER = {"rank1": "Rank-1 95% CI", "mAP": "mAP 95% CI"}


def untrained_numbers(results: dict, metrics: dict | None) -> dict[str, dict[str, Any]]:
    """Untrained-model numbers in percent (intervals as fractions), from results.json or, for
    older outputs, metrics.json."""
    out: dict[str, dict[str, Any]] = {}
    for name, rec in (results.get("untrained") or {}).items():
        if isinstance(rec, dict):
            out[name] = {k: pct(rec.get(k)) for k, _ in METRIC_COLUMNS if k in rec}
            out[name].update({k: rec[k] for k in ("rank1_ci", "mAP_ci", "cmc") if k in rec})
    if not out and isinstance(metrics, dict):
        for name, rec in (metrics.get("untrained") or {}).items():
            if isinstance(rec, dict):
                out[name] = {k: float(v) for k, v in rec.items() if k in dict(METRIC_COLUMNS)}
    return out


def _metric_cells(values: dict, percent: bool) -> list[str]:
    cells = []
    for key, _ in METRIC_COLUMNS:
        v = values.get(key)
        cells.append(fmt(pct(v) if percent else v))
        if key in CI_AFTER:
            cells.append(ci_text(values[f"{key}_ci"]) if f"{key}_ci" in values else "–")
    return cells


def _results_table(protocols: dict, order: list[str], headline: str, ds_label: str,
                   paper_row: dict | None, untrained: dict) -> Table:
    header = ["Model", "Dataset", "Protocol"]
    for key, label in METRIC_COLUMNS:
        header.append(label + " (%)")
        if key in CI_AFTER:
            header.append(CI_AFTER[key])
    rows, highlight = [], set()
    if paper_row:
        rows.append(["PSTA paper (ImageNet ResNet-50)", paper_row.get("dataset", ""),
                     str(paper_row.get("protocol", headline))] + _metric_cells(paper_row, False))
    for name in order:
        if name == headline:
            highlight.add(len(rows))
        rows.append(["Ours, trained", ds_label, name] + _metric_cells(protocols[name], True))
        if name in untrained:
            rows.append(["Ours, untrained (initialisation)", ds_label, name]
                        + _metric_cells(untrained[name], False))
    return Table("results-table", header, rows, frozenset(highlight), numeric_from=3,
                 css_class="results")


def _verification_table(protocols: dict, order: list[str], metric: str) -> Table | None:
    have = [n for n in order if protocols[n].get("verification")]
    if not have:
        return None
    fprs = list(protocols[have[0]]["verification"]["tpr_at_fpr"])
    header = (["Protocol"] + [f"TPR (%) at FPR {fpr_text(float(f))}" for f in fprs]
              + ["EER (%)", "AUC (%)", f"Threshold ({metric} distance)", "at FPR (%)",
                 "Pairs: matching / non-matching"])
    rows = []
    for name in have:
        v = protocols[name]["verification"]
        rows.append([name] + [fmt(pct(v["tpr_at_fpr"][f])) for f in fprs]
                    + [fmt(pct(v["eer"]), 2), fmt(pct(v["auc"]), 2), f"{v['threshold']:.4f}",
                       f"{100 * v['threshold_fpr']:.3g} (target {fpr_text(v['target_fpr'])})",
                       f"{fmt_int(v['num_positive_pairs'])} / {fmt_int(v['num_negative_pairs'])}"])
    return Table("verification-table", header, rows, numeric_from=1, css_class="verification")


def _protocol_notes(order: list[str], paper_row: dict | None, headline: str, synthetic: bool,
                    paper_name: str) -> str:
    notes = [f"{name}: {protocol_text(name)}." for name in order if protocol_text(name)]
    notes.append("95% CI: bootstrap interval over the test queries (seeded); it shows how much "
                 "the number would move with another draw of queries, not between trainings.")
    if synthetic:
        notes.append(f"This run is on the embedded synthetic dataset written in the {paper_name} "
                     f"layout; the paper's numbers (real datasets) are in their own table below, "
                     "shown for reference, not for comparison.")
    elif paper_row:
        notes.append(f"The paper's {paper_name} numbers use the {paper_row.get('protocol', headline)} "
                     "protocol; compare them with the highlighted row.")
    if synthetic or paper_row:
        notes.append("How the paper's number was picked: its authors evaluated on the test set every 10 "
                     "epochs and report the best evaluation (the released MARS model, rank-1 91.5, is "
                     "epoch 350 of 500), a model chosen on the test set. This pipeline never looks at "
                     "the test set to choose: its model is the last epoch (train.select: last) or the "
                     "best epoch on held-out training identities (best_val), so expect it at or below "
                     "a best-of-test figure.")
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
    """Our numbers (with the paper's row when the dataset is the real one), verification,
    and the paper's table on its own."""
    protocols = results["protocols"]
    order = sorted(protocols, key=lambda n: (n != headline, n))
    paper_rows = [[v.get("dataset", k), v.get("protocol", ""), fmt(v.get("rank1")), fmt(v.get("mAP"))]
                  for k, v in paper_all.items()]
    paper_name = (paper_row or {}).get("dataset", ds_label)
    return {
        "key": "results", "title": "Results",
        "table": _results_table(protocols, order, headline, ds_label,
                                None if synthetic else paper_row, untrained),
        "protocol_notes": _protocol_notes(order, paper_row, headline, synthetic, paper_name),
        "untrained_missing": not untrained,
        "gains": _training_gains(protocols, order, untrained) if untrained else None,
        "verification": _verification_table(protocols, order, str(results.get("metric", "cosine"))),
        "paper_title": "The paper's results (real datasets)" if synthetic else "The paper's headline table",
        "paper_table": Table("paper-table", ["Dataset", "Protocol", "Rank-1 (%)", "mAP (%)"],
                             paper_rows, numeric_from=2),
    }


def camera_section(results: dict) -> dict:
    section = {"key": "cameras", "title": "Per-camera results", "table": None}
    protocols = {n: r["per_camera"] for n, r in results["protocols"].items() if r.get("per_camera")}
    if not protocols:
        return section
    cams = sorted({int(c) for pc in protocols.values() for c in pc})
    header = ["Query camera", "Queries"]
    for name in protocols:
        header += [f"Rank-1 (%) {name}", f"mAP (%) {name}"]
    rows = []
    for c in cams:
        per_cam = [pc.get(str(c), pc.get(c)) or {} for pc in protocols.values()]
        num_queries = next((m.get("num_queries") for m in per_cam if m), None)
        row = [camera_label(c), fmt_int(num_queries)]
        for m in per_cam:
            row += [fmt(pct(m.get("rank1"))), fmt(pct(m.get("mAP")))]
        rows.append(row)
    section["table"] = Table("camera-table", header, rows, numeric_from=1, css_class="cams")
    return section


_STAT_ITEMS = (("num_cameras", "Cameras"), ("num_classes", "Identities in the train split (classes)"),
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
    facts = [(label, fmt_int(stats[key])) for key, label in _STAT_ITEMS if key in stats]
    length = stats.get("tracklet_length")
    if isinstance(length, dict):
        facts.append(("Tracklet length (frames)", f"min {fmt_int(length.get('min'))}, mean "
                                                  f"{fmt(length.get('mean'))}, max {fmt_int(length.get('max'))}"))
    section["facts"] = facts
    return section
