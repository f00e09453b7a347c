"""PSTA model speed on the CPU: batched pair processing, channels_last and bf16 autocast against a
plain fp32 per-pair loop implementation, all in one process on the same weights and inputs.

    .venv/bin/python -m benchmarks.bench_model [--clips 4] [--rounds 3] [--inference-rounds 5]

Training step = forward + backward (sum of cross-entropy over the pyramid levels + a feature
term) on ``clips`` x 8 frames x 256 x 128 with resnet50, 625 classes. Configurations:

  (a) loop     fp32, contiguous (NCHW), STAM frame pairs processed one by one in Python
               (the reference implementation's structure: ``tests.helpers.psta_oracle.OraclePSTA``, the
               oracle the model tests compare against)
  (b) batched  fp32, channels_last, all pairs of a level in one batched pass (psta.model)
  (c) batched  bf16 autocast, channels_last
  (d) inference only: (c) on ``prepare_for_inference(model, bf16)`` (BatchNorms folded into the
      convolutions, bf16 parameters)

Configurations are interleaved round by round and medians reported. The machine is shared:
before each measurement the benchmark waits (15 s at most, 90 s in all) for other processes to
use < 25 % of the CPUs, and it records the share they used during every measurement.
Writes benchmarks/results/model.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from psta.atomic import write_text_atomic
from psta.model import (
    autocast_context,
    build_model,
    cpu_supports_bf16,
    prepare_for_inference,
    to_channels_last,
)
from tests.helpers.psta_oracle import OraclePSTA

RESULTS = Path(__file__).resolve().parent / "results" / "model.json"


# --- measurement ---------------------------------------------------------------------------------
def _loss(logits, feats, labels):
    ce = sum(F.cross_entropy(lg.float(), labels, label_smoothing=0.1) for lg in logits)
    return ce + sum(f.float().square().mean() for f in feats)


def capture_pre_bnneck(model) -> list:
    """Record the inputs of the BNNecks (the pre-BN level features f_k) at every forward."""
    store: list = []

    def hook(module, args):
        if len(store) == len(model.bottleneck):
            store.clear()
        store.append(args[0].detach().float())

    for bn in model.bottleneck:
        bn.register_forward_pre_hook(hook)
    return store


def make_train_step(forward, model, x, labels, dtype, pre_bn: list):
    def step():
        model.zero_grad(set_to_none=True)
        with autocast_context("cpu", dtype):
            logits, feats = forward(x)
            loss = _loss(logits, feats, labels)
        loss.backward()
        return [lg.detach().float() for lg in logits], list(pre_bn), [f.detach().float() for f in feats]
    return step


def make_infer_step(forward, x, dtype):
    def step():
        with torch.inference_mode(), autocast_context("cpu", dtype):
            return forward(x).float()
    return step


def _busy_cpu_seconds() -> float | None:
    """CPU seconds spent busy by the whole machine so far (Linux /proc/stat), else None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class QuietGate:
    """Before a measurement, wait (up to ``wait`` s, ``budget`` s in all) until other processes
    use less than ``threshold`` of the machine's CPUs, sampled over 1 s while this one idles."""

    def __init__(self, threshold: float = 0.25, wait: float = 15.0, budget: float = 90.0):
        self.threshold, self.wait, self.budget = threshold, wait, budget
        self.waited = 0.0

    def __call__(self) -> None:
        if _busy_cpu_seconds() is None:
            return
        ncpu = os.cpu_count() or 1
        start = time.perf_counter()
        while self.waited + (time.perf_counter() - start) < self.budget and time.perf_counter() - start < self.wait:
            b0, w0 = _busy_cpu_seconds(), time.perf_counter()
            time.sleep(1.0)
            if (_busy_cpu_seconds() - b0) / (ncpu * (time.perf_counter() - w0)) < self.threshold:
                break
        self.waited += time.perf_counter() - start


