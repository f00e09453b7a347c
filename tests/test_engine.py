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
from tests.helpers.train_script import SyntheticClips, TinyReID

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve().parent / "helpers" / "train_script.py"
PY = sys.executable
# the training script imports this checkout's psta (not whichever one is installed)
SCRIPT_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


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
    for _e, m in metrics:
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
    env = SCRIPT_ENV
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
@pytest.mark.parametrize("bn_groups", [1, 2])
def test_ddp_two_cpu_processes_end_with_identical_weights(tmp_path, bn_groups):
    """bn_groups 2 under DDP: each rank forwards its 4 clips as two BatchNorm groups of 2."""
    torchrun = Path(PY).parent / "torchrun"
    out = tmp_path / "ddp"
    cmd = [str(torchrun), "--standalone", "--nnodes", "1", "--nproc_per_node", "2", str(SCRIPT),
           "--out", str(out), "--model", "psta", "--epochs", "1", "--batch-size", "8", "--save-weights",
           "--bn-groups", str(bn_groups)]
    env = SCRIPT_ENV
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


class _ShuffledSampler(torch.utils.data.Sampler):
    """A caller's own batch order: a fresh permutation of the first 20 items every epoch."""

    def __init__(self, n, epochs_seen):
        self.n, self.epochs_seen, self.epoch = n, epochs_seen, 0

    def set_epoch(self, epoch):
        self.epoch = epoch
        self.epochs_seen.append(epoch)

    def __len__(self):
        return 20

    def __iter__(self):
        g = torch.Generator().manual_seed(self.epoch)
        return iter(torch.randperm(self.n, generator=g)[:20].tolist())


def test_sampler_factory_and_evaluate_hook(tmp_path):
    data = SyntheticClips()
    epochs_seen, calls = [], []

    def factory(labels, config, dist_info):
        calls.append((len(labels), dist_info.world_size))
        return _ShuffledSampler(len(labels), epochs_seen)

    metrics = []
    torch.manual_seed(0)
    train(small_config(epochs=2, eval_every=2), TinyReID(8), data, tmp_path, sampler_factory=factory,
          evaluate=lambda model, idx: {"calls": float(not model.training)},
          on_epoch_end=lambda e, m: metrics.append(m))
    assert calls == [(len(data), 1)] and epochs_seen == [0, 1]
    assert [m["steps"] for m in metrics] == [5, 5]
    assert "val_calls" not in metrics[0] and metrics[1]["val_calls"] == 1.0


def test_train_data_must_be_a_dataset(tmp_path):
    with pytest.raises(TypeError, match="map-style torch Dataset"):
        train(small_config(), TinyReID(8), lambda epoch, start, info: [], tmp_path)


# ----------------------------------------------------------------------------- BatchNorm groups
class _FixedClips(torch.utils.data.Dataset):
    """Deterministic clips (no random noise or flip): 4 identities x 2 tracklets."""

    def __init__(self, seq_len=4, height=32, width=16):
        g = torch.Generator().manual_seed(11)
        self.clips = torch.randn(8, seq_len, 3, height, width, generator=g)
        self.labels = [0, 0, 1, 1, 2, 2, 3, 3]

    def __len__(self):
        return 8

    def __getitem__(self, key):
        i = int(key[0]) if isinstance(key, (tuple, list)) else int(key)
        return self.clips[i], self.labels[i], i % 2


class _InOrder(torch.utils.data.Sampler):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __iter__(self):
        return iter(range(self.n))


