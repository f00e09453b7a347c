"""Benchmark: the served pixel model and the ONNX export against the plain PyTorch forward.

Two model sizes, random weights (speed does not depend on them): the CPU demo (ResNet-18
PSTA, T=4, 64 x 32 input, fed 128 x 64 frames that it resizes) and the paper's (ResNet-50
PSTA, T=8, 256 x 128 input and frames). Measured in one process on the same clips:

* plain: ``model(clips)`` on already resized and normalised float32 clips, at the precision
  the evaluation uses here (``auto``: bf16 autocast on a CPU with AVX512-BF16, else fp32);
* served, in process: ``mlflow.pyfunc.load_model(<the pixel model>).predict(uint8 frames)``
  (resize + normalisation + sampling + model + L2 normalisation);
* served over HTTP: ``mlflow models serve`` of the same model, POST of the uint8 frames as JSON
  (what a client pays: JSON encoding of every pixel included);
* ONNX Runtime (CPU provider) on the exported graph against PyTorch fp32, same clips.

Embeddings (clips) per second at batch 1 and 32; medians of a few rounds (``--rounds``).
Run niced: nice -n 10 .venv/bin/python -m benchmarks.bench_serving [--sizes demo paper]
[--rounds N] [--http-batches 1]. Updates benchmarks/results/serving.json: the sizes measured
replace their entries (with the load average at their start and end), the others are kept.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import urllib.request
from datetime import date
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import load_average, machine
from psta.atomic import write_text_atomic

RESULTS = Path(__file__).resolve().parent / "results" / "serving.json"
SIZES = {
    "demo": {"backbone": "resnet18", "seq_len": 4, "height": 64, "width": 32, "frame": (128, 64)},
    "paper": {"backbone": "resnet50", "seq_len": 8, "height": 256, "width": 128, "frame": (256, 128)},
}


def rate(fn, batch: int, rounds: int) -> float:
    """Clips per second: median over ``rounds`` timed calls after one warm-up."""
    fn()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return batch / statistics.median(times)


def normalised(frames: np.ndarray, height: int, width: int) -> torch.Tensor:
    from psta.data.transforms import build_test_transform
    from psta.search.frames import to_model_size

    transform = build_test_transform(height, width)
    clips = torch.from_numpy(frames).permute(0, 1, 4, 2, 3)
    return torch.stack([transform(to_model_size(c, height, width)) for c in clips])


def post_rate(url: str, frames: np.ndarray, rounds: int) -> float:
    body = json.dumps({"inputs": frames.tolist()}).encode()

    def call():
        request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=600) as reply:
            reply.read()

    return rate(call, len(frames), rounds)


def measure(name: str, spec: dict, batches: list[int], rounds: int, http_batches: list[int], tmp: Path) -> dict:
    import mlflow

    from pipeline.servers import model_server
    from pipeline.serving import pixel_model
    from psta.export import export_onnx, onnx_session
    from psta.model import autocast_context, build_model, save_checkpoint
    from psta.model.precision import resolve_precision

    torch.manual_seed(0)
    model = build_model("psta", num_classes=100, seq_len=spec["seq_len"], height=spec["height"],
                        width=spec["width"], backbone=spec["backbone"]).eval()
    checkpoint, saved = tmp / f"{name}.pt", tmp / f"{name}-pyfunc"
    save_checkpoint(checkpoint, model)
    serving = {"sampling": "begin", "precision": "auto", "batch_size": 32}
    with pixel_model(checkpoint, model.config, model.feature_dim, serving) as kwargs:
        mlflow.pyfunc.save_model(str(saved), **kwargs)
    served = mlflow.pyfunc.load_model(str(saved))
    onnx_path = tmp / f"{name}.onnx"
    export_onnx(model, onnx_path, seq_len=spec["seq_len"], height=spec["height"], width=spec["width"])
    session = onnx_session(onnx_path)
    device = torch.device("cpu")
    dtype = resolve_precision("auto", device)
    out = {"measured": date.today().isoformat(), "rounds": rounds, "load_average_at_start": load_average(),
           "config": {k: v for k, v in spec.items() if k != "frame"}, "frame": list(spec["frame"]),
           "evaluation_precision": str(dtype).replace("torch.", "") if dtype is not None else "float32",
           "batches": {}}
    rng = np.random.default_rng(0)
    for batch in batches:
        frames = rng.integers(0, 256, (batch, spec["seq_len"], *spec["frame"], 3), dtype=np.uint8)
        clips = normalised(frames, spec["height"], spec["width"])

        array = clips.numpy()

        def plain(clips=clips, dtype=dtype):
            with torch.no_grad(), autocast_context(device, dtype):
                model(clips)

        def fp32(clips=clips):
            with torch.no_grad():
                model(clips)

        r = {"plain_clips_per_s": rate(plain, batch, rounds),
             "served_in_process_clips_per_s": rate(lambda frames=frames: served.predict(frames), batch, rounds),
             "torch_fp32_clips_per_s": rate(fp32, batch, rounds),
             "onnxruntime_clips_per_s": rate(lambda x=array: session.run(None, {"clips": x}), batch, rounds)}
        r["served_vs_plain"] = r["served_in_process_clips_per_s"] / r["plain_clips_per_s"]
        r["onnxruntime_vs_torch_fp32"] = r["onnxruntime_clips_per_s"] / r["torch_fp32_clips_per_s"]
        out["batches"][str(batch)] = r
        print(f"{name} batch {batch}: " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()), flush=True)
    if http_batches:
        with model_server(str(saved), "sqlite:///" + str(tmp / "mlflow.db"), tmp / f"{name}-serve.log") as url:
            for batch in http_batches:
                frames = rng.integers(0, 256, (batch, spec["seq_len"], *spec["frame"], 3), dtype=np.uint8)
                out["batches"].setdefault(str(batch), {})["served_http_clips_per_s"] = post_rate(
                    url, frames, max(1, rounds // 2))
                print(f"{name} batch {batch}: HTTP {out['batches'][str(batch)]['served_http_clips_per_s']:.2f} clips/s",
                      flush=True)
    out["load_average_at_end"] = load_average()
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["demo", "paper"], choices=sorted(SIZES))
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--no-http", action="store_true", help="skip `mlflow models serve`")
    p.add_argument("--http-batches", type=int, nargs="+", help="batches sent over HTTP (default: --batches); "
                   "a paper-size batch of 32 is ~90 MB of JSON")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    http_batches = [] if args.no_http else (args.http_batches or args.batches)
    result = json.loads(args.out.read_text()) if args.out.is_file() else {}  # sizes not rerun are kept
    result.update(machine=machine(torch_threads=torch.get_num_threads()))
    result.setdefault("sizes", {})
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sizes:
            result["sizes"][name] = measure(name, SIZES[name], args.batches, args.rounds, http_batches, Path(tmp))
            write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