def interleaved(steps: dict, warmup: int, rounds: int, label: str,
                gate: QuietGate | None = None) -> tuple[dict, dict, dict, dict]:
    """Run every step ``warmup`` times, then ``rounds`` rounds of one call each (interleaved).

    Returns per step the wall-clock seconds, the process CPU seconds (both threads), the share
    of the machine's CPUs that other processes used meanwhile (the machine is shared), and the
    last output."""
    outputs = {}
    wall, cpu, others = ({k: [] for k in steps} for _ in range(3))
    ncpu = os.cpu_count() or 1
    for _ in range(warmup):
        for name, fn in steps.items():
            outputs[name] = fn()
    for r in range(rounds):
        for name, fn in steps.items():
            if gate is not None:
                gate()
            b0, w0, c0 = _busy_cpu_seconds(), time.perf_counter(), time.process_time()
            outputs[name] = fn()
            w, c, b1 = time.perf_counter() - w0, time.process_time() - c0, _busy_cpu_seconds()
            wall[name].append(w)
            cpu[name].append(c)
            others[name].append(None if b0 is None or b1 is None else max(0.0, (b1 - b0 - c) / (ncpu * w)))
        cells = [f"{k} {wall[k][-1]:.2f}s" + ("" if others[k][-1] is None else f" (others {others[k][-1]:.0%})")
                 for k in steps]
        print(f"  {label} round {r + 1}/{rounds}: " + ", ".join(cells), flush=True)
    return wall, cpu, others, outputs


