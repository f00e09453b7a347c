"""`python -m pipeline splits-summary`: iLIDS-VID / PRID-2011 results over their published splits.

The literature reports these datasets as the mean (and standard deviation) over 10 random
train/test splits. Each split is one DVC experiment of the same configuration::

    dvc exp run --queue -S 'data.split=range(0,10)'
    dvc exp run --run-all            # or `dvc queue start` to run them in the background
    python -m pipeline splits-summary

The summary reads every experiment of the current commit (`dvc exp show --json`) whose
params.yaml equals the workspace's except for ``data.split``, takes each split's newest
successful run, and writes ``reports/splits.json`` and ``reports/splits.md`` (mean and sample
standard deviation of rank-1/5/10/20 and mAP per protocol, in percent), prints the table and
logs the numbers to one MLflow run ``splits-summary``.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from pipeline import paths
from pipeline.params import load_params
from psta.atomic import atomic_path
from psta.errors import UserError

__all__ = ["SplitsSummaryError", "SPLITS_JSON", "SPLITS_MD", "collect", "splits_summary", "summarise"]

SPLITS_JSON = paths.REPORTS / "splits.json"
SPLITS_MD = paths.REPORTS / "splits.md"
METRICS_FILE = "reports/metrics.json"
METRICS = ("rank1", "rank5", "rank10", "rank20", "mAP")
HOW_TO_RUN = ("dvc exp run --queue -S 'data.split=range(0,10)' && dvc exp run --run-all "
              "(README: 'The 10-split protocol')")


class SplitsSummaryError(UserError, ValueError):
    """There are no experiments to summarise, or they do not fit together."""


def _exp_show(cwd: Path) -> list[dict]:
    dvc = Path(sys.executable).with_name("dvc")   # the environment's own dvc, as `repro` uses
    proc = subprocess.run([str(dvc) if dvc.exists() else "dvc", "exp", "show", "--json"], cwd=cwd,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SplitsSummaryError(f"`dvc exp show --json` failed: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout or "[]")


def _params(entry: dict) -> dict:
    return ((entry.get("data") or {}).get("params") or {}).get("params.yaml", {}).get("data") or {}


def _without_split(params: dict) -> dict:
    return {**params, "data": {k: v for k, v in (params.get("data") or {}).items() if k != "split"}}


def collect(shown: list[dict]) -> list[dict]:
    """The successful experiments of the baseline that differ from the workspace only in
    ``data.split``, newest first: ``{"name", "rev", "timestamp", "split", "metrics"}``."""
    workspace = next((e for e in shown if e.get("rev") == "workspace"), None)
    if workspace is None:
        return []
    reference = _without_split(_params(workspace))
    found = []
    for baseline in shown:
        for group in baseline.get("experiments") or []:
            if (group.get("executor") or {}).get("state", "success") != "success":
                continue
            exp = group["revs"][0]
            params = _params(exp)
            metrics = ((exp.get("data") or {}).get("metrics") or {}).get(METRICS_FILE, {}).get("data")
            if metrics and _without_split(params) == reference:
                found.append({"name": exp.get("name") or group.get("name"), "rev": exp["rev"],
                              "timestamp": exp["data"].get("timestamp") or "",
                              "split": int(params["data"].get("split", 0)), "metrics": metrics})
    return sorted(found, key=lambda e: e["timestamp"], reverse=True)


def summarise(experiments: list[dict], protocols: tuple[str, ...], num_splits: int) -> dict:
    """One experiment per split (the newest), and per protocol the mean / std over the splits."""
    per_split: dict[int, dict] = {}
    for exp in experiments:
        per_split.setdefault(exp["split"], exp)
    chosen = [per_split[k] for k in sorted(per_split)]
    summary = {}
    for protocol in protocols:
        rows = [e["metrics"][protocol] for e in chosen if protocol in e["metrics"]]
        if not rows:
            continue
        summary[protocol] = {}
        for m in METRICS:
            # NaN: not computed (a gallery shorter than the rank); left out, never averaged in
            values = [float(r[m]) for r in rows if r.get(m) is not None and math.isfinite(float(r[m]))]
            summary[protocol][m] = {
                "mean": round(statistics.fmean(values), 2) if values else None,
                "std": round(statistics.stdev(values), 2) if len(values) > 1 else None,
                "n": len(values)}
    return {
        "splits": sorted(per_split),
        "missing_splits": [k for k in range(num_splits) if k not in per_split],
        "experiments": [{k: e[k] for k in ("split", "name", "rev", "timestamp")}
                        | {"metrics": {p: e["metrics"][p] for p in protocols if p in e["metrics"]}}
                        for e in chosen],
        "summary": summary,
        "units": "percent; std is the sample standard deviation over the splits (n - 1)",
    }


def table(result: dict) -> str:
    """The Markdown table: one row per protocol, mean ± std per metric."""
    head = ["protocol", "splits"] + [m.replace("rank", "rank-") for m in METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for protocol, values in result["summary"].items():
        cells = [protocol, str(values["rank1"]["n"])]
        for m in METRICS:
            v = values[m]
            spread = f" ± {v['std']:.1f}" if v["std"] is not None else ""
            cells.append("–" if v["mean"] is None else f"{v['mean']:.1f}{spread}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _log(result: dict, params) -> None:
    from pipeline import tracking
    from pipeline.stage import log_files, log_numbers

    flat = {p: {m: {k: v[k] for k in ("mean", "std") if v[k] is not None} for m, v in vals.items()}
            for p, vals in result["summary"].items()}
    with tracking.stage_run("splits-summary", {"summary": {"splits": ",".join(map(str, result["splits"]))}},
                            experiment=params.tracking.experiment, params_hash=params.digest("data")):
        log_numbers(flat)
        log_files(SPLITS_JSON, SPLITS_MD)


def splits_summary(params_path: str = "params.yaml", cwd: str | os.PathLike = ".") -> dict[str, Any]:
    from pipeline.stage import dataset_of

    params = load_params(params_path)
    spec = dataset_of(params)
    if spec.num_splits == 1:
        raise SplitsSummaryError(f"{spec.title} has one fixed train/test split: there is nothing to average "
                                 f"(splits-summary is for iLIDS-VID and PRID-2011)")
    experiments = collect(_exp_show(Path(cwd)))
    if not experiments:
        raise SplitsSummaryError(f"no finished DVC experiment of this configuration (params.yaml up to "
                                 f"data.split) has {METRICS_FILE}; run the splits first: {HOW_TO_RUN}")
    result = {"dataset": spec.name, **summarise(experiments, spec.protocol_names, spec.num_splits)}
    text = table(result)
    with atomic_path(SPLITS_JSON) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    with atomic_path(SPLITS_MD) as tmp:
        missing = f" (missing: {result['missing_splits']})" if result["missing_splits"] else ""
        tmp.write_text(f"# {spec.title}: {len(result['splits'])} of {spec.num_splits} splits{missing}\n\n{text}")
    print(text, end="")
    _log(result, params)
    return result