def _bn_buffers(model):
    return {k: v.clone() for k, v in model.state_dict().items()
            if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def _small_psta():
    from psta.model import build_model

    torch.manual_seed(0)
    return build_model("psta", num_classes=4, seq_len=4, height=32, width=16, backbone="resnet18")


def test_bn_groups_equals_running_the_halves_separately():
    import copy

    from psta.engine import forward_in_groups

    model = _small_psta().train()
    x = _FixedClips().clips
    halves = copy.deepcopy(model)
    first = halves(x[:4])  # as the first DataParallel replica ...
    first_stats = _bn_buffers(halves)
    second = halves(x[4:])  # ... and the second one
    whole = copy.deepcopy(model)(x)
    logits, feats = forward_in_groups(model, x, 2)
    assert len(logits) == len(feats) == 2  # T = 4: two pyramid levels
    for level in range(2):
        torch.testing.assert_close(logits[level], torch.cat([first[0][level], second[0][level]]))
        torch.testing.assert_close(feats[level], torch.cat([first[1][level], second[1][level]]))
        assert not torch.allclose(feats[level], whole[1][level], atol=1e-3)  # BN over 4, not 8 clips
    # running statistics: the first group's update only (the replica that shares the buffers)
    stats = _bn_buffers(model)
    assert stats.keys() == first_stats.keys()
    for k in stats:
        torch.testing.assert_close(stats[k], first_stats[k], rtol=0, atol=0)
    with pytest.raises(ValueError, match="does not split into 3"):
        forward_in_groups(model, x, 3)


def test_bn_groups_training_step_computes_the_loss_over_the_whole_batch(tmp_path):
    """One step of train(bn_groups=2) = forward the halves, one loss over all 8 clips, one Adam step."""
    import copy

    from psta.losses import PSTALoss
    from psta.solver import build_optimizer

    data = _FixedClips()
    model = _small_psta()
    ref = copy.deepcopy(model).train()
    first_only = copy.deepcopy(model).train()
    cfg = small_config(epochs=1, batch_size=8, bn_groups=2, warmup_epochs=0, milestones=(), lr=1e-3)
    train(cfg, model, data, tmp_path, sampler_factory=lambda labels, c, d: _InOrder(len(labels)))

    x, y = data.clips, torch.tensor(data.labels)
    a, b = ref(x[:4]), ref(x[4:])
    logits = [torch.cat([p, q]) for p, q in zip(a[0], b[0])]
    feats = [torch.cat([p, q]) for p, q in zip(a[1], b[1])]
    loss, _ = PSTALoss()(logits, feats, y)  # hard-triplet mining over all 8 clips (4 identities)
    opt = build_optimizer(ref, lr=1e-3, weight_decay=5e-4)
    opt.zero_grad()
    loss.backward()
    opt.step()
    first_only(x[:4])
    trained = weights(tmp_path / MODEL_NAME)
    expected = {**ref.state_dict(), **_bn_buffers(first_only)}
    assert trained.keys() == expected.keys()
    for k in trained:
        torch.testing.assert_close(trained[k], expected[k], rtol=1e-5, atol=1e-6, msg=k)


def test_bn_groups_must_divide_the_batch(tmp_path):
    with pytest.raises(ValueError, match="bn_groups"):
        TrainConfig(batch_size=8, num_instances=2, bn_groups=3)


# ----------------------------------------------------------------------------- model selection
def test_select_best_val_keeps_the_best_validation_epoch(tmp_path):
    scores = {0: 0.2, 1: 0.5, 2: 0.3, 3: 0.5}  # epoch 3 ties epoch 1 on rank-1, loses on mAP
    snapshots = {}

    def evaluate(model, idx):
        epoch = len(snapshots)
        return {"rank1": scores[epoch], "mAP": 0.4 if epoch == 1 else 0.1}

    def run(epochs, out):
        import copy

        torch.manual_seed(0)
        model = TinyReID(8)
        cfg = small_config(epochs=epochs, eval_every=1, val_ids=(7,), select="best_val")
        result = train(cfg, model, SyntheticClips(), out, evaluate=evaluate,
                       on_epoch_end=lambda e, m: snapshots.__setitem__(e, copy.deepcopy(model.state_dict())))
        return model, result

    model, result = run(2, tmp_path / "a")  # epochs 0, 1; then resumed for epochs 2, 3
    model, result = run(4, tmp_path / "a")
    assert sorted(snapshots) == [0, 1, 2, 3] and result.selected_epoch == 1
    saved = torch.load(tmp_path / "a" / MODEL_NAME, weights_only=True)
    assert saved["selection"] == {"rule": "best_val", "epoch": 1, "val_rank1": 0.5, "val_mAP": 0.4}
    assert_same_weights(saved["state_dict"], snapshots[1])
    assert_same_weights(model.state_dict(), snapshots[1])  # the caller's model holds the selected weights
    assert any(not torch.equal(snapshots[1][k], snapshots[3][k]) for k in snapshots[1])

    torch.manual_seed(0)
    last = train(small_config(epochs=2), TinyReID(8), SyntheticClips(), tmp_path / "b")
    assert last.selected_epoch == 1
    assert torch.load(tmp_path / "b" / MODEL_NAME, weights_only=True)["selection"] == {"rule": "last", "epoch": 1}


def test_select_best_val_needs_validation(tmp_path):
    with pytest.raises(ValueError, match="best_val needs held-out validation identities: set val_fraction or val_ids"):
        TrainConfig(select="best_val")
    with pytest.raises(ValueError, match="select='best_val' needs an evaluate= callback"):
        train(small_config(select="best_val", val_ids=(7,)), TinyReID(8), SyntheticClips(), tmp_path)
    with pytest.raises(ValueError, match="select"):
        TrainConfig(select="best_test")


# ----------------------------------------------------------------------------- logs
def test_one_summary_line_per_epoch_on_the_engine_logger(tmp_path, caplog, capsys):
    data = SyntheticClips(num_ids=10, per_id=3, noise=0.1)
    cfg = small_config(epochs=2, eval_every=1, val_ids=(2, 5), progress=True)
    torch.manual_seed(0)
    with caplog.at_level("INFO", logger="psta.engine"):
        train(cfg, TinyReID(10), data, tmp_path,
              evaluate=HeldoutEvaluator(SyntheticClips(10, 3, noise=0.0), batch_size=4))
    lines = [r.getMessage() for r in caplog.records if r.name == "psta.engine" and r.getMessage().startswith("epoch")]
    assert len(lines) == 2
    pattern = (r"epoch {}/2: loss \d+\.\d{{4}} \(ce \d+\.\d{{4}}, triplet \d+\.\d{{4}}\), lr \d\.\d\de-\d\d, "
               r"\d+\.\d clips/s, \d+\.\d s, val rank-1 \d+\.\d% mAP \d+\.\d%$")
    import re

    for epoch, line in enumerate(lines, 1):
        assert re.match(pattern.format(epoch), line), line
    assert "step/s" not in capsys.readouterr().err  # stderr is no terminal here: no tqdm bar


@pytest.mark.slow
@pytest.mark.parametrize("terminal", [True, False])
def test_progress_bars_only_on_a_terminal(tmp_path, terminal):
    import fcntl
    import pty
    import struct
    import termios

    cmd = [PY, str(SCRIPT), "--out", str(tmp_path / "o"), "--epochs", "2", "--progress", "--log"]
    env = SCRIPT_ENV
    if terminal:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))  # 100 columns
        proc = subprocess.Popen(cmd, stderr=slave, stdout=subprocess.DEVNULL, env=env, cwd=ROOT)
        os.close(slave)
        chunks = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(master)
        assert proc.wait(timeout=120) == 0
        err = b"".join(chunks).decode(errors="replace")
    else:
        with open(tmp_path / "err.log", "w") as log_file:
            subprocess.run(cmd, stderr=log_file, stdout=subprocess.DEVNULL, env=env, cwd=ROOT, check=True, timeout=120)
        err = (tmp_path / "err.log").read_text()
    summaries = [line for line in err.splitlines() if "psta.engine INFO epoch" in line]
    assert [line.split(":")[0] for line in summaries] == ["psta.engine INFO epoch 1/2", "psta.engine INFO epoch 2/2"]
    assert ("step/s" in err or "s/step" in err) == terminal, err[-2000:]
    if not terminal:
        assert max(len(line) for line in err.splitlines()) < 300  # no bar redrawn into one long line


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