@torch.no_grad()
def calibrate_bn(model, x) -> None:
    """Give the feature-map BatchNorms data-like running statistics: those of one train-mode
    forward on ``x`` (with the initial 0 / 1 statistics, PSTA's squared TRA maps reach ~1e30 by
    level 3 in eval mode). The BNNecks (BatchNorm1d) keep unit statistics: over a few
    random-weight clips the features barely vary (variance ~1e-6), so calibrated BNNecks would
    multiply every rounding difference by ~300 and the comparisons would measure only that."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: exactly this batch's statistics
    model.train()
    model(x)
    for bn, momentum in zip(bns, saved):
        bn.momentum = momentum
    for bn in model.bottleneck:
        bn.reset_running_stats()


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.double(), b.double()).min().item()


def _least_contended(wall: dict, shares: dict) -> dict:
    """Per configuration (time, others' CPU share) of its measurement with the lowest share."""
    out = {}
    for k, times in wall.items():
        pairs = [(s if s is not None else float("inf"), t) for t, s in zip(times, shares[k])]
        share, t = min(pairs)
        out[k] = {"seconds": t, "others_share": None if share == float("inf") else share}
    return out


def _speedups(least: dict) -> dict:
    base = least["a_loop_fp32"]["seconds"]
    return {k: base / v["seconds"] for k, v in least.items()}


def _median_share(shares: dict) -> float | None:
    values = [v for vs in shares.values() for v in vs if v is not None]
    return statistics.median(values) if values else None


def rel_max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=8)
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--inference-rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--quiet-threshold", type=float, default=0.25,
                    help="before each measurement wait until other processes use less than this "
                         "share of the CPUs (the machine is shared) ...")
    ap.add_argument("--quiet-wait", type=float, default=15.0, help="... for at most this many seconds")
    ap.add_argument("--quiet-budget", type=float, default=90.0, help="... and this many in all")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    started = time.perf_counter()
    gate = QuietGate(args.quiet_threshold, args.quiet_wait, args.quiet_budget)

    torch.manual_seed(0)
    ref = OraclePSTA(625, seq_len=args.seq_len, height=args.height, width=args.width, backbone=args.backbone)
    fast = build_model("psta", 625, seq_len=args.seq_len, height=args.height, width=args.width,
                       backbone=args.backbone)
    fast.load_state_dict(ref.state_dict(), strict=True)
    to_channels_last(fast)
    # clips with clearly different statistics, so that the BNNecks' batch statistics in train
    # mode are well conditioned and the output comparisons meaningful
    scale = torch.linspace(0.5, 1.5, args.clips).view(-1, 1, 1, 1, 1)
    shift = torch.linspace(-0.5, 0.5, args.clips).view(-1, 1, 1, 1, 1)
    x = torch.randn(args.clips, args.seq_len, 3, args.height, args.width) * scale + shift
    labels = torch.randint(0, 625, (args.clips,))
    bf16 = torch.bfloat16
    print(f"CPU: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, capability {torch.backends.cpu.get_cpu_capability()}, "
          f"native bf16: {cpu_supports_bf16()}", flush=True)
    print(f"input {args.clips} clips x {args.seq_len} x 3 x {args.height} x {args.width}, {args.backbone}", flush=True)

    # training step: forward + backward
    ref.train(), fast.train()
    pre_ref, pre_fast = capture_pre_bnneck(ref), capture_pre_bnneck(fast)
    train_steps = {
        "a_loop_fp32": make_train_step(ref, ref, x, labels, None, pre_ref),
        "b_batched_fp32_cl": make_train_step(fast, fast, x, labels, None, pre_fast),
        "c_batched_bf16_cl": make_train_step(fast, fast, x, labels, bf16, pre_fast),
    }
    t_train, c_train, o_train, out_train = interleaved(train_steps, args.warmup, args.rounds, "train", gate)
    (la, ga, fa), (lb, gb, fb), (lc, gc, fc) = (out_train[k] for k in train_steps)

    # inference: same weights and (calibrated) BN statistics in both models
    calibrate_bn(ref, x)
    fast.load_state_dict(ref.state_dict())
    ref.eval(), fast.eval()
    folded = prepare_for_inference(fast, dtype=bf16)
    infer_steps = {
        "a_loop_fp32": make_infer_step(ref, x, None),
        "b_batched_fp32_cl": make_infer_step(fast, x, None),
        "c_batched_bf16_cl": make_infer_step(fast, x, bf16),
        "d_folded_bf16_cl": make_infer_step(folded, x, bf16),
    }
    t_inf, c_inf, o_inf, out_inf = interleaved(infer_steps, args.warmup, args.inference_rounds, "inference", gate)
    ea, eb, ec, ed = (out_inf[k] for k in infer_steps)

    med = lambda v: statistics.median(v)  # noqa: E731
    base_train, base_inf = med(t_train["a_loop_fp32"]), med(t_inf["a_loop_fp32"])
    result = {
        "benchmark": "model",
        "machine": {"processor": platform.processor() or platform.machine(),
                    "threads": torch.get_num_threads(),
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "native_bf16": cpu_supports_bf16(), "torch": torch.__version__},
        "input": {"clips": args.clips, "seq_len": args.seq_len, "height": args.height,
                  "width": args.width, "backbone": args.backbone, "num_classes": 625},
        "method": f"median of {args.rounds} (train) / {args.inference_rounds} (inference) interleaved "
                  f"rounds after {args.warmup} warm-up call(s) per configuration; each measurement "
                  f"waits (bounded) for other processes to use < {args.quiet_threshold:.0%} of the CPUs",
        "train_step_seconds": {k: med(v) for k, v in t_train.items()},
        "inference_seconds": {k: med(v) for k, v in t_inf.items()},
        "speedup_train_vs_loop_fp32": {k: base_train / med(v) for k, v in t_train.items()},
        "speedup_inference_vs_loop_fp32": {k: base_inf / med(v) for k, v in t_inf.items()},
        # the machine is shared: best-of (least disturbed) times and CPU times for reference
        "speedup_train_vs_loop_fp32_best": {k: min(t_train["a_loop_fp32"]) / min(v) for k, v in t_train.items()},
        "speedup_inference_vs_loop_fp32_best": {k: min(t_inf["a_loop_fp32"]) / min(v) for k, v in t_inf.items()},
        "speedup_train_vs_loop_fp32_cpu_time": {k: med(c_train["a_loop_fp32"]) / med(v) for k, v in c_train.items()},
        "speedup_inference_vs_loop_fp32_cpu_time": {k: med(c_inf["a_loop_fp32"]) / med(v) for k, v in c_inf.items()},
        "quiet_gate": {"threshold": args.quiet_threshold, "max_wait_s": args.quiet_wait,
                       "budget_s": args.quiet_budget, "waited_s": gate.waited},
        "other_processes_cpu_share_median": {
            "train": _median_share(o_train), "inference": _median_share(o_inf)},
        "other_processes_cpu_share_train": o_train,
        "other_processes_cpu_share_inference": o_inf,
        # the time of each configuration's least disturbed measurement (lowest share of the CPUs
        # used by other processes), and the speed-ups from those: the closest to a quiet machine
        "train_step_seconds_least_contended": _least_contended(t_train, o_train),
        "inference_seconds_least_contended": _least_contended(t_inf, o_inf),
        "speedup_train_vs_loop_fp32_least_contended": _speedups(_least_contended(t_train, o_train)),
        "speedup_inference_vs_loop_fp32_least_contended": _speedups(_least_contended(t_inf, o_inf)),
        "train_step_seconds_all": t_train,
        "train_step_cpu_seconds_all": c_train,
        "inference_seconds_all": t_inf,
        "inference_cpu_seconds_all": c_inf,
        "equality": {
            # pre-BNNeck level features f_k and logits; the post-BN features are also given, but
            # in train mode the BNNeck normalises over only `clips` samples whose features share
            # a large common component, which amplifies fp32 rounding differences
            "train_b_vs_a_max_rel_diff_features": max(rel_max_diff(p, q) for p, q in zip(gb, ga)),
            "train_b_vs_a_max_rel_diff_logits": max(rel_max_diff(p, q) for p, q in zip(lb, la)),
            "train_b_vs_a_max_rel_diff_post_bn_features": max(rel_max_diff(p, q) for p, q in zip(fb, fa)),
            "train_c_vs_a_min_cosine_features": min(cosine(p, q) for p, q in zip(gc, ga)),
            "train_c_vs_a_min_cosine_post_bn_features": min(cosine(p, q) for p, q in zip(fc, fa)),
            "inference_b_vs_a_max_rel_diff": rel_max_diff(eb, ea),
            "inference_c_vs_a_min_cosine": cosine(ec, ea),
            "inference_d_vs_a_min_cosine": cosine(ed, ea),
        },
        "targets": {},
        "total_seconds": None,
    }
    sp_t, sp_i = result["speedup_train_vs_loop_fp32"], result["speedup_inference_vs_loop_fp32"]
    eq = result["equality"]
    result["targets"] = {
        "train_c_ge_2x_a": sp_t["c_batched_bf16_cl"] >= 2.0,
        "train_b_ge_1.2x_a_equal_outputs": sp_t["b_batched_fp32_cl"] >= 1.2
        and eq["train_b_vs_a_max_rel_diff_features"] < 1e-3 and eq["inference_b_vs_a_max_rel_diff"] < 1e-3,
        "inference_c_ge_2.5x_a_cosine_0.99": sp_i["c_batched_bf16_cl"] >= 2.5
        and eq["inference_c_vs_a_min_cosine"] >= 0.99,
    }
    result["total_seconds"] = time.perf_counter() - started
    write_text_atomic(args.out, json.dumps(result, indent=1) + "\n")
    print_table(result)
    print(f"wrote {args.out}")
    return result


