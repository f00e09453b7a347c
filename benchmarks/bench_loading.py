"""Train clip loading from the frame cache vs the straightforward way, and the cache formats.

Run: ``.venv/bin/python -m benchmarks.bench_loading [--ids 40] [--clips 400] [--rounds 3]``

On the same synthetic MARS-like data (``psta.data.synthetic.generate_mars``, 256 x 128 JPEG
frames, train split), one process, one torch thread, T = 8:

1. cache formats: build time, size on disk, and raw clip-read speed (8 frames of a random
   tracklet, random-interval sampling) for raw (pread, the library's reader), raw
   (numpy.memmap), jpeg shards (batched ``decode_jpeg``) and per-tracklet H.264 read with
   decord's ``get_batch``;
2. train clip loading (sample + read/decode + augment): ``TrainClips`` on the raw and jpeg
   caches vs the plain way (PIL opens each original JPEG, per-frame torchvision transforms:
   Resize bicubic, ToTensor, Normalize; then one flip / one RandomErasing per clip);
   also the cache read + a ``torchvision.transforms.v2.Compose`` on a Video tensor;
3. peak memory of a DataLoader loop (batch 32 = 8 ids x 4, several epochs) in a fresh child
   process, for the raw (pread), raw (memmap) and jpeg readers.

Timings are medians over interleaved rounds (the machine is shared). Writes
``benchmarks/results/loading.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

warnings.filterwarnings("ignore", category=DeprecationWarning)

from benchmarks.common import status_kib  # noqa: E402
from psta.data.cache import FrameCache, build_frame_cache, load_frame  # noqa: E402
from psta.data.datasets import TrainClips  # noqa: E402
from psta.data.sampling import IdentitySampler, random_interval_indices  # noqa: E402
from psta.data.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "loading.json"
H, W, T = 256, 128, 8


# ----------------------------------------------------------------------------- data
def make_data(root: Path, ids: int, seed: int = 0) -> dict:
    from psta.data.synthetic import SyntheticConfig, generate_mars
    cfg = SyntheticConfig(seed=seed, num_train_ids=ids, num_test_ids=2, min_len=2, max_len=120,
                          height=H, width=W, num_distractor_tracklets=0, num_junk_tracklets=0)
    t0 = time.perf_counter()
    info = generate_mars(root, cfg)
    info["generate_seconds"] = round(time.perf_counter() - t0, 1)
    return info


def read_train_index(root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """frames / tracklets tables (docs/CONTRACTS.md schema) of the MARS train split."""
    import scipy.io
    names = (root / "info" / "train_name.txt").read_text().split()
    info = scipy.io.loadmat(root / "info" / "tracks_train_info.mat")["track_train_info"].astype(np.int64)
    frames, tracklets, offset = [], [], 0
    labels = {p: i for i, p in enumerate(sorted(set(info[:, 2].tolist())))}
    for t, (start, end, pid, cam) in enumerate(info.tolist()):
        rows = names[start - 1:end]
        frames += [(t, i, f"bbox_train/{n[:4]}/{n}") for i, n in enumerate(rows)]
        tracklets.append(dict(tracklet_id=t, split="train", pid=pid, label=labels[pid],
                              camid=cam - 1, n_frames=len(rows), frame_offset=offset,
                              name=rows[0][:11]))
        offset += len(rows)
    fr = pd.DataFrame(frames, columns=["tracklet_id", "frame_idx", "path"])
    fr["frame_idx"] = fr["frame_idx"].astype(np.int32)
    return fr, pd.DataFrame(tracklets)


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


# ----------------------------------------------------------------------------- readers
class MemmapCache(FrameCache):
    """The raw cache read through numpy.memmap instead of pread (for comparison)."""

    def _read_raw(self, rows: np.ndarray) -> torch.Tensor:
        maps = self.__dict__.setdefault("_maps", {})
        fps = self.frames_per_shard
        out = torch.empty((len(rows), 3, self.height, self.width), dtype=torch.uint8)
        for k, r in enumerate(rows.tolist()):
            s = r // fps
            if s not in maps:
                n = self._shards[s]["num_frames"]
                maps[s] = np.memmap(self.path / self._shards[s]["file"], np.uint8, "r",
                                    shape=(n, 3, self.height, self.width))
            out.numpy()[k] = maps[s][r % fps]
        return out


def build_h264(frames: pd.DataFrame, tracklets: pd.DataFrame, root: Path, out: Path) -> dict:
    """One H.264 (libx264, crf 18, yuv420p, GOP 16) mp4 per tracklet, via PyAV."""
    import av
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    paths = frames.path.tolist()
    for t, off, n in tracklets[["tracklet_id", "frame_offset", "n_frames"]].itertuples(index=False):
        c = av.open(str(out / f"{t:06d}.mp4"), mode="w")
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.options = {"crf": "18", "preset": "veryfast", "g": "16"}
        for p in paths[off:off + n]:
            img = load_frame(root / p, H, W).permute(1, 2, 0).numpy()
            for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
        c.close()
    return {"build_seconds": round(time.perf_counter() - t0, 2), "bytes": dir_bytes(out)}


def read_h264(out: Path, tid: int, idx: np.ndarray) -> torch.Tensor:
    from decord import VideoReader, cpu
    vr = VideoReader(str(out / f"{tid:06d}.mp4"), ctx=cpu(0), num_threads=1)
    return torch.from_numpy(vr.get_batch(idx.tolist()).asnumpy()).permute(0, 3, 1, 2)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """PSNR in dB; None when the images are identical."""
    mse = ((a.double() - b.double()) ** 2).mean().item()
    return None if mse == 0 else round(10 * np.log10(255.0 ** 2 / mse), 2)


# ----------------------------------------------------------------------------- plain way
class PlainTrainClips:
    """The straightforward loader: PIL opens each original JPEG, per-frame transforms."""

    def __init__(self, frames: pd.DataFrame, tracklets: pd.DataFrame, root: Path, seed: int = 0):
        import torchvision.transforms as T1
        from PIL import Image
        self.Image = Image
        self.paths = [str(root / p) for p in frames.path]
        self.offsets = tracklets.frame_offset.to_numpy()
        self.n_frames = tracklets.n_frames.to_numpy()
        self.labels, self.camids = tracklets.label.to_numpy(), tracklets.camid.to_numpy()
        self.frame_tf = T1.Compose([T1.Resize((H, W), interpolation=T1.InterpolationMode.BICUBIC),
                                    T1.ToTensor(), T1.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        self.erase = T1.RandomErasing(p=0.5, scale=(0.02, 0.4), ratio=(0.3, 3.3), value=0)
        self.seed = seed

    def __getitem__(self, key):
        index, epoch, draw = key
        rng = np.random.default_rng([self.seed, epoch, draw, index])
        idx = random_interval_indices(int(self.n_frames[index]), T, rng)
        off = self.offsets[index]
        clip = torch.stack([self.frame_tf(self.Image.open(self.paths[off + i]).convert("RGB"))
                            for i in idx])
        if rng.random() < 0.5:
            clip = clip.flip(-1)
        return self.erase(clip), int(self.labels[index]), int(self.camids[index])


class V2TrainClips(TrainClips):
    """TrainClips with a torchvision.transforms.v2.Compose applied to a Video tensor."""

    def __init__(self, *a, **k):
        from torchvision import tv_tensors
        from torchvision.transforms import v2
        super().__init__(*a, **k)
        self.tv_tensors = tv_tensors
        self.v2 = v2.Compose([
            v2.Resize((H, W), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.RandomHorizontalFlip(0.5), v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            v2.RandomErasing(0.5, scale=(0.02, 0.4), ratio=(0.3, 3.3), value=0)])

    def __getitem__(self, key):
        index, rng = self._rng(key)
        idx = random_interval_indices(int(self.n_frames[index]), self.seq_len, rng)
        clip = self.cache.read(int(self.tracklet_ids[index]), idx)
        out = self.v2(self.tv_tensors.Video(clip)).as_subclass(torch.Tensor)
        return out, int(self.labels[index]), int(self.camids[index])


def rate(fn, items) -> float:
    t0 = time.perf_counter()
    for it in items:
        fn(it)
    return len(items) / (time.perf_counter() - t0)


# ----------------------------------------------------------------------------- memory child
def rss_child(cache_dir: str, tracklets_path: str, reader: str, epochs: int) -> None:
    """Run a DataLoader loop in this (fresh) process and print its memory as JSON."""
    from torch.utils.data import DataLoader
    torch.set_num_threads(1)
    tracklets = pd.read_parquet(tracklets_path)
    cache = MemmapCache(cache_dir) if reader == "memmap" else FrameCache(cache_dir)
    ds = TrainClips(tracklets, cache, seq_len=T, seed=0)
    sampler = IdentitySampler(ds.labels, num_instances=4, batch_size=32, seed=0)
    loader = DataLoader(ds, batch_size=32, sampler=sampler, num_workers=0)
    next(iter(loader))  # warm up allocator and imports
    base = status_kib("VmRSS")
    clips = 0
    for e in range(epochs):
        sampler.set_epoch(e)
        for clip, _, _ in loader:
            clips += len(clip)
    print(json.dumps({
        "reader": reader, "clips": clips, "frames_read": clips * T,
        "rss_before_loop_mib": round(base / 1024, 1),
        "peak_rss_mib": round(status_kib("VmHWM") / 1024, 1),
        "peak_growth_mib": round((status_kib("VmHWM") - base) / 1024, 1),
        "cache_mib": round(sum(f.stat().st_size for f in Path(cache_dir).iterdir()) / 2**20, 1),
        "rss_end_mib": round(status_kib("VmRSS") / 1024, 1),
        "rss_anon_end_mib": round(status_kib("RssAnon") / 1024, 1),
        "rss_file_end_mib": round(status_kib("RssFile") / 1024, 1),
        "batch_float_mib": round(32 * T * 3 * H * W * 4 / 2**20, 1),
    }))


# ----------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ids", type=int, default=40, help="training identities to synthesise")
    ap.add_argument("--clips", type=int, default=400, help="clips per method per round")
    ap.add_argument("--block", type=int, default=40, help="clips per timed block")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=8, help="epochs of the memory loop")
    ap.add_argument("--workdir", type=Path, default=None, help="keep data here (reused if present)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--rss-child", nargs=4, metavar=("CACHE", "TRACKLETS", "READER", "EPOCHS"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rss_child:
        c, t, r, e = args.rss_child
        rss_child(c, t, r, int(e))
        return {}

    torch.set_num_threads(1)
    tmp = None
    if args.workdir is None:
        tmp = Path(tempfile.mkdtemp(prefix="bench_loading."))
        work = tmp
    else:
        work = args.workdir
        work.mkdir(parents=True, exist_ok=True)
    try:
        return run(args, work)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def run(args, work: Path) -> dict:
    root = work / "MARS"
    data = {} if root.exists() else make_data(root, args.ids)
    frames, tracklets = read_train_index(root)
    n = len(frames)
    src_bytes = sum((root / p).stat().st_size for p in frames.path)
    print(f"data: {len(tracklets)} train tracklets, {n} frames of {H}x{W}, "
          f"{src_bytes / 2**20:.1f} MiB of JPEG", flush=True)

    # 1. build each format ------------------------------------------------------------
    fmts: dict[str, dict] = {}
    for fmt in ("raw", "jpeg"):
        out = work / f"cache_{fmt}"
        shutil.rmtree(out, ignore_errors=True)
        st = build_frame_cache(frames, root, out, H, W, format=fmt, num_workers=0, progress=False)
        fmts[fmt] = {"build_seconds": st["build_seconds"], "bytes": st["bytes"],
                     "bytes_per_frame": round(st["bytes"] / n),
                     "passthrough_frames": st["passthrough_frames"]}
    h264_dir = work / "cache_h264"
    shutil.rmtree(h264_dir, ignore_errors=True)
    h = build_h264(frames, tracklets, root, h264_dir)
    fmts["h264"] = {**h, "bytes_per_frame": round(h["bytes"] / n)}
    # re-encoding cost for sources not already H x W (e.g. Duke): decode + resize + encode
    from torchvision.io import encode_jpeg
    sample = frames.path.iloc[:: max(1, n // 300)].tolist()
    t0 = time.perf_counter()
    for p in sample:
        encode_jpeg(load_frame(root / p, H, W), quality=95)
    reencode_ms = (time.perf_counter() - t0) / len(sample) * 1e3

    raw, jpg, mm = FrameCache(work / "cache_raw"), FrameCache(work / "cache_jpeg"), MemmapCache(work / "cache_raw")
    # fidelity vs the decoded originals
    rng = np.random.default_rng(0)
    probe = [(int(t), random_interval_indices(int(k), T, rng))
             for t, k in tracklets[["tracklet_id", "n_frames"]].sample(20, random_state=0).itertuples(index=False)]
    # raw holds the decoded source frames; jpeg keeps the source bytes (None: bit-identical)
    fmts["raw"]["psnr_db"] = None
    diffs = [psnr(raw.read(t, i), jpg.read(t, i)) for t, i in probe]
    fmts["jpeg"]["psnr_db"] = None if all(d is None for d in diffs) else min(d for d in diffs if d)
    fmts["h264"]["psnr_db"] = round(statistics.mean(psnr(read_h264(h264_dir, t, i), raw.read(t, i))
                                                    for t, i in probe), 2)

    # 2. read speed per format, and train loading ---------------------------------------
    rng = np.random.default_rng(1)
    tids = tracklets.tracklet_id.to_numpy()
    lens = tracklets.n_frames.to_numpy()
    reads = []
    for _ in range(args.clips):
        k = int(rng.integers(len(tids)))
        reads.append((int(tids[k]), random_interval_indices(int(lens[k]), T, rng)))
    read_fns = {
        "raw_pread": lambda a: raw.read(*a),
        "raw_memmap": lambda a: mm.read(*a),
        "jpeg": lambda a: jpg.read(*a),
        "h264_decord": lambda a: read_h264(h264_dir, *a),
    }
    train = {
        "cache_raw": TrainClips(tracklets, raw, T, seed=0),
        "cache_jpeg": TrainClips(tracklets, jpg, T, seed=0),
        "cache_raw_v2compose": V2TrainClips(tracklets, raw, T, seed=0),
        "plain_pil": PlainTrainClips(frames, tracklets, root, seed=0),
    }
    sampler = IdentitySampler(train["cache_raw"].labels, num_instances=4, batch_size=32, seed=0)
    keys = []
    epoch = 0
    while len(keys) < args.clips:
        sampler.set_epoch(epoch)
        keys += list(sampler)
        epoch += 1
    keys = keys[: args.clips]
    for ds in train.values():  # warm-up (page cache, allocator, lazy imports)
        for k in keys[:20]:
            ds[k]
    # interleaved short blocks, methods in rotating order: slow drifts of the shared
    # machine's load hit every method alike; ratios are taken block by block
    read_rates = {k: [] for k in read_fns}
    train_rates = {k: [] for k in train}
    blocks = [(reads[i:i + args.block], keys[i:i + args.block])
              for i in range(0, args.clips - args.block + 1, args.block)]
    for r in range(args.rounds):
        for b, (rblock, kblock) in enumerate(blocks):
            names = list(read_fns)
            for name in names[b % len(names):] + names[:b % len(names)]:
                items = rblock[: max(4, len(rblock) // 8)] if name.startswith("h264") else rblock
                read_rates[name].append(rate(read_fns[name], items))
            names = list(train)
            for name in names[b % len(names):] + names[:b % len(names)]:
                train_rates[name].append(rate(train[name].__getitem__, kblock))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{k} {statistics.median(v):.0f}/s" for k, v in {**read_rates, **train_rates}.items()),
            flush=True)
    med = lambda v: round(statistics.median(v), 1)  # noqa: E731
    for name, key in (("raw", "raw_pread"), ("jpeg", "jpeg"), ("h264", "h264_decord")):
        fmts[name]["read_clips_per_s"] = med(read_rates[key])
    fmts["raw"]["read_clips_per_s_memmap"] = med(read_rates["raw_memmap"])
    loading = {k: med(v) for k, v in train_rates.items()}
    plain = np.array(train_rates["plain_pil"])
    ratios = {}
    for k, v in train_rates.items():
        if k != "plain_pil":
            paired = np.array(v) / plain
            ratios[f"{k}_vs_plain"] = round(float(np.median(paired)), 2)
            ratios[f"{k}_vs_plain_iqr"] = [round(float(q), 2) for q in np.percentile(paired, [25, 75])]

    # 3. memory of a loading loop, in fresh processes ------------------------------------
    tpath = work / "tracklets.parquet"
    tracklets.to_parquet(tpath)
    memory = {}
    for reader, cdir in (("pread", "cache_raw"), ("memmap", "cache_raw"), ("jpeg", "cache_jpeg")):
        cmd = [sys.executable, "-m", "benchmarks.bench_loading", "--rss-child",
               str(work / cdir), str(tpath), reader, str(args.epochs)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parent.parent)
        key = f"{cdir.split('_')[1]}_{reader}" if reader != "jpeg" else "jpeg"
        memory[key] = json.loads(res.stdout.strip().splitlines()[-1])

    result = {
        "benchmark": "loading",
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                    "torch": torch.__version__, "note": "shared 2-core machine; medians of interleaved rounds"},
        "data": {"generator": "psta.data.synthetic.generate_mars", "train_tracklets": len(tracklets),
                 "frames": n, "height": H, "width": W, "source_jpeg_bytes": src_bytes,
                 "mean_frames_per_tracklet": round(n / len(tracklets), 1),
                 **({"generate_seconds": data["generate_seconds"]} if data else {})},
        "setup": {"seq_len": T, "clips_per_round": args.clips, "rounds": args.rounds,
                  "block": args.block, "timing": "median over interleaved blocks; ratios: median "
                  "(and IQR) of per-block ratios against plain_pil in the same block",
                  "h264_clips_per_block": max(4, args.block // 8), "processes": 1,
                  "sampler": "IdentitySampler P=8 K=4, random-interval clips",
                  "augment": "resize (no-op at 256x128), flip 0.5, normalise, erasing 0.5"},
        "formats": fmts,
        "reencode_ms_per_frame": round(reencode_ms, 2),
        "train_loading_clips_per_s": loading,
        "ratios": ratios,
        "memory": memory,
        "chosen_default": "format='auto': raw when it takes <= 50% of free disk, else jpeg",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print_table(result)
    return result


def print_table(r: dict) -> None:
    gib = 2**20
    print("\ncache format   build s   MiB on disk   B/frame   read clips/s   PSNR dB")
    for name, f in r["formats"].items():
        print(f"{name:<13}{f['build_seconds']:>8.1f}{f['bytes'] / gib:>14.1f}{f['bytes_per_frame']:>10}"
              f"{f['read_clips_per_s']:>15.1f}{f['psnr_db'] or 'exact':>10}")
    print(f"raw via numpy.memmap: {r['formats']['raw']['read_clips_per_s_memmap']:.1f} clips/s; "
          f"source JPEGs {r['data']['source_jpeg_bytes'] / gib:.1f} MiB; "
          f"re-encode {r['reencode_ms_per_frame']} ms/frame")
    print("\ntrain clip loading (sample + read + augment), one process:")
    for k, v in r["train_loading_clips_per_s"].items():
        ratio = r["ratios"].get(f"{k}_vs_plain")
        iqr = r["ratios"].get(f"{k}_vs_plain_iqr")
        extra = f"   x{ratio:.2f} (IQR {iqr[0]:.2f}-{iqr[1]:.2f})" if ratio else "   (baseline)"
        print(f"  {k:<22}{v:>8.1f} clips/s{extra}")
    print("\nmemory of a DataLoader loop (batch 32 x 8 x 3 x 256 x 128 float = "
          f"{next(iter(r['memory'].values()))['batch_float_mib']} MiB):")
    for k, m in r["memory"].items():
        print(f"  {k:<11} cache {m['cache_mib']:>6} MiB, {m['frames_read']} frames read: rss before "
              f"{m['rss_before_loop_mib']} MiB, peak {m['peak_rss_mib']} MiB (+{m['peak_growth_mib']}), "
              f"end anon {m['rss_anon_end_mib']} / file-backed {m['rss_file_end_mib']} MiB")


if __name__ == "__main__":
    main()
