"""What the integrity checks cost: reads with and without them, in one process, on the same data.

Run: ``.venv/bin/python -m benchmarks.bench_integrity [--ids 24] [--clips 400] [--rounds 5]``

1. clip reads from the frame cache (T = 8 frames of a random tracklet, random-interval
   sampling, 256 x 128) with the per-frame CRC-32C check (``FrameCache(path)``, what every stage
   uses) against the same reads unchecked (``check_reads=False``), raw and jpeg caches;
2. loading ``model.pt`` (ResNet-50 PSTA, 35 M parameters) with its sha256 checked against
   ``torch.load`` alone;
3. the ingest frame check: strict libjpeg-turbo decode (simplejpeg, warnings are errors)
   against PIL's decode that lets damaged scans through, both at 1/8 scale.

Timings are medians over interleaved rounds (the machine is shared). Writes
``benchmarks/results/integrity.json``.
"""
from __future__ import annotations

import argparse
import io
import json
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.bench_loading import H, T, W, make_data, read_train_index
from psta.atomic import write_text_atomic
from psta.data.cache import FrameCache, build_frame_cache
from psta.data.sampling import random_interval_indices

RESULTS = Path(__file__).resolve().parent / "results" / "integrity.json"


def clip_reads(cache: FrameCache, tracklets, clips: int, seed: int) -> float:
    """Seconds for ``clips`` random train clips."""
    rng = np.random.default_rng(seed)
    rows = tracklets[["tracklet_id", "n_frames"]].to_numpy()
    t0 = time.perf_counter()
    for _ in range(clips):
        tid, n = rows[rng.integers(len(rows))]
        cache.read(int(tid), random_interval_indices(int(n), T, rng))
    return time.perf_counter() - t0


def bench_cache(work: Path, frames, tracklets, root: Path, args) -> dict:
    out = {}
    for fmt in ("raw", "jpeg"):
        path = work / f"cache-{fmt}"
        if not path.exists():
            build_frame_cache(frames, root, path, H, W, format=fmt, shard_bytes=256 << 20, progress=False)
        checked, plain = FrameCache(path), FrameCache(path, check_reads=False)
        times = {"checked": [], "unchecked": []}
        for r in range(args.rounds):  # interleaved, same clips for both
            times["checked"].append(clip_reads(checked, tracklets, args.clips, r))
            times["unchecked"].append(clip_reads(plain, tracklets, args.clips, r))
        med = {k: statistics.median(v) for k, v in times.items()}
        out[fmt] = {f"{k}_clips_per_s": round(args.clips / v, 1) for k, v in med.items()}
        out[fmt]["cost_ratio"] = round(med["checked"] / med["unchecked"], 3)
    return out


def bench_model(work: Path, rounds: int) -> dict:
    from psta.integrity import check_digest, write_digest
    from psta.model import build_model
    from psta.model.checkpoints import save_checkpoint

    path = work / "model.pt"
    save_checkpoint(path, build_model("psta", num_classes=625, backbone="resnet50"))
    write_digest(path)
    times = {"checked": [], "torch_load": []}
    for _ in range(rounds):
        t0 = time.perf_counter()
        check_digest(path, required=True)
        torch.load(path, map_location="cpu", weights_only=True)
        times["checked"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        torch.load(path, map_location="cpu", weights_only=True)
        times["torch_load"].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"bytes": path.stat().st_size, **{f"{k}_s": round(v, 3) for k, v in med.items()},
            "cost_ratio": round(med["checked"] / med["torch_load"], 3)}


def bench_frame_check(root: Path, frames, rounds: int) -> dict:
    from PIL import Image

    from psta.data.frame_check import check_jpeg_bytes

    datas = [(root / p).read_bytes() for p in frames.path[:2000]]

    def pil(data: bytes) -> None:
        with Image.open(io.BytesIO(data)) as im:
            im.draft(im.mode, (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()

    times = {"strict": [], "pil": []}
    for _ in range(rounds):
        t0 = time.perf_counter()
        assert all(check_jpeg_bytes(d) is None for d in datas)
        times["strict"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for d in datas:
            pil(d)
        times["pil"].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {f"{k}_frames_per_s": round(len(datas) / v) for k, v in med.items()} | {
        "cost_ratio": round(med["strict"] / med["pil"], 3)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ids", type=int, default=24, help="synthetic training identities")
    ap.add_argument("--clips", type=int, default=400, help="clips per reader per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench_integrity."))
    try:
        root = work / "MARS"
        make_data(root, args.ids)
        frames, tracklets = read_train_index(root)
        result = {
            "machine": {"cpu": platform.processor() or platform.machine(), "torch_threads": 1},
            "frames": len(frames), "clips": args.clips, "rounds": args.rounds,
            "cache_reads": bench_cache(work, frames, tracklets, root, args),
            "model_load": bench_model(work, args.rounds),
            "frame_check": bench_frame_check(root, frames, args.rounds),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