def _pct(share: float | None) -> str:
    return "n/a" if share is None else f"{share:.0%}"


def print_table(r: dict) -> None:
    print("\nmedian wall-clock seconds; 'x loop' = speed-up over (a) (best-of-rounds speed-up in brackets)")
    print(f"{'configuration':<20}{'train s':>9}{'x loop':>8}{'(best)':>8}{'infer s':>9}{'x loop':>8}{'(best)':>8}")
    for k in r["inference_seconds"]:
        if k in r["train_step_seconds"]:
            train = (f"{r['train_step_seconds'][k]:>9.2f}{r['speedup_train_vs_loop_fp32'][k]:>8.2f}"
                     f"{r['speedup_train_vs_loop_fp32_best'][k]:>8.2f}")
        else:
            train = f"{'-':>9}{'-':>8}{'-':>8}"
        print(f"{k:<20}{train}{r['inference_seconds'][k]:>9.2f}{r['speedup_inference_vs_loop_fp32'][k]:>8.2f}"
              f"{r['speedup_inference_vs_loop_fp32_best'][k]:>8.2f}")
    lt, li = r["train_step_seconds_least_contended"], r["inference_seconds_least_contended"]
    print("least disturbed measurement of each configuration (others' CPU share): "
          + ", ".join(f"{k} train {lt[k]['seconds']:.2f}s ({_pct(lt[k]['others_share'])})"
                      f" x{r['speedup_train_vs_loop_fp32_least_contended'][k]:.2f}" for k in lt) + "; "
          + ", ".join(f"{k} inference {li[k]['seconds']:.2f}s ({_pct(li[k]['others_share'])})"
                      f" x{r['speedup_inference_vs_loop_fp32_least_contended'][k]:.2f}" for k in li))
    eq = r["equality"]
    print(f"(b) vs (a): train max rel diff: features {eq['train_b_vs_a_max_rel_diff_features']:.1e}, "
          f"logits {eq['train_b_vs_a_max_rel_diff_logits']:.1e}, post-BN features "
          f"{eq['train_b_vs_a_max_rel_diff_post_bn_features']:.1e}; "
          f"inference embeddings {eq['inference_b_vs_a_max_rel_diff']:.1e}")
    print(f"(c) vs (a): train feature cosine >= {eq['train_c_vs_a_min_cosine_features']:.4f} "
          f"(post-BN {eq['train_c_vs_a_min_cosine_post_bn_features']:.4f}), "
          f"inference embedding cosine >= {eq['inference_c_vs_a_min_cosine']:.4f}; "
          f"(d) vs (a): {eq['inference_d_vs_a_min_cosine']:.4f}")
    share = r["other_processes_cpu_share_median"]
    if share["train"] is not None:
        print(f"other processes used {share['train']:.0%} (train) / {share['inference']:.0%} (inference) "
              f"of the machine's CPUs during the measurements (median)")
    print("targets: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in r["targets"].items()))
    print(f"total {r['total_seconds']:.0f} s")


if __name__ == "__main__":
    main()
