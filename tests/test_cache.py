"""Frame cache round trips, integrity errors, atomic builds, and the clip datasets on top."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader
from torchvision.io import decode_image, encode_jpeg
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from psta.data.cache import CacheError, FrameCache, build_frame_cache, load_frame
from psta.data.datasets import TestChunks, TestClips, TrainClips
from psta.data.sampling import IdentitySampler, begin_interval_indices, dense_clips

# torchvision 0.29 deprecates its image codecs (they still work)
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")

H, W = 64, 32
LENGTHS = [1, 5, 20, 9, 3, 12, 7, 30]  # tracklet lengths (8 tracklets, 4 identities)
MODES = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR}


def _smooth_frame(rng: np.random.Generator, h: int, w: int) -> torch.Tensor:
    """A person-crop-like smooth image (JPEG-friendly) with a little texture."""
    coarse = torch.from_numpy(rng.uniform(0, 255, (1, 3, 6, 3)).astype(np.float32))
    img = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)[0]
    img += torch.from_numpy(rng.normal(0, 2, (3, h, w)).astype(np.float32))
    return img.clamp(0, 255).round().to(torch.uint8)


def _write_dataset(root: Path, h: int, w: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """JPEG frames under root and the matching (frames, tracklets) index tables."""
    rng = np.random.default_rng(seed)
    frames, tracklets, offset = [], [], 0
    for t, n in enumerate(LENGTHS):
        pid = 10 + t // 2
        for f in range(n):
            rel = f"bbox/{pid:04d}/{t:03d}_{f:03d}.jpg"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(encode_jpeg(_smooth_frame(rng, h, w), quality=95).numpy().tobytes())
            frames.append((t, f, rel))
        tracklets.append(dict(tracklet_id=t, split="train", pid=pid, label=t // 2, camid=t % 2,
                              n_frames=n, frame_offset=offset, name=f"t{t}"))
        offset += n
    fr = pd.DataFrame(frames, columns=["tracklet_id", "frame_idx", "path"])
    fr["frame_idx"] = fr["frame_idx"].astype(np.int32)
    return fr, pd.DataFrame(tracklets)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    frames, tracklets = _write_dataset(root, H, W)
    return root, frames, tracklets


@pytest.fixture(scope="module")
def raw_cache(data, tmp_path_factory):
    root, frames, _ = data
    out = tmp_path_factory.mktemp("c") / "raw"
    # 10 frames per shard: tracklets straddle shard boundaries
    stats = build_frame_cache(frames, root, out, H, W, format="raw", shard_bytes=10 * 3 * H * W,
                              progress=False)
    return out, stats


def _reference(root: Path, frames: pd.DataFrame, rows) -> torch.Tensor:
    return torch.stack([load_frame(root / frames.path[r], H, W) for r in rows])


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a.double() - b.double()) ** 2).mean().item()
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def test_raw_round_trip_is_bit_exact(data, raw_cache):
    root, frames, tracklets = data
    out, stats = raw_cache
    assert stats["format"] == "raw" and stats["num_frames"] == len(frames) == sum(LENGTHS)
    assert stats["shards"] == int(np.ceil(len(frames) / 10))
    cache = FrameCache(out)
    assert len(cache) == len(frames) and cache.header["format_version"] == 2
    assert (cache.height, cache.width) == (H, W)
    every = cache.read_rows(np.arange(len(frames)))
    assert torch.equal(every, _reference(root, frames, range(len(frames))))
    for t in (2, 7):  # strided, repeated and unsorted reads across shards
        off = int(tracklets.frame_offset[t])
        for idx in ([0, 3, 3, 9, 10, 11, 19], [5, 4], [0] * 8):
            idx = [i for i in idx if i < LENGTHS[t]]
            assert torch.equal(cache.read(t, idx), every[off + np.array(idx)])
    with pytest.raises(IndexError):
        cache.read(0, [1])
    with pytest.raises(KeyError):
        cache.read(99, [0])


def test_jpeg_cache_passthrough_and_reencode(data, tmp_path):
    root, frames, _ = data
    # source frames are JPEGs of exactly H x W: their bytes are kept, decode is identical
    st = build_frame_cache(frames, root, tmp_path / "j", H, W, format="jpeg", progress=False)
    assert st["format"] == "jpeg" and st["passthrough_frames"] == len(frames)
    cache = FrameCache(tmp_path / "j")
    rows = np.arange(len(frames))
    assert torch.equal(cache.read_rows(rows), _reference(root, frames, rows))
    off = LENGTHS[0] + LENGTHS[1]  # tracklet 2's first row
    assert torch.equal(cache.read(2, [4, 1, 1]), _reference(root, frames, [off + 4, off + 1, off + 1]))


def test_jpeg_cache_reencodes_other_sizes_with_high_psnr(tmp_path):
    # larger sources (as Duke's) are resized, then re-encoded: lossy but close
    frames, _ = _write_dataset(tmp_path / "src", 160, 80, seed=1)
    frames = frames.iloc[:40]
    st = build_frame_cache(frames, tmp_path / "src", tmp_path / "j", 128, 64, format="jpeg",
                           jpeg_quality=95, shard_bytes=50_000, progress=False)
    assert st["passthrough_frames"] == 0 and st["shards"] > 1
    got = FrameCache(tmp_path / "j").read_rows(np.arange(len(frames)))
    ref = torch.stack([load_frame(tmp_path / "src" / p, 128, 64) for p in frames.path])
    assert got.shape == (len(frames), 3, 128, 64)
    assert _psnr(got, ref) >= 40.0


def test_each_frame_is_resized_with_its_own_interpolation(tmp_path):
    """Train frames bicubic, test frames bilinear (the reference's two transforms), one cache."""
    frames, _ = _write_dataset(tmp_path / "src", 160, 80, seed=2)
    frames = frames.iloc[:12]
    interps = ["bicubic"] * 6 + ["bilinear"] * 6
    st = build_frame_cache(frames, tmp_path / "src", tmp_path / "r", 64, 32, format="raw",
                           interpolation=interps, progress=False)
    cache = FrameCache(tmp_path / "r")
    got = cache.read_rows(np.arange(12))
    for r, mode in enumerate(interps):
        src = decode_image(str(tmp_path / "src" / frames.path[r]))
        want = F.resize(src, [64, 32], interpolation=MODES[mode], antialias=True)
        other = F.resize(src, [64, 32], interpolation=MODES[{"bicubic": "bilinear"}.get(mode, "bicubic")],
                         antialias=True)
        assert torch.equal(got[r], want) and not torch.equal(got[r], other)
    assert cache.header["resize"]["interpolation"] == {"bicubic": 6, "bilinear": 6}
    assert st["num_frames"] == 12
    with pytest.raises(ValueError, match="unknown interpolation 'nearest'"):
        build_frame_cache(frames, tmp_path / "src", tmp_path / "x", 64, 32, interpolation="nearest",
                          progress=False)
    with pytest.raises(ValueError, match="3 interpolation names for 12 frames"):
        build_frame_cache(frames, tmp_path / "src", tmp_path / "x", 64, 32, interpolation=interps[:3],
                          progress=False)
    assert not (tmp_path / "x").exists()


def test_parallel_build_is_byte_identical(data, raw_cache, tmp_path):
    root, frames, _ = data
    build_frame_cache(frames, root, tmp_path / "p", H, W, format="raw",
                      shard_bytes=10 * 3 * H * W, num_workers=2, progress=False)
    a = (raw_cache[0] / "header.json").read_text()
    assert (tmp_path / "p" / "header.json").read_text() == a


def test_auto_format_picks_raw_for_small_data(data, tmp_path):
    root, frames, _ = data
    st = build_frame_cache(frames.iloc[:5], root, tmp_path / "a", H, W, progress=False)
    assert st["format"] == "raw" and st["format_reason"].startswith("auto")


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_flipped_byte_is_found_by_verify(raw_cache, tmp_path):
    out = _copy(raw_cache[0], tmp_path / "c")
    FrameCache(out).verify()
    shard = out / "shard-00002.bin"
    data = bytearray(shard.read_bytes())
    data[1234] ^= 0xFF
    shard.write_bytes(bytes(data))
    cache = FrameCache(out)  # same size: the cheap open-time check passes
    with pytest.raises(CacheError, match=r"shard-00002\.bin.*sha256.*rebuild.*cache stage"):
        cache.verify()
    with pytest.raises(CacheError, match="shard-00002.bin"):
        FrameCache(out, verify=True)


@pytest.mark.parametrize("fmt", ["raw", "jpeg"])
def test_flipped_bytes_in_a_shard_fail_the_read_that_meets_them(data, fmt, tmp_path):
    root, frames, _ = data
    out = tmp_path / fmt
    build_frame_cache(frames, root, out, H, W, format=fmt, shard_bytes=64 << 10, progress=False)
    cache = FrameCache(out)
    header = cache.header
    shard = header["shards"][1]
    rows = np.arange(shard["first_frame"], shard["first_frame"] + shard["num_frames"])
    clean = cache.read_rows(rows)
    path = out / shard["file"]
    damaged = bytearray(path.read_bytes())
    damaged[len(damaged) // 2] ^= 0x10  # one bit, mid-frame: decodes fine, pixels change
    path.write_bytes(bytes(damaged))
    damaged_row = rf"{shard['file']} is damaged: frame row \d+ fails its CRC-32C check.*rebuild"
    with pytest.raises(CacheError, match=damaged_row):
        FrameCache(out).read_rows(rows)
    # the per-frame check is what catches it: unchecked, the damage would be read silently
    unchecked = FrameCache(out, check_reads=False).read_rows(rows)
    assert unchecked.shape == clean.shape and not torch.equal(unchecked, clean)
    # frames of the other shards still read
    first = header["shards"][0]
    FrameCache(out).read_rows(np.arange(first["num_frames"]))


def test_truncated_or_missing_shard_is_caught_at_open(raw_cache, tmp_path):
    out = _copy(raw_cache[0], tmp_path / "c")
    shard = out / "shard-00001.bin"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(CacheError, match=r"shard-00001\.bin.*truncated.*rebuild.*cache stage"):
        FrameCache(out)
    shard.unlink()
    with pytest.raises(CacheError, match=r"shard-00001\.bin is missing"):
        FrameCache(out)


def test_bad_header_and_jpeg_corruption(data, raw_cache, tmp_path):
    out = _copy(raw_cache[0], tmp_path / "c")
    header = json.loads((out / "header.json").read_text())
    header["format_version"] = 99
    (out / "header.json").write_text(json.dumps(header))
    with pytest.raises(CacheError, match="format_version 99"):
        FrameCache(out)
    with pytest.raises(CacheError, match="not a frame cache"):
        FrameCache(tmp_path)
    # a corrupt JPEG frame is one CacheError at read time too
    root, frames, _ = data
    build_frame_cache(frames, root, tmp_path / "j", H, W, format="jpeg", progress=False)
    jshard = tmp_path / "j" / "shard-00000.bin"
    b = bytearray(jshard.read_bytes())
    b[2:600] = bytes(598)  # wipe the first frame's headers
    jshard.write_bytes(bytes(b))
    with pytest.raises(CacheError, match="shard-00000.bin"):
        FrameCache(tmp_path / "j").read_rows([0])


def test_failed_build_leaves_no_output(data, raw_cache, tmp_path):
    root, frames, _ = data
    broken = frames.copy()
    broken.loc[len(frames) - 3, "path"] = "bbox/missing.jpg"
    out = tmp_path / "cache"
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        build_frame_cache(broken, root, out, H, W, format="raw", progress=False)
    assert not out.exists()
    assert os.listdir(tmp_path) == []  # no temporary directory left behind either
    # an existing cache survives a failed rebuild untouched
    out = _copy(raw_cache[0], tmp_path / "old")
    with pytest.raises(FileNotFoundError):
        build_frame_cache(broken, root, out, H, W, format="jpeg", progress=False)
    assert FrameCache(out).verify()["shards"] == raw_cache[1]["shards"]
    # an unsorted frames table is refused before any work
    with pytest.raises(ValueError, match="frame_idx"):
        build_frame_cache(frames.iloc[::-1].reset_index(drop=True).assign(tracklet_id=0), root,
                          tmp_path / "x", H, W, progress=False)


def test_train_clips_reproducible_for_any_worker_count(data, raw_cache):
    _, _, tracklets = data
    cache = FrameCache(raw_cache[0])
    ds = TrainClips(tracklets, cache, seq_len=8, seed=5)
    sampler = IdentitySampler(ds.labels, num_instances=2, batch_size=4, seed=5)
    runs = []
    for workers in (0, 2):
        loader = DataLoader(ds, batch_size=sampler.batch_size, sampler=sampler, num_workers=workers)
        sampler.set_epoch(3)
        runs.append(list(loader))
    assert len(runs[0]) == len(runs[1]) == 2
    for (c0, l0, k0), (c1, l1, k1) in zip(*runs):
        assert c0.shape == (4, 8, 3, H, W) and c0.dtype == torch.float32
        assert torch.equal(c0, c1) and torch.equal(l0, l1) and torch.equal(k0, k1)
        assert len(set(l0.tolist())) == 2
    # another epoch or another draw of the same tracklet gives another clip
    assert not torch.equal(ds[(6, 0, 0)][0], ds[(6, 1, 0)][0])
    assert not np.array_equal(ds.frame_indices((7, 0, 0)), ds.frame_indices((7, 0, 1)))
    assert torch.equal(ds[(6, 0, 0)][0], ds[(6, 0, 0)][0])
    # a plain index works too (epoch from set_epoch, draw 0)
    ds.set_epoch(1)
    assert torch.equal(ds[6][0], ds[(6, 1, 0)][0])


def test_test_clips_and_chunks(data, raw_cache):
    _, _, tracklets = data
    cache = FrameCache(raw_cache[0])
    ds = TestClips(tracklets, cache, seq_len=8)
    clip, pid, camid, tid = ds[2]
    assert clip.shape == (8, 3, H, W) and (pid, camid, tid) == (11, 0, 2)
    assert torch.equal(clip, ds.transform(cache.read(2, begin_interval_indices(20, 8))))

    dense = TestChunks(tracklets, cache, seq_len=8, mode="dense", clips_per_chunk=2)
    got: dict[int, list] = {}
    for clips, t in DataLoader(dense, batch_size=None, num_workers=2):
        assert clips.ndim == 5 and clips.shape[1:] == (8, 3, H, W) and clips.shape[0] <= 2
        got.setdefault(t, []).append(clips)
    assert len(dense) == sum(len(v) for v in got.values())
    assert sorted(got) == list(range(len(LENGTHS)))
    for t, n in enumerate(LENGTHS):
        expect = np.concatenate(list(dense_clips(n, 8)))
        have = torch.cat(got[t])
        assert len(have) == len(expect)
        for c, idx in zip(have, expect):
            assert torch.equal(c, ds.transform(cache.read(t, idx)))

    allf = TestChunks(tracklets, cache, mode="all", frames_per_chunk=8)
    seen = {}
    for clips, t in allf:
        assert clips.shape[0] == 1 and 1 <= clips.shape[1] <= 8
        seen[t] = seen.get(t, 0) + clips.shape[1]
    assert seen == dict(enumerate(LENGTHS))


def test_datasets_refuse_a_cache_from_another_index(data, raw_cache):
    _, _, tracklets = data
    cache = FrameCache(raw_cache[0])
    other = tracklets.copy()
    other.loc[3, "n_frames"] += 1
    with pytest.raises(CacheError, match="does not match the index"):
        TrainClips(other, cache)


def test_a_fresh_psta_embeds_zeros_until_its_batchnorm_statistics_are_estimated(data, raw_cache):
    """The evaluate stage's untrained baseline: with BatchNorm's initial statistics (0 / 1) the
    relation attention saturates and every embedding is 0; calibrate_batchnorm fixes only that."""
    from psta.engine.inference import calibrate_batchnorm
    from psta.model import build_model

    _, _, tracklets = data
    cache = FrameCache(raw_cache[0])
    torch.manual_seed(0)
    model = build_model("psta", 4, seq_len=4, height=H, width=W, backbone="resnet18").eval()
    clips = torch.stack([TestClips(tracklets, cache, seq_len=4)[i][0] for i in range(len(tracklets))])
    with torch.no_grad():
        zero_rows = (model(clips) == 0).all(dim=1)
    assert zero_rows.float().mean() >= 0.5, zero_rows  # (the demo: all of them, so every distance tied)

    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    calibrate_batchnorm(model, tracklets, cache, seq_len=4, batch_size=4, seed=0)
    assert not model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())  # no weight moved
    with torch.no_grad():
        feats = torch.nn.functional.normalize(model(clips), dim=1)
    cos = feats @ feats.T
    assert feats.norm(dim=1).min() > 0.99 and cos[~torch.eye(len(cos), dtype=torch.bool)].max() < 0.9999
