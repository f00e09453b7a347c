"""Benchmark: camera video -> person crops (psta.data.videos), one core.

Throughput: a 640 x 360 H.264 video (900 frames, a keyframe every 50 frames = 2 s, as IP
cameras are often set up) with six people walking (a box per person per frame) is turned into
256 x 128 JPEG crops (in memory, no disk) two ways in the same process, with the same crop code
(:func:`psta.data.videos.crop_resize` + PIL JPEG):

- ours: decord, sorted unique frame indices read with ``get_batch`` in batches of at most
  32 frames cut at keyframes, the reader rewound after each batch (what
  :func:`build_mars_from_videos` does with its defaults, via
  :func:`psta.data.videos.iter_frame_batches`);
- plain: PyAV decoding the video frame by frame, converting to RGB only the frames that carry
  boxes.

Cases: ``dense`` (every box of the first 150 frames), ``stride_5`` (every 5th frame of the
whole video: DukeMTMC-VideoReID kept 12 frames a second of 60 fps video) and ``sparse``
(people seen only in three bursts of 16 frames: random access can seek past the empty
stretches, frame-by-frame decoding cannot).
The crops of the two paths are compared. A decode-only row (no cropping) isolates the decoders.

Memory: :func:`build_mars_from_videos` (default config, JPEGs on disk) runs in a fresh process
on two cameras of N and of 4N frames; peak RSS must stay flat (decoded frames live one batch at
a time). The same runs with decord's rewind disabled show why it is there: decord's decoder
thread keeps decoding ahead while the crops are made, up to the rest of the video.

Run: ``.venv/bin/python -m benchmarks.bench_videos`` (writes benchmarks/results/videos.json).
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import io  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from benchmarks.common import pin_to_one_cpu, status_kib  # noqa: E402
from psta.atomic import write_text_atomic  # noqa: E402

W, H, FPS = 640, 360, 25
PEOPLE = 6
THROUGHPUT_FRAMES = 900
DENSE_FRAMES = 150
GOP = 50
BURSTS = ((300, 316), (600, 616), (860, 876))
MEM_FRAMES = 250                 # and 4x that
REPEATS = 5
CROP_H, CROP_W = 256, 128


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------
def make_video(path: Path, n: int, people: int = PEOPLE, seed: int = 0, gop: int = GOP) -> list[tuple]:
    """Write an H.264 video of ``people`` striped figures walking back and forth over a
    textured background, and its MOTChallenge box file; return the rows."""
    import av

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    bg = np.stack([60 + 80 * xx / W, 90 + 60 * yy / H, 120 + 40 * np.sin(xx / 23.0) * np.cos(yy / 17.0)], -1)
    bg = np.clip(bg + rng.normal(0, 6, (H, W, 1)), 0, 255).astype(np.uint8)
    figs = []
    for _p in range(people):
        w, h = int(rng.integers(50, 80)), int(rng.integers(140, 220))
        figs.append(dict(w=w, h=h, y=int(rng.integers(0, H - h)), x0=float(rng.uniform(0, W - w)),
                         v=float(rng.uniform(1.0, 4.0)) * rng.choice([-1, 1]),
                         c1=rng.integers(30, 230, 3), c2=rng.integers(30, 230, 3)))
    rows = []
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=FPS)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        if codec == "libx264":
            s.options = {"crf": "20", "preset": "ultrafast"}
        s.codec_context.gop_size = gop
        for f in range(n):
            img = bg.copy()
            for tid, g in enumerate(figs, 1):
                span = W - g["w"]
                pos = (g["x0"] + g["v"] * f) % (2 * span)
                x = int(pos if pos < span else 2 * span - pos)
                fig = np.empty((g["h"], g["w"], 3), np.uint8)
                fig[:] = g["c1"]
                fig[(np.arange(g["h"]) // 8) % 2 == 1] = g["c2"]
                img[g["y"]:g["y"] + g["h"], x:x + g["w"]] = fig
                rows.append((f + 1, tid, x, g["y"], g["w"], g["h"]))
            for pkt in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    path.with_suffix(".txt").write_text("".join(f"{f},{t},{x},{y},{w},{h},1,-1,-1,-1\n" for f, t, x, y, w, h in rows))
    return rows


def plan(rows: list[tuple], stride: int, keep=lambda f0: True) -> dict[int, list[tuple]]:
    """0-based frame -> boxes (x0, y0, x1, y1) of the sampled boxes (every stride-th per track,
    among the boxes of the frames ``keep`` accepts)."""
    from psta.data.videos import clip_boxes

    by_track: dict[int, list[tuple]] = {}
    for r in rows:
        if not keep(r[0] - 1):
            continue
        by_track.setdefault(r[1], []).append(r)
    out: dict[int, list] = {}
    for tr in by_track.values():
        tr.sort()
        for f, _, x, y, w, h in tr[::stride]:
            box, _, _ = clip_boxes([x], [y], [w], [h], W, H)
            out.setdefault(f - 1, []).append(tuple(int(v) for v in box[0]))
    return dict(sorted(out.items()))


# --------------------------------------------------------------------------------------------
# the two decode paths, same crop code
# --------------------------------------------------------------------------------------------
def _crops(frame: np.ndarray, boxes: list[tuple], sink: list) -> None:
    from psta.data.videos import crop_resize

    for b in boxes:
        buf = io.BytesIO()
        crop_resize(frame, b, CROP_H, CROP_W).save(buf, format="JPEG", quality=95)
        sink.append(buf.getvalue())


def ours(video: Path, need: dict[int, list], crop: bool = True) -> list:
    import decord

    from psta.data.videos import frames_per_batch, iter_frame_batches

    vr = decord.VideoReader(str(video), ctx=decord.cpu(0))
    frames = np.fromiter(need, np.int64)
    sink: list = []
    from psta.data.videos import VideoIngestConfig

    cfg = VideoIngestConfig()
    for idx, arr in iter_frame_batches(vr, frames, frames_per_batch(cfg.decode_batch, cfg.decode_batch_mb, H, W),
                                       video):
        for k, f in enumerate(idx):
            if crop:
                _crops(arr[k], need[int(f)], sink)
            else:
                sink.append(int(arr[k, 0, 0, 0]))
    return sink


def plain(video: Path, need: dict[int, list], crop: bool = True) -> list:
    import av

    sink: list = []
    last = max(need)
    with av.open(str(video)) as c:
        for i, frame in enumerate(c.decode(video=0)):
            if i in need:
                arr = frame.to_ndarray(format="rgb24")
                if crop:
                    _crops(arr, need[i], sink)
                else:
                    sink.append(int(arr[0, 0, 0]))
            if i >= last:
                break
    return sink


def timed(fn, *args) -> tuple[float, float, list]:
    """(best, median) seconds of REPEATS runs, and the last output. The machine is shared, so
    the best run is the least disturbed measure of each path's own cost."""
    out, runs = common.timed(lambda: fn(*args), REPEATS)
    return min(runs), statistics.median(runs), out


