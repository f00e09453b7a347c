"""How much faster can bf16 make a ResNet-50 on this CPU? torchvision's ResNet-50 (the PSTA
backbone without its last-stride change), fp32 against bf16 autocast + channels_last, in one
process, measured twice: with glibc's default allocator settings and with glibc told to keep
freed memory (``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` / ``MALLOC_TOP_PAD_``).

Why both: by default every fp32 activation larger than the mmap threshold is a fresh ``mmap``
that the kernel zero-fills page by page, and fp32 activations are twice the size of bf16 ones,
so a short-lived fp32 benchmark pays page faults that a long-running process (or one that has
already trained, as in bench_model.py) does not. That artefact inflates the bf16 speed-up.

    .venv/bin/python -m benchmarks.bench_bf16_ceiling      # writes results/bf16_ceiling.json
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from psta.atomic import write_text_atomic

RESULTS = Path(__file__).resolve().parent / "results" / "bf16_ceiling.json"
KEEP_FREED_MEMORY = {"MALLOC_MMAP_THRESHOLD_": str(8 << 30), "MALLOC_TRIM_THRESHOLD_": str(8 << 30),
                     "MALLOC_TOP_PAD_": str(1 << 30)}


def measure(rounds: int = 3) -> dict:
    """One process: seconds per forward (inference) and per training step, fp32 / bf16."""
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet50()
    x = torch.randn(32, 3, 256, 128)  # 4 clips x 8 frames at the paper's input size
    cl = torch.channels_last

    def best(fn) -> float:
        fn()
        times = []
        for _ in range(rounds):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    def forward(memory_format, dtype):
        net = model.to(memory_format=memory_format).eval()
        inp = x.contiguous(memory_format=memory_format)

        def run():
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=dtype is not None):
                net(inp)
        return best(run)

    def train_step(memory_format, dtype):
        net = model.to(memory_format=memory_format).train()
        inp = x[:16].contiguous(memory_format=memory_format)
        opt = torch.optim.SGD(net.parameters(), lr=1e-3)

        def run():
            with torch.autocast("cpu", torch.bfloat16, enabled=dtype is not None):
                loss = net(inp).float().square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return best(run)

    out = {
        "inference_fp32_nchw": forward(torch.contiguous_format, None),
        "inference_fp32_channels_last": forward(cl, None),
        "inference_bf16_channels_last": forward(cl, torch.bfloat16),
        "train_fp32_nchw": train_step(torch.contiguous_format, None),
        "train_bf16_channels_last": train_step(cl, torch.bfloat16),
    }
    out["inference_speedup_bf16_vs_fp32_nchw"] = out["inference_fp32_nchw"] / out["inference_bf16_channels_last"]
    out["inference_speedup_bf16_vs_fp32_channels_last"] = (
        out["inference_fp32_channels_last"] / out["inference_bf16_channels_last"])
    out["train_speedup_bf16_vs_fp32_nchw"] = out["train_fp32_nchw"] / out["train_bf16_channels_last"]
    return out


def main() -> dict:
    if "--child" in sys.argv:
        print(json.dumps(measure()))
        return {}
    import torch

    result = {"benchmark": "bf16_ceiling", "torch": torch.__version__, "threads": torch.get_num_threads(),
              "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "input": "torchvision resnet50, 32 x 3 x 256 x 128 (inference), 16 (training step); best of 3"}
    for name, extra in (("glibc_default", {}), ("keep_freed_memory", KEEP_FREED_MEMORY)):
        env = {**os.environ, **extra}
        proc = subprocess.run([sys.executable, "-m", "benchmarks.bench_bf16_ceiling", "--child"], env=env,
                              cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, check=True)
        result[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        r = result[name]
        print(f"{name:>18}: inference fp32 NCHW {r['inference_fp32_nchw']:.3f} s, fp32 channels_last "
              f"{r['inference_fp32_channels_last']:.3f} s, bf16 {r['inference_bf16_channels_last']:.3f} s "
              f"-> bf16 {r['inference_speedup_bf16_vs_fp32_nchw']:.2f}x NCHW fp32 / "
              f"{r['inference_speedup_bf16_vs_fp32_channels_last']:.2f}x channels_last fp32; "
              f"training step {r['train_speedup_bf16_vs_fp32_nchw']:.2f}x", flush=True)
    write_text_atomic(RESULTS, json.dumps(result, indent=1) + "\n")
    print(f"wrote {RESULTS}")
    return result


if __name__ == "__main__":
    main()
