"""Tests of psta.engine: config, precision, data order, checkpoints, exact resume (also after a
SIGKILL mid-epoch), DDP with two CPU processes, held-out validation, loss going down."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from psta.engine import (
    CHECKPOINT_NAME,
    MODEL_NAME,
    HeldoutEvaluator,
    ResumableBatchSampler,
    TrainConfig,
    load_training_state,
    split_validation,
    train,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _train_script import SyntheticClips, TinyReID  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve().parent / "_train_script.py"
PY = sys.executable


def small_config(**kw) -> TrainConfig:
    base = dict(epochs=2, batch_size=4, num_instances=2, num_workers=0, warmup_epochs=1, milestones=(1,),
                lr=1e-3, precision="fp32", device="cpu", progress=False, deterministic=True, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ: {different[:8]}"


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
    torch.use_deterministic_algorithms(False)


# ----------------------------------------------------------------------------- config
def test_config_defaults_are_the_paper_recipe():
    c = TrainConfig()
    assert (c.lr, c.weight_decay, c.warmup_epochs, c.warmup_factor, c.gamma) == (3.5e-4, 5e-4, 10, 0.01, 0.3)
    assert c.milestones == (70, 140, 210, 310, 410) and c.epochs == 500
    assert (c.batch_size, c.num_instances, c.label_smoothing, c.triplet_margin) == (32, 4, 0.1, 0.3)
    assert c.triplet_distance == "cosine" and c.eval_every == 10 and c.resume == "auto"
    assert TrainConfig.from_dict({"milestones": [5, 9], "epochs": 12}).milestones == (5, 9)
    json.dumps(c.to_dict())  # plain values only


@pytest.mark.parametrize("kw,match", [
    ({"precision": "fp8"}, "precision"),
    ({"batch_size": 30}, "multiple of num_instances"),
    ({"milestones": (9, 3)}, "increasing"),
    ({"val_fraction": 0.2, "val_ids": (1,)}, "either"),
    ({"channels_last": "maybe"}, "channels_last"),
])
def test_config_rejects_bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)
    with pytest.raises(ValueError, match=r"unknown key\(s\) TrainConfig.learning_rate"):
        TrainConfig.from_dict({"learning_rate": 1.0})


# ----------------------------------------------------------------------------- precision
def test_fp16_on_cpu_is_a_clear_error(tmp_path):
    data = SyntheticClips()
    with pytest.raises(ValueError, match="fp16.*CUDA"):
        train(small_config(precision="fp16"), TinyReID(8), data, tmp_path)
    assert not (tmp_path / CHECKPOINT_NAME).exists()


def test_bf16_autocast_on_cpu_trains_with_finite_losses(tmp_path):
    from psta.model import build_model

    torch.manual_seed(0)
    model = build_model("psta", num_classes=8, seq_len=4, height=32, width=16, backbone="resnet18")
    data = SyntheticClips(num_ids=8, per_id=2, seq_len=4, height=32, width=16)
    seen = []
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train(small_config(precision="bf16", epochs=1, max_steps_per_epoch=1, deterministic=False), model, data,
          tmp_path, on_epoch_end=lambda e, m: seen.append(m))
    (m,) = seen
    assert m["steps"] == 1
    assert all(np.isfinite(m[k]) and m[k] > 0 for k in ("loss_ce", "loss_triplet", "loss_total"))
    after = model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    assert all(v.dtype == before[k].dtype for k, v in after.items())  # weights stay fp32


# ----------------------------------------------------------------------------- data order
def test_resumable_batch_sampler_skips_consumed_batches():
    from psta.data.sampling import IdentitySampler

    labels = np.repeat(np.arange(10), 3)
    full = ResumableBatchSampler(IdentitySampler(labels, 2, 4, seed=5), 4)
    full.set_epoch(3)
    all_batches = list(full)
    assert len(all_batches) == len(full) == 5
    part = ResumableBatchSampler(IdentitySampler(labels, 2, 4, seed=5), 4)
    part.set_epoch(3, start=2, stop=4)
    assert len(part) == 2 and list(part) == all_batches[2:4]
    again = ResumableBatchSampler(IdentitySampler(labels, 2, 4, seed=5), 4)
    again.set_epoch(4)
    assert list(again) != all_batches  # the order is a function of (seed, epoch)
    mapped = ResumableBatchSampler(IdentitySampler(labels[:6], 2, 4, seed=5), 4, index_map=np.arange(100, 106))
    mapped.set_epoch(0)
    assert all(100 <= k[0] < 106 for b in mapped for k in b)


# ----------------------------------------------------------------------------- checkpoints
def test_checkpoints_load_weights_only_and_hold_the_training_state(tmp_path):
    data = SyntheticClips()
    torch.manual_seed(0)
    model = TinyReID(8)
    metrics = []
    result = train(small_config(epochs=2, checkpoint_every_steps=3), model, data, tmp_path,
                   on_epoch_end=lambda e, m: metrics.append((e, m)), model_meta={"arch": "tiny"})
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)  # no pickled objects at all
    assert state["format"] == "psta-reid/train-state-v1"
    assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (2, 0, 8)
    assert set(state) >= {"model", "optimizer", "scheduler", "scaler", "rng", "config", "history", "model_meta"}
    assert state["config"]["checkpoint_every_steps"] == 3 and len(state["rng"]) == 1
    assert set(state["rng"][0]) == {"torch", "cuda", "numpy", "python"}
    assert state["scheduler"]["last_epoch"] == 2
    final = torch.load(tmp_path / MODEL_NAME, weights_only=True)
    assert final["arch"] == "tiny" and final["feature_dim"] == 16
    assert_same_weights(final["state_dict"], {k: v for k, v in model.state_dict().items()})
    assert [e for e, _ in metrics] == [0, 1] and result.model_path == tmp_path / MODEL_NAME
    for e, m in metrics:
        assert set(m) >= {"epoch", "lr", "loss_ce", "loss_triplet", "loss_total", "clips_per_s"}
        assert m["steps"] == 4 and m["clips_per_s"] > 0
    assert metrics[0][1]["lr"] == pytest.approx(1e-5) and metrics[1][1]["lr"] == pytest.approx(3e-4)
    assert json.loads((tmp_path / "history.json").read_text())[1]["epoch"] == 1


def test_model_pt_rebuilds_the_real_model(tmp_path):
    from psta.model import build_model, load_checkpoint

    torch.manual_seed(0)
    model = build_model("tap", num_classes=8, seq_len=4, height=32, width=16, backbone="resnet18")
    train(small_config(epochs=1, max_steps_per_epoch=1), model, SyntheticClips(num_ids=8, height=32, width=16),
          tmp_path)
    saved = torch.load(tmp_path / MODEL_NAME, weights_only=True)
    assert {k: saved[k] for k in ("arch", "num_classes", "seq_len", "height", "width", "backbone", "feature_dim")} \
        == {"arch": "tap", "num_classes": 8, "seq_len": 4, "height": 32, "width": 16, "backbone": "resnet18",
            "feature_dim": 512}
    rebuilt, _ = load_checkpoint(tmp_path / MODEL_NAME)
    assert_same_weights(rebuilt.state_dict(), model.state_dict())


def test_resume_after_an_epoch_matches_an_uninterrupted_run(tmp_path):
    def run(out, epochs, resume="auto"):
        torch.manual_seed(0)
        model = TinyReID(8)
        hist = []
        train(small_config(epochs=epochs, resume=resume), model, SyntheticClips(), out,
              on_epoch_end=lambda e, m: hist.append(e))
        return hist

    assert run(tmp_path / "a", 3) == [0, 1, 2]
    assert run(tmp_path / "b", 1) == [0]
    assert run(tmp_path / "b", 3) == [1, 2]  # continues from the end-of-epoch checkpoint
    assert_same_weights(weights(tmp_path / "a" / MODEL_NAME), weights(tmp_path / "b" / MODEL_NAME))
    assert run(tmp_path / "b", 3) == []  # finished: nothing left to do
    assert run(tmp_path / "b", 1, resume="never") == [0]
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run(tmp_path / "c", 1, resume=str(tmp_path / "missing.pt"))
    with pytest.raises(RuntimeError, match="does not fit this model"):
        train(small_config(epochs=4), TinyReID(9), SyntheticClips(), tmp_path / "b")


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_gives_identical_weights(tmp_path):
    """A real PSTA model (resnet18, 32 x 16, T=4); checkpoint every 2 steps; the second run is
    killed while training step 3 of epoch 2 (after the step-2 checkpoint), then resumed."""
    common = [PY, str(SCRIPT), "--model", "psta", "--epochs", "3", "--ckpt-every", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(common + ["--out", str(full)], check=True, env=env, cwd=ROOT, timeout=300)

    # 4 steps x 4 clips per epoch: the 29th item is the first of epoch 2's third batch
    proc = subprocess.Popen(common + ["--out", str(killed), "--block-after", str(4 * 4 + 3 * 4 + 1)],
                            env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 240
        while not (killed / "blocked").exists():
            assert proc.poll() is None, "the training run ended before it could be killed"
            assert time.monotonic() < deadline, "the training run never reached the kill point"
            time.sleep(0.1)
        state = load_training_state(killed / CHECKPOINT_NAME)
        assert (state["epoch"], state["step_in_epoch"], state["global_step"]) == (1, 2, 6)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (killed / MODEL_NAME).exists()
    assert not list(killed.glob(".*.tmp")), "killed outside a write: no temporary files"

    subprocess.run(common + ["--out", str(killed)], check=True, env=env, cwd=ROOT, timeout=300)
    assert_same_weights(weights(full / MODEL_NAME), weights(killed / MODEL_NAME))
    a, b = json.loads((full / "metrics.json").read_text()), json.loads((killed / "metrics.json").read_text())
    assert [m["epoch"] for m in b] == [1, 2]  # the resumed run reports the epochs it finished
    assert b[-1]["loss_total"] == a[-1]["loss_total"]
    assert b[0]["loss_total"] == pytest.approx(a[1]["loss_total"], rel=1e-12)  # restored partial sums


# ----------------------------------------------------------------------------- DDP
@pytest.mark.slow
def test_ddp_two_cpu_processes_end_with_identical_weights(tmp_path):
    torchrun = Path(PY).parent / "torchrun"
    out = tmp_path / "ddp"
    cmd = [str(torchrun), "--standalone", "--nnodes", "1", "--nproc_per_node", "2", str(SCRIPT),
           "--out", str(out), "--model", "psta", "--epochs", "1", "--batch-size", "8", "--save-weights"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, cwd=ROOT, timeout=300, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    w0 = torch.load(out / "weights_rank0.pt", weights_only=True)
    w1 = torch.load(out / "weights_rank1.pt", weights_only=True)
    assert_same_weights(w0, w1)
    assert_same_weights(w0, weights(out / MODEL_NAME))
    from psta.model import build_model

    torch.manual_seed(0)  # the script seeds 0 before building the model
    start = build_model("psta", num_classes=8, seq_len=4, height=32, width=16, backbone="resnet18").state_dict()
    assert any(not torch.equal(start[k], w0[k]) for k in start), "the weights did not move"
    # each rank trained its own shard: 2 steps x 4 clips, disjoint identities within a step
    k0 = json.loads((out / "keys_rank0.json").read_text())
    k1 = json.loads((out / "keys_rank1.json").read_text())
    assert len(k0) == len(k1) == 8
    labels = SyntheticClips().labels
    for step in range(2):
        ids0 = {labels[k[0]] for k in k0[step * 4:(step + 1) * 4]}
        ids1 = {labels[k[0]] for k in k1[step * 4:(step + 1) * 4]}
        assert len(ids0) == len(ids1) == 2 and not ids0 & ids1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics[0]["steps"] == 2 and np.isfinite(metrics[0]["loss_total"])


# ----------------------------------------------------------------------------- validation
def test_split_validation_holds_out_whole_identities():
    labels = np.repeat(np.arange(10), 3)
    tr, va = split_validation(labels, val_fraction=0.2, seed=1)
    assert len(set(labels[va])) == 2 and not set(labels[tr]) & set(labels[va])
    assert sorted(np.concatenate([tr, va]).tolist()) == list(range(30))
    tr2, va2 = split_validation(labels, val_fraction=0.2, seed=1)
    assert np.array_equal(va, va2)
    _, va3 = split_validation(labels, val_ids=(4, 7))
    assert set(labels[va3]) == {4, 7}
    tr4, va4 = split_validation(labels)
    assert len(va4) == 0 and len(tr4) == 30
    with pytest.raises(ValueError, match="not training labels"):
        split_validation(labels, val_ids=(11,))


def test_training_with_held_out_validation(tmp_path):
    data = SyntheticClips(num_ids=10, per_id=3, noise=0.1)
    val_data = SyntheticClips(num_ids=10, per_id=3, noise=0.0)
    cfg = small_config(epochs=2, eval_every=1, val_ids=(2, 5))
    metrics = []
    torch.manual_seed(0)
    result = train(cfg, TinyReID(10), data, tmp_path, evaluate=HeldoutEvaluator(val_data, batch_size=4),
                   on_epoch_end=lambda e, m: metrics.append(m))
    assert {data.labels[i] for i in result.val_indices} == {2, 5}
    trained = {data.labels[k[0]] for k in data.keys}
    assert trained and not trained & {2, 5}, "the sampler drew held-out identities"
    for m in metrics:
        assert 0.0 <= m["val_rank1"] <= 1.0 and 0.0 < m["val_mAP"] <= 1.0
        assert m["val_num_valid_queries"] > 0


def test_loader_factory_and_evaluate_hook(tmp_path):
    data = SyntheticClips()
    calls = []

    def factory(epoch, start_batch, dist_info):
        g = torch.Generator().manual_seed(epoch)
        order = torch.randperm(len(data), generator=g).tolist()
        batches = [order[i:i + 4] for i in range(0, 20, 4)][start_batch:]
        calls.append((epoch, start_batch, dist_info.world_size))
        return [torch.utils.data.default_collate([data[i] for i in b]) for b in batches]

    metrics = []
    torch.manual_seed(0)
    train(small_config(epochs=2, eval_every=2), TinyReID(8), factory, tmp_path,
          evaluate=lambda model, idx: {"calls": float(not model.training)},
          on_epoch_end=lambda e, m: metrics.append(m))
    assert calls == [(0, 0, 1), (1, 0, 1)]
    assert [m["steps"] for m in metrics] == [5, 5]
    assert "val_calls" not in metrics[0] and metrics[1]["val_calls"] == 1.0


# ----------------------------------------------------------------------------- learning
def test_loss_decreases_with_the_real_model(tmp_path):
    from psta.model import build_model

    torch.manual_seed(0)
    model = build_model("psta", num_classes=8, seq_len=4, height=64, width=32, backbone="resnet18")
    data = SyntheticClips(num_ids=8, per_id=2, seq_len=4, height=64, width=32, noise=0.3)
    metrics = []
    cfg = small_config(epochs=12, batch_size=8, warmup_epochs=0, milestones=(), lr=3.5e-4, deterministic=False)
    train(cfg, model, data, tmp_path, on_epoch_end=lambda e, m: metrics.append(m))
    assert sum(m["steps"] for m in metrics) == 24
    first = np.mean([m["loss_total"] for m in metrics[:2]])
    last = np.mean([m["loss_total"] for m in metrics[-2:]])
    assert last < 0.7 * first, [round(m["loss_total"], 3) for m in metrics]
    assert metrics[-1]["loss_ce"] < metrics[0]["loss_ce"]


# ----------------------------------------------------------------------------- the real data path
@pytest.mark.slow
def test_trains_on_the_real_data_pipeline(tmp_path):
    """synthetic MARS -> ingest -> index -> frame cache -> TrainClips + IdentitySampler -> train,
    with held-out validation through TestClips; DataLoader workers do not change the result."""
    from psta.data.cache import FrameCache, build_frame_cache
    from psta.data.datasets import TestClips, TrainClips
    from psta.data.synthetic import SyntheticConfig, generate_mars
    from psta.index import index_from_manifest, ingest
    from psta.model import build_model

    root = tmp_path / "MARS"
    generate_mars(root, SyntheticConfig(num_train_ids=10, num_test_ids=2, min_len=8, max_len=16, height=64,
                                        width=32, num_distractor_tracklets=1, num_junk_tracklets=1))
    ingest("mars", root, tmp_path / "manifest.parquet")
    index = index_from_manifest(tmp_path / "manifest.parquet", tmp_path / "index")
    build_frame_cache(index.frames, root, tmp_path / "cache", 64, 32, format="raw", progress=False)
    cache = FrameCache(tmp_path / "cache")
    rows = index.tracklets[index.tracklets["split"] == "train"]
    num_classes = int(rows["label"].nunique())

    def run(out, workers):
        torch.manual_seed(0)
        model = build_model("psta", num_classes=num_classes, seq_len=4, height=64, width=32, backbone="resnet18")
        metrics = []
        cfg = small_config(epochs=2, batch_size=8, num_workers=workers, max_steps_per_epoch=1, val_fraction=0.3,
                           eval_every=1, deterministic=False)
        result = train(cfg, model, TrainClips(rows, cache, seq_len=4, seed=0), out,
                       evaluate=HeldoutEvaluator(TestClips(rows, cache, seq_len=4), batch_size=8),
                       on_epoch_end=lambda e, m: metrics.append(m))
        return result, metrics

    result, metrics = run(tmp_path / "w0", 0)
    assert len(result.val_indices) and not set(rows["label"].to_numpy()[result.val_indices]) \
        & set(rows["label"].to_numpy()[result.train_indices])
    assert [m["steps"] for m in metrics] == [1, 1]
    assert all(0.0 <= m["val_rank1"] <= 1.0 and m["val_num_valid_queries"] > 0 for m in metrics)
    _, metrics2 = run(tmp_path / "w2", 2)
    assert_same_weights(weights(tmp_path / "w0" / MODEL_NAME), weights(tmp_path / "w2" / MODEL_NAME))
    assert [m["loss_total"] for m in metrics] == [m["loss_total"] for m in metrics2]
