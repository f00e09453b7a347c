"""GPU paths: CUDA training under each precision (fp16 with a GradScaler), CUDA inference
against the CPU, and DDP over NCCL. Skipped where no CUDA device is visible (CI); run on a
GPU machine with ``pytest tests/test_cuda.py``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from psta.engine import CHECKPOINT_NAME, MODEL_NAME, TrainConfig, train
from psta.model import autocast_context, build_model
from tests.helpers.train_script import SyntheticClips

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
SCRIPT = Path(__file__).resolve().parent / "helpers" / "train_script.py"


def small_psta(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("psta", num_classes=8, seq_len=4, height=64, width=32, backbone="resnet18")


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_on_cuda(tmp_path, precision):
    model = small_psta()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = SyntheticClips(num_ids=8, per_id=2, seq_len=4, height=64, width=32)
    seen = []
    cfg = TrainConfig(epochs=1, batch_size=8, num_instances=2, num_workers=0, warmup_epochs=1,
                      milestones=(1,), device="cuda", precision=precision, progress=False)
    train(cfg, model, data, tmp_path, on_epoch_end=lambda e, m: seen.append(m))
    (m,) = seen
    assert m["steps"] == 2 and all(np.isfinite(m[k]) for k in ("loss_ce", "loss_triplet", "loss_total"))
    state = torch.load(tmp_path / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    assert (state["scaler"] is not None) == (precision == "fp16")
    assert state["rng"][0]["cuda"] is not None
    after = torch.load(tmp_path / MODEL_NAME, map_location="cpu", weights_only=True)["state_dict"]
    assert all(after[k].dtype == v.dtype for k, v in before.items())  # master weights stay fp32
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    assert next(model.parameters()).is_cuda
    assert model.base.conv1.weight.is_contiguous(memory_format=torch.channels_last)  # auto on CUDA


def test_cuda_embeddings_match_the_cpu():
    model = small_psta(1).eval()
    x = torch.randn(3, 4, 3, 64, 32)
    with torch.no_grad():
        ref = model(x)
        gpu = model.cuda()(x.cuda()).cpu()
        with autocast_context("cuda", torch.bfloat16):
            low = model(x.cuda()).float().cpu()
    assert F.cosine_similarity(gpu.double(), ref.double()).min() > 0.9999  # TF32 convolutions
    assert F.cosine_similarity(low.double(), ref.double()).min() > 0.99


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="DDP over NCCL needs two GPUs")
def test_ddp_over_nccl_two_gpus(tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", str(SCRIPT), "--out", str(tmp_path),
           "--model", "psta", "--epochs", "1", "--batch-size", "8", "--device", "cuda", "--save-weights"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}  # this checkout's psta
    proc = subprocess.run(cmd, timeout=600, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    w0 = torch.load(tmp_path / "weights_rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "weights_rank1.pt", weights_only=True)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert json.loads((tmp_path / "metrics.json").read_text())[0]["steps"] == 2