def compare(a: list[bytes], b: list[bytes]) -> float:
    """Mean absolute pixel difference of the decoded crops of the two paths."""
    from PIL import Image

    if len(a) != len(b):
        return float("inf")
    def px(data: bytes) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(data)), np.int16)

    diffs = [np.abs(px(x) - px(y)).mean() for x, y in zip(a[::7], b[::7])]
    return float(np.mean(diffs))


# --------------------------------------------------------------------------------------------
# memory: build_mars_from_videos in a fresh process
# --------------------------------------------------------------------------------------------
def vm(key: str) -> float:
    """VmRSS / VmHWM of this process in MB (Linux); ru_maxrss elsewhere."""
    kib = status_kib(key)
    return (kib if kib >= 0 else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


def child(src: str, out: str, rewind: bool) -> None:
    import decord

    from psta.data.videos import VideoIngestConfig, build_mars_from_videos

    if not rewind:              # what decord does without the rewind after each batch
        decord.VideoReader.seek = lambda self, pos: None
    pin_to_one_cpu()
    base = vm("VmRSS")
    t = time.perf_counter()
    stats = build_mars_from_videos(src, out, VideoIngestConfig())
    sec = time.perf_counter() - t
    peak = vm("VmHWM")      # this process image's peak (ru_maxrss would carry the parent's over exec)
    print(json.dumps({"peak_rss_mb": round(peak, 1), "rss_after_imports_mb": round(base, 1),
                      "seconds": round(sec, 3), "crops": stats["frames"],
                      "frames_decoded": sum(c["frames_decoded"] for c in stats["cameras"])}))


def memory_run(work: Path, n: int, rewind: bool = True) -> dict:
    src = work / f"mem{n}"
    if not src.exists():
        src.mkdir()
        make_video(src / "cam1.mp4", n, people=4, seed=1)
        shutil.copy(src / "cam1.mp4", src / "cam2.mp4")     # a second camera: the same people
        shutil.copy(src / "cam1.txt", src / "cam2.txt")
    res = subprocess.run([sys.executable, "-m", "benchmarks.bench_videos", "--child", str(src), str(work / f"out{n}"),
                          "rewind" if rewind else "no-rewind"],
                         capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1])
    shutil.rmtree(work / f"out{n}", ignore_errors=True)
    r = json.loads(res.stdout.strip().splitlines()[-1])
    r["video_frames"] = n
    r["rewind"] = rewind
    r["whole_video_rgb_mb"] = round(n * H * W * 3 / 2**20, 1)
    return r


