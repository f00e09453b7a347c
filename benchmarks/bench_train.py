"""Benchmark: the training engine and the batch-hard triplet loss against plain implementations.

Compared, in the same process on the same inputs (CPU, 1 thread unless --threads):

* engine vs plain loop: ``psta.engine.train`` (identity sampler, DataLoader, loss bookkeeping,
  end-of-epoch checkpoint + model.pt) against a hand-written loop (the same model, optimiser,
  loss and batches, nothing else). Ratio = engine clips/s / plain clips/s (1.0 = no overhead).
  Also with a mid-epoch checkpoint every 4 steps, to price ``checkpoint_every_steps``.
* triplet: ``psta.losses.triplet_batch_hard`` (vectorised) against a per-anchor Python loop on
  a 32 x 1024 batch (the paper's batch and feature size), forward + backward. Same value (checked).

Writes benchmarks/results/train.json.
Run: .venv/bin/python -m benchmarks.bench_train [--repeats 3] [--steps 12] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from psta.atomic import write_text_atomic
from psta.engine import TrainConfig, train
from psta.losses import PSTALoss, triplet_batch_hard
from psta.solver import build_optimizer
from tests.helpers.train_script import SyntheticClips  # in-memory clips, the tests' dataset

RESULTS = Path(__file__).resolve().parent / "results" / "train.json"
ARCH = dict(arch="tap", seq_len=4, height=64, width=32, backbone="resnet18")


def make_model(num_classes: int):
    from psta.model import build_model

    torch.manual_seed(0)
    return build_model(num_classes=num_classes, **ARCH)


def plain_loop(data: SyntheticClips, steps: int, batch: int) -> float:
    """clips/s of a bare loop over fixed batches (identity-grouped, as the sampler would give)."""
    model = make_model(len(set(data.labels))).train()
    opt = build_optimizer(model, lr=3.5e-4, weight_decay=5e-4)
    crit = PSTALoss()
    order = sorted(range(len(data)), key=lambda i: data.labels[i])
    batches = [order[(s * batch) % len(order):(s * batch) % len(order) + batch] for s in range(steps)]
    t0 = time.perf_counter()
    for b in batches:
        items = [data[i] for i in b]
        clips = torch.stack([it[0] for it in items])
        y = torch.tensor([it[1] for it in items])
        logits, feats = model(clips)
        loss, _ = crit(logits, feats, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - t0)


def engine(data: SyntheticClips, steps: int, batch: int, ckpt_every: int) -> float:
    model = make_model(len(set(data.labels)))
    cfg = TrainConfig(epochs=1, batch_size=batch, num_instances=2, num_workers=0, max_steps_per_epoch=steps,
                      warmup_epochs=0, precision="fp32", device="cpu", progress=False,
                      checkpoint_every_steps=ckpt_every, resume="never")
    seen = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        train(cfg, model, data, tmp, on_epoch_end=lambda e, m: seen.append(m["steps"]))  # + checkpoint, model.pt
        elapsed = time.perf_counter() - t0
    if seen != [steps]:
        raise RuntimeError(f"the engine ran {seen} steps, expected [{steps}]; give the dataset more identities")
    return steps * batch / elapsed


def triplet_loop(x: torch.Tensor, y: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    xn = torch.nn.functional.normalize(x, dim=1)
    losses = []
    for a in range(len(x)):
        pos = [1 - xn[a] @ xn[j] for j in range(len(x)) if y[j] == y[a]]
        neg = [1 - xn[a] @ xn[j] for j in range(len(x)) if y[j] != y[a]]
        losses.append(torch.relu(torch.stack(pos).max() - torch.stack(neg).min() + margin))
    return torch.stack(losses).mean()


def time_backward(fn, x, y, repeats: int) -> tuple[float, torch.Tensor]:
    times, value = [], None
    for _ in range(repeats):
        xi = x.clone().requires_grad_(True)
        t0 = time.perf_counter()
        value = fn(xi, y)
        value.backward()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), value.detach()


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    batch = 8
    # one epoch of the identity sampler = `steps` batches of 4 identities x 2 clips
    data = SyntheticClips(num_ids=4 * args.steps, per_id=3, seq_len=ARCH["seq_len"], height=ARCH["height"],
                          width=ARCH["width"])

    plain_r, engine_r, ckpt_r = [], [], []
    plain_loop(data, 2, batch)  # warm-up (allocator, first-call costs)
    engine(data, args.steps, batch, 0)
    for _ in range(args.repeats):  # interleaved, so load changes on a shared machine hit all three
        plain_r.append(plain_loop(data, args.steps, batch))
        engine_r.append(engine(data, args.steps, batch, 0))
        ckpt_r.append(engine(data, args.steps, batch, 4))
    plain, eng, ckpt = (statistics.median(r) for r in (plain_r, engine_r, ckpt_r))

    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 1024, generator=g)
    y = torch.arange(8).repeat_interleave(4)
    t_ours, v_ours = time_backward(triplet_batch_hard, x, y, max(args.repeats, 5) * 4)
    t_loop, v_loop = time_backward(triplet_loop, x, y, max(args.repeats, 3))
    torch.testing.assert_close(v_ours, v_loop, rtol=1e-5, atol=1e-6)

    rows = [
        ("plain loop", f"{plain:.1f} clips/s", "1.00"),
        ("engine (epoch-end checkpoint)", f"{eng:.1f} clips/s", f"{eng / plain:.2f}"),
        ("engine + checkpoint every 4 steps", f"{ckpt:.1f} clips/s", f"{ckpt / plain:.2f}"),
        ("triplet loop (32 x 1024, fwd+bwd)", f"{t_loop * 1e3:.2f} ms", "1.00"),
        ("triplet batch-hard, vectorised", f"{t_ours * 1e3:.3f} ms", f"{t_loop / t_ours:.1f}x faster"),
    ]
    w = max(len(r[0]) for r in rows)
    print(f"{'what':<{w}}  {'measured':>16}  ratio")
    for name, val, ratio in rows:
        print(f"{name:<{w}}  {val:>16}  {ratio}")
    result = {
        "setup": {**ARCH, "batch": batch, "steps": args.steps, "repeats": args.repeats, "threads": args.threads,
                  "device": "cpu", "torch": torch.__version__, "machine": platform.machine()},
        "clips_per_s": {"plain": plain, "engine": eng, "engine_ckpt_every_4": ckpt},
        "clips_per_s_per_repeat": {"plain": plain_r, "engine": engine_r, "engine_ckpt_every_4": ckpt_r},
        "load_average_1min": os.getloadavg()[0],
        "ratio_engine_vs_plain": eng / plain,
        "ratio_engine_ckpt_every_4_vs_plain": ckpt / plain,
        "triplet_ms": {"loop": t_loop * 1e3, "ours": t_ours * 1e3},
        "ratio_triplet_speedup": t_loop / t_ours,
    }
    write_text_atomic(RESULTS, json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
