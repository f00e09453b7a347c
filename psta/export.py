"""ONNX export of a trained model, checked against PyTorch with ONNX Runtime.

The exported graph is the model's eval forward: float32 clips ``B x T x 3 x H x W`` (resized
and ImageNet-normalised, as evaluation feeds the model) -> ``B x D`` embeddings, with the batch
dimension dynamic and T, H, W fixed to the model's. The export is kept only when ONNX Runtime
reproduces PyTorch on the same inputs: the largest ``max|onnx - torch| / max|torch|`` over the
embeddings of a check batch must not exceed ``tolerance`` (1e-4).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from psta.atomic import atomic_path
from psta.errors import UserError

INPUT, OUTPUT = "clips", "embeddings"
TOLERANCE = 1e-4


class ExportError(UserError, ValueError):
    """The exported model does not reproduce the PyTorch model."""


def check_inputs(seq_len: int, height: int, width: int, batch: int = 3, seed: int = 0) -> torch.Tensor:
    """A seeded batch of normalised-looking clips (standard normal values)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, seq_len, 3, height, width, generator=g)


def export_onnx(model: torch.nn.Module, path: str | Path, *, seq_len: int, height: int, width: int,
                opset: int = 18) -> None:
    """Write the model's eval forward as ONNX at ``path``, dynamic in the batch."""
    example = check_inputs(seq_len, height, width, batch=2)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(model.eval(), (example,), input_names=[INPUT], output_names=[OUTPUT],
                                dynamic_shapes=({0: batch},), dynamo=True, opset_version=opset, verbose=False)
    program.save(str(path))


def export_checked(model: torch.nn.Module, path: str | Path, *, seq_len: int, height: int, width: int,
                   tolerance: float = TOLERANCE) -> dict[str, Any]:
    """:func:`export_onnx` then :func:`check_parity` on a batch of 3; ``path`` appears only when
    the check passes (atomic). Returns the parity report."""
    with atomic_path(path) as tmp:
        export_onnx(model, tmp, seq_len=seq_len, height=height, width=width)
        return check_parity(tmp, model, check_inputs(seq_len, height, width), tolerance)


def relative_difference(got: np.ndarray, want: np.ndarray) -> float:
    """Largest per-embedding ``max|got - want| / max|want|``."""
    scale = np.maximum(np.abs(want).max(axis=1), 1e-12)
    return float((np.abs(got - want).max(axis=1) / scale).max())


def onnx_session(path: str | Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check_parity(path: str | Path, model: torch.nn.Module, inputs: torch.Tensor,
                 tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Run ONNX Runtime and PyTorch (fp32) on ``inputs``; raise :class:`ExportError` when they
    differ by more than ``tolerance``. Returns the measured differences."""
    with torch.no_grad():
        want = model.eval()(inputs).float().numpy()
    got = onnx_session(path).run([OUTPUT], {INPUT: inputs.numpy()})[0]
    if got.shape != want.shape:
        raise ExportError(f"{path} returns embeddings of shape {got.shape}, PyTorch {want.shape}; re-export it")
    report = {"max_rel_diff": relative_difference(got, want), "max_abs_diff": float(np.abs(got - want).max()),
              "batch": int(inputs.shape[0]), "tolerance": tolerance}
    if not report["max_rel_diff"] <= tolerance:
        raise ExportError(f"{path}: ONNX Runtime differs from PyTorch by {report['max_rel_diff']:.3g} (relative), "
                          f"more than {tolerance:g}; the export is not kept. Check the opset / torch.onnx "
                          "version, or report the model")
    return report
