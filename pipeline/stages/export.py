"""export: the trained model as ONNX (data/export/psta.onnx), checked against PyTorch.

The graph takes float32 clips B x T x 3 x H x W (resized and ImageNet-normalised, as the
evaluation feeds the model; B dynamic, T / H / W the model's) and returns B x D embeddings.
ONNX Runtime must reproduce PyTorch on a check batch (max relative difference <= 1e-4) or the
stage fails and writes nothing. The file and the measured difference are attached to the
registered model version built from the same checkpoint (artifact `onnx/psta.onnx` of its run,
version tags `onnx_uri`, `onnx_max_rel_diff`).
"""
from __future__ import annotations

import json
import logging

from pipeline import paths
from pipeline.model_info import model_sha256, registered_version
from pipeline.params import load_params
from pipeline.stage import log_files, log_numbers, stage_flow, stage_run, stage_task

MODEL = paths.MODELS / "model.pt"
ONNX = paths.EXPORT / "psta.onnx"
PARITY = paths.EXPORT / "parity.json"

log = logging.getLogger(__name__)


@stage_task
def export_model() -> dict:
    from psta.atomic import write_text_atomic
    from psta.export import export_checked
    from psta.model import load_checkpoint

    model, checkpoint = load_checkpoint(MODEL, require_digest=True)
    c = checkpoint["config"]
    report = export_checked(model, ONNX, seq_len=c["seq_len"], height=c["height"], width=c["width"])
    report.update(input=[-1, c["seq_len"], 3, c["height"], c["width"]], output=[-1, model.feature_dim],
                  model_sha256=model_sha256(MODEL))
    write_text_atomic(PARITY, json.dumps(report, indent=2) + "\n")
    return report


@stage_task
def attach_to_version(report: dict) -> str | None:
    """Log the ONNX file to the registered version's run and tag the version; its name/version."""
    import mlflow

    found = registered_version(report["model_sha256"])
    if found is None:
        log.warning("no registered model version holds %s (run the evaluate stage); the ONNX file is "
                    "logged to this run only", MODEL)
        log_files(ONNX, artifact_path="onnx")
        return None
    name, version = found.split("/")
    client = mlflow.MlflowClient()
    run_id = client.get_model_version(name, version).run_id
    client.log_artifact(run_id, str(ONNX), artifact_path="onnx")
    client.set_model_version_tag(name, version, "onnx_uri", f"runs:/{run_id}/onnx/{ONNX.name}")
    client.set_model_version_tag(name, version, "onnx_max_rel_diff", f"{report['max_rel_diff']:.3g}")
    return found


@stage_flow("export")
def export(params_path: str = "params.yaml") -> dict:
    params = load_params(params_path)
    with stage_run("export", params, ()):
        report = export_model()
        version = attach_to_version(report)
        log_numbers({k: report[k] for k in ("max_rel_diff", "max_abs_diff")})
        log_files(PARITY)
        return {**report, "registered_version": version}


def flow_entry(params_path: str) -> dict:
    return export(params_path=params_path)