def main() -> dict:
    import av
    import decord
    import PIL

    pinned = pin_to_one_cpu()
    work = Path(tempfile.mkdtemp(prefix="bench_videos."))
    try:
        video = work / "cam1.mp4"
        t = time.perf_counter()
        rows = make_video(video, THROUGHPUT_FRAMES)
        gen_s = time.perf_counter() - t
        table = {}
        cases = {"dense": plan(rows, 1, lambda f: f < DENSE_FRAMES),
                 "stride_5": plan(rows, 5),
                 "sparse": plan(rows, 1, lambda f: any(a <= f < b for a, b in BURSTS))}
        for case, need in cases.items():
            nframes, ncrops = len(need), sum(len(v) for v in need.values())
            t_ours, m_ours, c_ours = timed(ours, video, need)
            t_plain, m_plain, c_plain = timed(plain, video, need)
            table[case] = {
                "frames": nframes, "crops": ncrops,
                "ours_s": round(t_ours, 3), "plain_s": round(t_plain, 3),
                "ours_median_s": round(m_ours, 3), "plain_median_s": round(m_plain, 3),
                "ours_frames_per_s": round(nframes / t_ours, 1), "plain_frames_per_s": round(nframes / t_plain, 1),
                "ours_crops_per_s": round(ncrops / t_ours, 1), "plain_crops_per_s": round(ncrops / t_plain, 1),
                "ratio_plain_over_ours": round(t_plain / t_ours, 2),
                "crop_mean_abs_diff": round(compare(c_ours, c_plain), 3),
            }
        need = plan(rows, 1)
        t_do, m_do, _ = timed(ours, video, need, False)
        t_dp, m_dp, _ = timed(plain, video, need, False)
        table["decode_only_all_frames"] = {
            "frames": len(need), "ours_s": round(t_do, 3), "plain_s": round(t_dp, 3),
            "ours_median_s": round(m_do, 3), "plain_median_s": round(m_dp, 3),
            "ours_frames_per_s": round(len(need) / t_do, 1), "plain_frames_per_s": round(len(need) / t_dp, 1),
            "ratio_plain_over_ours": round(t_dp / t_do, 2)}
        mem = [memory_run(work, MEM_FRAMES), memory_run(work, 4 * MEM_FRAMES)]
        mem_no_rewind = [memory_run(work, MEM_FRAMES, False), memory_run(work, 4 * MEM_FRAMES, False)]
    finally:
        shutil.rmtree(work, ignore_errors=True)

    growth = mem[1]["peak_rss_mb"] - mem[0]["peak_rss_mb"]
    growth_nr = mem_no_rewind[1]["peak_rss_mb"] - mem_no_rewind[0]["peak_rss_mb"]
    result = {
        "benchmark": "videos",
        "task": "camera video + boxes -> 256x128 JPEG person crops (decode, crop, resize, encode)",
        "data": {"video": f"{W}x{H} H.264 (libx264 ultrafast, crf 20), {FPS} fps, keyframe every {GOP}",
                 "cases": {"dense": f"every box of frames 1..{DENSE_FRAMES}",
                           "stride_5": "every 5th frame (Duke: 12 of 60 fps)",
                           "sparse": f"people only in frames {[(a + 1, b) for a, b in BURSTS]}"},
                 "frames": THROUGHPUT_FRAMES, "people_per_frame": PEOPLE, "generation_s": round(gen_s, 2)},
        "ours": "decord get_batch on sorted unique frames, <= 32 per call cut at keyframes, rewound after each",
        "plain": "PyAV frame-by-frame decode, to_ndarray(rgb24) on frames with boxes",
        "cpu": pinned,
        "threads": 1,
        "repeats": REPEATS,
        "timing": "best of repeats (the *_median_s fields give the medians); load average at start "
                  + " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "throughput": table,
        "memory": {"runs": mem, "peak_rss_growth_mb_for_4x_frames": round(growth, 1),
                   "flat": bool(growth < 0.1 * mem[1]["whole_video_rgb_mb"]),
                   "without_rewind": {"runs": mem_no_rewind, "peak_rss_growth_mb_for_4x_frames": round(growth_nr, 1)}},
        "python": sys.version.split()[0],
        "decord": decord.__version__, "av": av.__version__, "pillow": PIL.__version__,
        "machine": platform.machine(),
        "processor": platform.processor() or platform.platform(),
    }
    print(f"{'case':<24}{'frames':>7}{'crops':>7}{'ours f/s':>10}{'plain f/s':>10}{'plain_s/ours_s':>15}")
    for k, v in table.items():
        print(f"{k:<24}{v['frames']:>7}{v.get('crops', 0):>7}{v['ours_frames_per_s']:>10.1f}"
              f"{v['plain_frames_per_s']:>10.1f}{v['ratio_plain_over_ours']:>15.2f}")
    for r in mem + mem_no_rewind:
        print(f"memory{'' if r['rewind'] else ' (no rewind)'}: {r['video_frames']:>5} frames x 2 cameras, "
              f"{r['crops']} crops: peak RSS "
              f"{r['peak_rss_mb']:.1f} MB (after imports {r['rss_after_imports_mb']:.1f} MB; whole video "
              f"as RGB would be {r['whole_video_rgb_mb']:.0f} MB), {r['seconds']:.1f} s")
    print(f"peak RSS growth for 4x frames: {growth:.1f} MB (without the rewind {growth_nr:.1f} MB); "
          f"{pinned}, best of {REPEATS} (medians in the json)")
    write_text_atomic(Path(__file__).resolve().parent / "results" / "videos.json",
                      json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4] == "rewind")
    else:
        main()
