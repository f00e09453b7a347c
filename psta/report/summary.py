"""The run summary: headline numbers, the model and recipe, provenance, the evaluation set-up."""
from __future__ import annotations

import math
from typing import Any

import pandas as pd

from .content import ci_text, fmt, fmt_int, fpr_text, pct, protocol_text

__all__ = ["summary_section"]


def _card(label: str, ours: float | None, paper: float | None, ci: Any = None) -> dict[str, Any]:
    """A headline percentage; ``paper`` (percent) is None where no comparison is meaningful."""
    delta = None
    if paper is not None and ours is not None and math.isfinite(ours):
        delta = f"{'+' if ours - paper >= 0 else '−'}{abs(ours - paper):.1f}"
    return {"label": label, "value": fmt(ours), "unit": "%", "paper": None if paper is None else fmt(paper),
            "delta": delta, "ci": ci_text(ci) if ci is not None else None, "detail": None}


def _verification_cards(v: dict | None, metric: str) -> list[dict[str, Any]]:
    if not v:
        return []
    target = fpr_text(v["target_fpr"])
    return [
        {"label": f"TPR at FPR {target}", "value": fmt(pct(v["threshold_tpr"])), "unit": "%",
         "detail": f"of matching pairs accepted, ≤ {target} of the others", "paper": None,
         "delta": None, "ci": None},
        {"label": "Same-person threshold", "value": f"{v['threshold']:.4f}", "unit": "",
         "detail": f"{metric} distance ≤ threshold: same person", "paper": None, "delta": None,
         "ci": None},
    ]


def _rerank_text(value: Any) -> str:
    if value is None or value is False:
        return "off"
    if value is True:
        return "on (k-reciprocal)"
    if isinstance(value, dict):
        return "on (" + ", ".join(f"{k}={v}" for k, v in value.items()) + ")"
    return str(value)


def _model_facts(model: dict) -> list[tuple[str, str]]:
    """The architecture and the recipe, from results.json's ``model`` record."""
    facts = []
    if "arch" in model:
        arch = {"psta": "PSTA", "tap": "temporal average pooling (TAP)"}.get(model["arch"], model["arch"])
        facts.append(("Architecture", f"{arch}, {model.get('backbone', '?')} backbone"))
    if {"height", "width", "seq_len"} <= set(model):
        facts.append(("Input", f"{model['height']} × {model['width']} px, T = {model['seq_len']} "
                               "frames per clip"))
    for key, label in (("pretrained", "Pretrained weights"), ("epochs", "Epochs"),
                       ("precision", "Precision")):
        if model.get(key) is not None:
            facts.append((label, str(model[key])))
    return facts


def _provenance_facts(prov: dict) -> list[tuple[str, str]]:
    registered = ""
    if prov.get("registered_model"):
        registered = f"{prov['registered_model']} version {prov.get('registered_version', '?')}"
    facts = [("Evaluated", prov.get("date", "")), ("Git commit", str(prov.get("git_commit", ""))[:12]),
             ("Params hash", str(prov.get("params_hash", ""))),
             ("MLflow run (evaluate)", str(prov.get("mlflow_run_id", ""))),
             ("Registered model", registered), ("Report generated", prov.get("report_date", ""))]
    return [(k, v) for k, v in facts if v]


def _training_text(history: pd.DataFrame | None) -> str | None:
    if history is None:
        return None
    epochs = len(history)
    text = f"{epochs} epoch{'s' if epochs != 1 else ''}"
    if "loss_total" in history.columns:
        loss = pd.to_numeric(history["loss_total"], errors="coerce")
        text += f"; total loss {fmt(loss.iloc[0], 3)} → {fmt(loss.iloc[-1], 3)}"
    return text


def _identities_text(model: dict, stats: dict | None) -> str | None:
    if "train_identities" in model:
        held = int(model.get("val_identities") or 0)
        return fmt_int(model["train_identities"]) + (f" ({held} more held out for validation)" if held else "")
    if stats:
        train = (stats.get("splits") or {}).get("train", {})
        return fmt_int(stats.get("num_classes", train.get("identities")))
    return None


def _split_text(stats: dict | None) -> str | None:
    """Which of a dataset's published train/test splits this run used (iLIDS-VID, PRID-2011)."""
    split = (stats or {}).get("split")
    if not split:
        return None
    return (f"{split['index']} of 0..{split['count'] - 1} ({split['source']}): "
            f"{split['train_identities']} train / {split['test_identities']} test identities")


def summary_section(results: dict, dataset: str, ds_label: str, headline: str,
                    paper_row: dict | None, history: pd.DataFrame | None, stats: dict | None,
                    provenance: dict) -> dict:
    head = results["protocols"][headline]
    paper_row = paper_row or {}
    model = results.get("model") or {}
    metric = str(results.get("metric", "cosine"))
    setup = [
        ("Dataset", f"{ds_label} ({dataset})"),
        ("Split", _split_text(stats)),
        ("Protocols", ", ".join(results["protocols"])),
        ("Headline protocol", f"{headline} — {protocol_text(headline)}".rstrip(" —")),
        ("Test clip sampling", str(results.get("sampling", "–"))),
        ("Distance", metric),
        ("Re-ranking", _rerank_text(results.get("rerank"))),
        ("Queries / gallery", f"{fmt_int(head.get('num_queries'))} / {fmt_int(head.get('num_gallery'))} "
                              f"({fmt_int(head.get('num_valid_queries'))} queries with a valid match)"),
        ("Training", _training_text(history)),
        ("Training identities", _identities_text(model, stats)),
    ]
    cards = [_card("Rank-1", pct(head.get("rank1")), paper_row.get("rank1"), head.get("rank1_ci")),
             _card("mAP", pct(head.get("mAP")), paper_row.get("mAP"), head.get("mAP_ci"))]
    return {"key": "summary", "title": "Run summary", "protocol": headline,
            "cards": cards + _verification_cards(head.get("verification"), metric),
            "model": _model_facts(model) if model else [],
            "provenance": _provenance_facts(provenance),
            "facts": [(k, v) for k, v in setup if v is not None]}
