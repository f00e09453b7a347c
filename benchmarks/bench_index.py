"""Benchmark: index full-scale MARS metadata (read_mars + build_index + write_index), one core.

The data are the ``info/`` files of MARS at its published size (1,191,003 frame names, 20,478
tracklets) written by :func:`psta.data.synthetic.write_mars_metadata`. The plain
implementation, run in the same process on the same files, is the straightforward loader
(torchreid's ``mars.py`` style: read the name lists line by line, loop over the .mat rows,
check identities and cameras with Python sets, join paths one by one) followed by building the
two tables with per-row Python loops and writing them with the same schemas. Both outputs are
compared for equality.

Run: ``.venv/bin/python -m benchmarks.bench_index`` (writes benchmarks/results/index.json).
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import json  # noqa: E402
import os.path as osp  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from scipy.io import loadmat  # noqa: E402

from benchmarks.common import pin_to_one_cpu  # noqa: E402
from psta.atomic import write_text_atomic  # noqa: E402
from psta.data import read_mars  # noqa: E402
from psta.data.synthetic import write_mars_metadata  # noqa: E402
from psta.index import FRAMES_SCHEMA, TRACKLETS_SCHEMA, build_index, read_index, write_index  # noqa: E402

TARGET_S = 15.0
REPEATS = 5


def one_core() -> str:
    """Pin the process to one CPU and every thread pool to one thread."""
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    return pin_to_one_cpu()


# ------------------------------------------------------------------------------------------
# the plain implementation
# ------------------------------------------------------------------------------------------
def plain_index(root: str, out_dir: str) -> None:
    def get_names(fpath):
        names = []
        with open(fpath) as f:
            for line in f:
                names.append(line.rstrip())
        return names

    info = osp.join(root, "info")
    train_names = get_names(osp.join(info, "train_name.txt"))
    test_names = get_names(osp.join(info, "test_name.txt"))
    track_train = loadmat(osp.join(info, "tracks_train_info.mat"))["track_train_info"]
    track_test = loadmat(osp.join(info, "tracks_test_info.mat"))["track_test_info"]
    query_idx = loadmat(osp.join(info, "query_IDX.mat"))["query_IDX"].squeeze() - 1
    query_set = set(int(i) for i in query_idx)

    def process(names, meta, home_dir, rows):
        out = []
        for i in rows:
            start, end, pid, camid = (int(v) for v in meta[i])
            if pid == -1:
                continue  # junk
            img_names = names[start - 1:end]
            assert len(set(n[:4] for n in img_names)) == 1, f"row {i}: mixed identities"
            assert len(set(n[5] for n in img_names)) == 1, f"row {i}: mixed cameras"
            paths = [home_dir + "/" + n[:4] + "/" + n for n in img_names]
            out.append((paths, pid, camid - 1, img_names[0][:11]))
        return out

    train = process(train_names, track_train, "bbox_train", range(track_train.shape[0]))
    query = process(test_names, track_test, "bbox_test", sorted(query_set))
    gallery = process(test_names, track_test, "bbox_test",
                      [i for i in range(track_test.shape[0]) if i not in query_set])

    pid2label = {pid: label for label, pid in enumerate(sorted({t[1] for t in train}))}
    trk = {k: [] for k in TRACKLETS_SCHEMA.names}
    fr = {k: [] for k in FRAMES_SCHEMA.names}
    tid = 0
    offset = 0
    for split, tracklets in (("train", train), ("query", query), ("gallery", gallery)):
        for paths, pid, camid, name in tracklets:
            trk["tracklet_id"].append(tid)
            trk["split"].append(split)
            trk["pid"].append(pid)
            trk["label"].append(pid2label[pid] if split == "train" else -1)
            trk["camid"].append(camid)
            trk["n_frames"].append(len(paths))
            trk["frame_offset"].append(offset)
            trk["name"].append(name)
            for j, p in enumerate(paths):
                fr["tracklet_id"].append(tid)
                fr["frame_idx"].append(j)
                fr["path"].append(p)
            offset += len(paths)
            tid += 1
    os.makedirs(out_dir, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(pd.DataFrame(trk), schema=TRACKLETS_SCHEMA, preserve_index=False),
                   osp.join(out_dir, "tracklets.parquet"), compression="zstd")
    pq.write_table(pa.Table.from_pandas(pd.DataFrame(fr), schema=FRAMES_SCHEMA, preserve_index=False),
                   osp.join(out_dir, "frames.parquet"), compression="zstd")
    stats = {"splits": {s: {"tracklets": len(ts), "frames": sum(len(t[0]) for t in ts)}
                        for s, ts in (("train", train), ("query", query), ("gallery", gallery))}}
    with open(osp.join(out_dir, "stats.json"), "w") as f:
        json.dump(stats, f)


# ------------------------------------------------------------------------------------------
def ours(root: str, out_dir: str) -> dict:
    t0 = time.perf_counter()
    raw = read_mars(root)
    t1 = time.perf_counter()
    index = build_index(raw)
    t2 = time.perf_counter()
    write_index(index, out_dir)
    t3 = time.perf_counter()
    return {"read": t1 - t0, "build": t2 - t1, "write": t3 - t2, "total": t3 - t0}


def main() -> dict:
    pinned = one_core()
    work = Path(tempfile.mkdtemp(prefix="bench_index."))
    try:
        root = work / "MARS"
        t = time.perf_counter()
        planted = write_mars_metadata(root, seed=0)
        gen_s = time.perf_counter() - t
        runs, plain_runs = [], []
        for r in range(REPEATS):
            runs.append(ours(str(root), str(work / f"ours{r}")))
            t = time.perf_counter()
            plain_index(str(root), str(work / f"plain{r}"))
            plain_runs.append(time.perf_counter() - t)
        a, b = read_index(work / "ours0"), work / "plain0"
        equal = (a.tracklets.equals(pq.read_table(b / "tracklets.parquet").to_pandas())
                 and a.frames.equals(pq.read_table(b / "frames.parquet").to_pandas()))
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        plain_s = statistics.median(plain_runs)
        st = a.stats
    finally:
        shutil.rmtree(work, ignore_errors=True)

    result = {
        "benchmark": "index",
        "task": "read_mars + build_index + write_index on full-scale MARS metadata",
        "data": {"frames": planted["files"], "tracklets": planted["splits"]["train"]["tracklets"]
                 + planted["test_tracklets"], "index_tracklets": st["tracklets"],
                 "index_frames": st["frames"], "metadata_generation_s": round(gen_s, 3)},
        "threads": 1,
        "cpu": pinned,
        "repeats": REPEATS,
        "ours_s": {k: round(v, 3) for k, v in med.items()},
        "plain_s": round(plain_s, 3),
        "ratio_plain_over_ours": round(plain_s / med["total"], 2),
        "target_s": TARGET_S,
        "meets_target": med["total"] <= TARGET_S,
        "outputs_equal": bool(equal),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "pyarrow": pa.__version__,
        "pandas": pd.__version__,
        "machine": platform.machine(),
        "processor": platform.processor() or platform.platform(),
    }
    print(f"{'step':<26}{'seconds':>10}")
    for k, v in med.items():
        print(f"{'ours ' + k:<26}{v:>10.3f}")
    print(f"{'plain (per-row loops)':<26}{plain_s:>10.3f}")
    print(f"{'ratio plain / ours':<26}{plain_s / med['total']:>10.2f}")
    print(f"target <= {TARGET_S:.0f} s: {'met' if result['meets_target'] else 'MISSED'}; "
          f"outputs equal: {equal}; {pinned}, median of {REPEATS}")
    write_text_atomic(Path(__file__).resolve().parent / "results" / "index.json",
                      json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
