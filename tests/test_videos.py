"""Bring-your-own-cameras ingestion: camera videos + MOTChallenge boxes -> a MARS tree.

The videos are written here with PyAV (64 frames, 160 x 120): every identity is a coloured
rectangle moving across a grey background whose level encodes the frame number, and the box
files hold the drawn rectangles (some partly or wholly outside the frame). A "probe" identity's
box covers only background, so its crops tell which video frame they came from.
"""
from __future__ import annotations

import hashlib
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

av = pytest.importorskip("av")

from psta.data import read_mars  # noqa: E402
from psta.data.videos import VideoIngestConfig, batch_bounds, build_mars_from_videos, clip_boxes  # noqa: E402
from psta.errors import DatasetError  # noqa: E402
from psta.index import build_index  # noqa: E402

W, H, N_FRAMES = 160, 120, 64
COLOURS = {1: (220, 30, 30), 2: (30, 200, 30), 3: (30, 30, 220), 4: (220, 220, 30),
           6: (220, 30, 220), 7: (30, 220, 220)}
PROBE = 9
PROBE_BOX = (60, 2, 40, 20)          # left, top, width, height: background only
BAND1, BAND2 = 30, 75                # figure tops; figures are 40 high
CFG = VideoIngestConfig(height=64, width=32, frame_stride=2, min_tracklet_len=4, max_tracklet_len=10,
                        test_fraction=0.5, seed=0, decode_batch=9)


def grey(f0: int) -> int:
    """Background level of 0-based frame f0."""
    return 20 + 3 * f0


# camera file -> [(track id, first frame, last frame (1-based, inclusive), box(f0) -> (x, y, w))]
SCENE = {
    "cam_a.mp4": [
        (1, 1, 64, lambda f: (2 + f, BAND1, 20)),
        (2, 1, 40, lambda f: (120 - f, BAND1, 16)),
        (3, 10, 64, lambda f: (-12 + (f - 9), BAND2, 16)),      # starts 12 px left of the frame
        (4, 1, 3, lambda f: (100, BAND2, 20)),                   # 2 sampled frames: too short
    ],
    "cam_b.avi": [
        (1, 5, 60, lambda f: (100 - (f - 4), BAND2, 20)),
        (2, 1, 64, lambda f: (10 + f // 2, BAND1, 16)),
        (4, 1, 50, lambda f: (140 - f // 2, BAND1, 20)),
        (6, 20, 25, lambda f: (20, BAND2, 16)),                  # 3 sampled frames: too short
    ],
    "cam_c.mkv": [
        (3, 1, 64, lambda f: (150 - f, BAND1, 16)),              # starts 6 px past the right edge
        (4, 1, 64, lambda f: (5 + f, BAND2, 20)),
        (6, 1, 30, lambda f: (120 + f // 3, BAND2, 16)),
        (7, 30, 64, lambda f: (10 + (f - 29), BAND1, 16)),
    ],
}
PROBE_CAMS = ("cam_a.mp4", "cam_b.avi")
OUTSIDE = {"cam_a.mp4": (2, range(41, 47))}   # track 2 walks out: boxes wholly right of the frame


def write_video(path: Path, frames, gop: int | None = None, codec: str | None = None) -> None:
    codec = codec or ("libx264" if "libx264" in av.codecs_available else "mpeg4")
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=25)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        if gop:
            s.codec_context.gop_size = gop
        if codec == "libx264":
            s.options = {"crf": "10", "preset": "ultrafast"}
        else:
            s.bit_rate = 4_000_000
        for img in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def make_source(root: Path) -> Path:
    root.mkdir(parents=True)
    for cam, tracks in SCENE.items():
        rows, frames = [], []
        for f0 in range(N_FRAMES):
            img = np.full((H, W, 3), grey(f0), np.uint8)
            for tid, a, b, box in tracks:
                if a <= f0 + 1 <= b:
                    x, y, w = box(f0)
                    img[y:y + 40, max(x, 0):max(x + w, 0)] = COLOURS[tid]
                    rows.append((f0 + 1, tid, x, y, w, 40))
            if cam in PROBE_CAMS:
                rows.append((f0 + 1, PROBE) + PROBE_BOX)
            frames.append(img)
        if cam in OUTSIDE:
            tid, fr = OUTSIDE[cam]
            rows += [(f, tid, 165, BAND1, 16, 40) for f in fr]
        # cam_b: MPEG-4 part 2 in AVI, a keyframe every 16 frames (decode batches end at
        # keyframes); the others H.264 with one GOP longer than a decode batch (each batch
        # restarts from the keyframe)
        if cam == "cam_b.avi":
            write_video(root / cam, frames, gop=16, codec="mpeg4")
        else:
            write_video(root / cam, frames)
        rng = np.random.default_rng(len(rows))
        lines = [f"{f},{t},{x},{y},{w},{h},1,-1,-1,-1" for f, t, x, y, w, h in rows]
        lines = [lines[i] for i in rng.permutation(len(lines))]    # box files need not be sorted
        (root / cam).with_suffix(".txt").write_text("\n".join(lines) + "\n")
    return root


def expected_tracks(stride: int, min_len: int) -> dict[tuple[int, int], list[int]]:
    """(pid, camera 1..3) -> the sampled 0-based frames of each kept track (scene order)."""
    out = {}
    for ci, (cam, tracks) in enumerate(sorted(SCENE.items()), 1):
        spec = list(tracks) + ([(PROBE, 1, N_FRAMES, None)] if cam in PROBE_CAMS else [])
        for tid, a, b, _ in spec:
            frames = list(range(a - 1, b))[::stride]
            if len(frames) >= min_len:
                out[(tid, ci)] = frames
    return out


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return make_source(tmp_path_factory.mktemp("cams") / "src")


@pytest.fixture(scope="module")
def built(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "MARS"
    stats = build_mars_from_videos(source, out, CFG)
    return out, stats


def read_tracklets(out: Path) -> dict[tuple[int, int, int], list[Path]]:
    """(pid, camera, tracklet number) -> frame files in frame order, from the written names."""
    res: dict = {}
    for folder in ("bbox_train", "bbox_test"):
        for p in sorted((out / folder).glob("*/*.jpg")):
            n = p.name
            res.setdefault((int(n[:4]), int(n[5]), int(n[7:11])), []).append(p)
    return res


def no_output_left(out: Path) -> bool:
    return not out.exists() and not list(out.parent.glob(f".{out.name}.*"))


# --------------------------------------------------------------------------------------------
def test_tracklet_counts_and_stats(built):
    out, stats = built
    exp = expected_tracks(CFG.frame_stride, CFG.min_tracklet_len)
    got = read_tracklets(out)
    for (pid, cam), frames in exp.items():
        pieces = sorted(k for k in got if k[:2] == (pid, cam))
        assert len(pieces) == math.ceil(len(frames) / CFG.max_tracklet_len), (pid, cam)
        lens = [len(got[k]) for k in pieces]
        assert max(lens) <= CFG.max_tracklet_len and max(lens) - min(lens) <= 1
        assert sum(lens) == len(frames)          # track 2's outside boxes are dropped before sampling
    assert {k[:2] for k in got} == set(exp)
    assert stats["tracks"]["dropped_short"] == 2            # track 4 in cam_a, track 6 in cam_b
    assert stats["tracks"]["kept"] == len(exp)
    b = stats["boxes"]
    assert b["outside_frame"] == 6
    assert b["clipped"] == 12 + 6                           # track 3 in cam_a (left), in cam_c (right)
    assert b["read"] == b["ignored_zero_conf"] + b["unlabelled"] + b["outside_frame"] + b["not_sampled"] \
        + b["in_short_tracks"] + b["written"]
    assert b["written"] == sum(len(v) for v in got.values()) == stats["frames"]
    assert stats["tracklets"] == len(got)
    assert [c["video_frames"] for c in stats["cameras"]] == [N_FRAMES] * 3
    assert [c["name"] for c in stats["cameras"]] == ["cam_a", "cam_b", "cam_c"]
    s = stats["splits"]
    assert s["train"]["tracklets"] + s["query"]["tracklets"] + s["gallery"]["tracklets"] == len(got)
    assert stats["identities"]["kept"] == 7 and stats["identities"]["dropped"] == 0


def test_crops_size_and_content(built):
    out, _ = built
    got = read_tracklets(out)
    palette = np.array(list(COLOURS.values()), np.float64)
    keys = list(COLOURS)
    for (pid, _cam, _tnum), files in got.items():
        for p in files:
            img = np.asarray(Image.open(p).convert("RGB"), np.float64)
            assert img.shape == (CFG.height, CFG.width, 3), p
            centre = img[16:48, 8:24].reshape(-1, 3).mean(0)
            if pid == PROBE:
                continue
            assert np.abs(centre - COLOURS[pid]).max() < 30, (p.name, centre)
            assert keys[int(np.argmin(((palette - centre) ** 2).sum(1)))] == pid


def test_crops_come_from_the_named_frames(built):
    """Concatenating a track's tracklets in T order gives its sampled frames, exactly."""
    out, _ = built
    got = read_tracklets(out)
    exp = expected_tracks(CFG.frame_stride, CFG.min_tracklet_len)
    for cam in (1, 2):
        files = [p for k in sorted(k for k in got if k[:2] == (PROBE, cam)) for p in got[k]]
        levels = [np.asarray(Image.open(p).convert("L"), np.float64).mean() for p in files]
        want = [grey(f) for f in exp[(PROBE, cam)]]
        assert len(levels) == len(want)
        assert np.abs(np.array(levels) - want).max() < 1.5      # one frame is 3 levels apart


def test_split_rules_and_index(built):
    out, stats = built
    raw = read_mars(out)
    index = build_index(raw)
    t = index.tracklets
    train, query, gallery = (t[t.split == s] for s in ("train", "query", "gallery"))
    assert len(train) and len(query) and len(gallery)
    assert not set(train.pid) & set(query.pid) | set(gallery.pid) & set(train.pid)
    assert (t.pid > 0).all()
    for _, q in query.iterrows():
        match = gallery[(gallery.pid == q.pid) & (gallery.camid != q.camid)]
        assert len(match), f"query {q['name']} has no gallery match in another camera"
    # one query per camera at most, per identity
    assert not query.duplicated(["pid", "camid"]).any()
    # single-camera test identities (7, and 6 after its cam_b track was dropped) never give queries
    test_pids = set(gallery.pid)
    assert set(stats["identities"]["test_single_camera_pids"]) == test_pids & {6, 7}
    assert not set(query.pid) & {6, 7}
    assert stats["identities"]["train"] == train.pid.nunique() == stats["splits"]["train"]["identities"]
    assert stats["splits"]["query"]["tracklets"] == len(query)
    assert stats["splits"]["gallery"]["tracklets"] == len(gallery)
    frames = index.frames
    assert len(frames) == stats["frames"]
    assert all((out / p).is_file() for p in frames.path[:50])


def digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_deterministic_per_seed(built, source, tmp_path):
    out, stats = built
    again = build_mars_from_videos(source, tmp_path / "again", CFG)
    assert digest(tmp_path / "again") == digest(out)
    assert again == {**stats, "root": str(tmp_path / "again")}
    test_sets = set()
    for seed in (1, 2, 3):
        s = build_mars_from_videos(source, tmp_path / f"s{seed}", VideoIngestConfig(**{**CFG.to_dict(), "seed": seed}))
        raw = read_mars(tmp_path / f"s{seed}")
        t = raw.tracklets
        test_sets.add(frozenset(t.pid[t.split != "train"]))
        assert s["identities"]["test"] == stats["identities"]["test"]
    assert len(test_sets) > 1


def test_identities_csv(source, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    names = {1: "alice", 2: "bob", 3: "carol", 4: "dave", 6: "erin", 7: "frank"}
    csv = ["camera,track_id,identity"]
    for cam in SCENE:
        shutil.copy(source / cam, src / cam)
        off = 100 * (sorted(SCENE).index(cam) + 1)        # per-camera track ids: 101, 201, ...
        rows = []
        for line in (source / cam).with_suffix(".txt").read_text().splitlines():
            f = line.split(",")
            rows.append(",".join([f[0], str(int(f[1]) + off)] + f[2:]))
        (src / cam).with_suffix(".txt").write_text("\n".join(rows) + "\n")
        for tid in {int(r.split(",")[1]) - off for r in rows}:
            if tid in names:
                csv.append(f"{Path(cam).stem if off != 200 else cam},{tid + off},{names[tid]}")
    (src / "identities.csv").write_text("\n".join(csv) + "\n")     # the probe (9) is not listed
    out = tmp_path / "out"
    stats = build_mars_from_videos(src, out, CFG)
    assert stats["identity_source"] == "identities.csv"
    assert stats["pids"] == {n: i for i, n in enumerate(sorted(names.values()), 1)}
    assert stats["identities"]["renumbered"]
    assert stats["tracks"]["unlabelled"] == 2 and stats["boxes"]["unlabelled"] == 2 * N_FRAMES
    got = read_tracklets(out)
    assert {k[0] for k in got} == set(range(1, 7))
    pid = stats["pids"]
    palette = {pid[names[t]]: c for t, c in COLOURS.items()}
    for (p, _cam, _), files in got.items():
        centre = np.asarray(Image.open(files[0]).convert("RGB"), np.float64)[16:48, 8:24].reshape(-1, 3).mean(0)
        assert np.abs(centre - palette[p]).max() < 30
    build_index(read_mars(out))


# --------------------------------------------------------------------------------------------
# bad input: a DatasetError naming the file (and line), and no output left behind
# --------------------------------------------------------------------------------------------
def copy_source(source: Path, dst: Path) -> Path:
    shutil.copytree(source, dst)
    return dst


def fails(src: Path, out: Path, cfg=CFG) -> str:
    with pytest.raises(DatasetError) as err:
        build_mars_from_videos(src, out, cfg)
    assert no_output_left(out)
    return str(err.value)


def test_no_videos(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "cam.txt").write_text("1,1,0,0,5,5\n")
    msg = fails(tmp_path / "src", tmp_path / "out")
    assert "no videos" in msg and "src" in msg


def test_missing_box_file(source, tmp_path):
    src = copy_source(source, tmp_path / "src")
    (src / "cam_b.txt").unlink()
    msg = fails(src, tmp_path / "out")
    assert "cam_b.avi" in msg and "cam_b.txt" in msg


def test_unreadable_video(source, tmp_path):
    src = copy_source(source, tmp_path / "src")
    (src / "cam_d.mp4").write_bytes(b"this is not a video\n" * 10)
    (src / "cam_d.txt").write_text("1,1,0,0,5,5\n")
    msg = fails(src, tmp_path / "out")
    assert "cam_d.mp4" in msg and "cannot read video" in msg


@pytest.mark.skipif("libx264" not in av.codecs_available, reason="needs libx264")
def test_unseekable_video(source, tmp_path):
    """H.264 in AVI has no packet timestamps: decord's seeks would return wrong frames."""
    src = copy_source(source, tmp_path / "src")
    write_video(src / "cam_d.avi", [np.full((H, W, 3), grey(f), np.uint8) for f in range(20)], gop=8)
    (src / "cam_d.txt").write_text("1,1,0,0,5,5\n")
    msg = fails(src, tmp_path / "out")
    assert "cam_d.avi" in msg and "cannot seek" in msg and "ffmpeg -i cam_d.avi -c copy cam_d.mkv" in msg


def test_frame_past_end(source, tmp_path):
    src = copy_source(source, tmp_path / "src")
    box = src / "cam_c.txt"
    n = len(box.read_text().splitlines())
    box.write_text(box.read_text() + "70,3,10,10,16,40,1,-1,-1,-1\n")
    msg = fails(src, tmp_path / "out")
    assert "cam_c.txt" in msg and f"line {n + 1}" in msg and "frame 70" in msg and "64 frames" in msg


@pytest.mark.parametrize("row, why", [("5,1,abc,3,4,5", "not a number"), ("5,1,3,4", "4 fields"),
                                      ("0,1,3,4,5,6", "below 1"), ("2.5,1,3,4,5,6", "not an integer"),
                                      ("5,1,3,4,0,6", "not positive")])
def test_malformed_row(source, tmp_path, row, why):
    src = copy_source(source, tmp_path / "src")
    box = src / "cam_a.txt"
    lines = box.read_text().splitlines()
    lines.insert(3, row)
    box.write_text("\n".join(lines) + "\n")
    msg = fails(src, tmp_path / "out")
    assert "cam_a.txt" in msg and "line 4" in msg and why in msg


def test_duplicate_box(source, tmp_path):
    src = copy_source(source, tmp_path / "src")
    box = src / "cam_a.txt"
    first = box.read_text().splitlines()[0]
    box.write_text(box.read_text() + first + "\n")
    msg = fails(src, tmp_path / "out")
    assert "cam_a.txt" in msg and "two boxes" in msg


def test_identities_with_no_frames_left(source, tmp_path):
    cfg = VideoIngestConfig(**{**CFG.to_dict(), "min_tracklet_len": 26, "max_tracklet_len": 40})
    msg = fails(source, tmp_path / "out", cfg)
    # 6: 15 + 3 sampled frames, 7: 18 sampled frames; the others keep a track of >= 26
    assert "2 identities have no frames left" in msg and "'6'" in msg and "'7'" in msg
    assert "min_tracklet_len" in msg
    stats = build_mars_from_videos(source, tmp_path / "out",
                                   VideoIngestConfig(**{**cfg.to_dict(), "on_empty_identity": "drop"}))
    assert stats["identities"]["dropped_names"] == ["6", "7"]
    assert {k[0] for k in read_tracklets(tmp_path / "out")} == {1, 2, 3, 4, 9}


def test_too_many_cameras(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(10):
        (src / f"c{i}.mp4").write_bytes(b"x")
        (src / f"c{i}.txt").write_text("1,1,0,0,5,5\n")
    msg = fails(src, tmp_path / "out")
    assert "10 videos" in msg and "at most 9" in msg


def test_identities_csv_unknown_camera(source, tmp_path):
    src = copy_source(source, tmp_path / "src")
    (src / "identities.csv").write_text("camera,track_id,identity\ncam_a,1,x\ncam_z,1,x\n")
    msg = fails(src, tmp_path / "out")
    assert "identities.csv, line 3" in msg and "cam_z" in msg


def test_failure_keeps_previous_output(built, source, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(built[0], out)
    before = digest(out)
    src = copy_source(source, tmp_path / "src")
    (src / "cam_a.txt").write_text("1,1,0,0,5\n")
    with pytest.raises(DatasetError):
        build_mars_from_videos(src, out, CFG)
    assert digest(out) == before
    assert not list(tmp_path.glob(".out.*"))


def test_output_must_not_replace_source(source):
    with pytest.raises(DatasetError, match="would replace data.root"):
        build_mars_from_videos(source, source, CFG)
    assert (source / "cam_a.mp4").is_file()


def test_batch_bounds_end_at_keyframes():
    keys = range(0, 900, 50)
    assert batch_bounds(np.arange(150), keys, 97) == [(0, 50), (50, 100), (100, 150)]
    assert batch_bounds(np.arange(300), [0], 97) == [(0, 97), (97, 194), (194, 291), (291, 300)]
    assert batch_bounds(np.arange(0, 300, 12), keys, 10) == [(0, 9), (9, 17), (17, 25)]
    assert batch_bounds(np.array([5, 6, 7, 300, 301, 302]), keys, 4) == [(0, 3), (3, 6)]
    assert batch_bounds(np.array([], np.int64), keys, 4) == []


def test_clip_boxes_and_config():
    box, clipped, outside = clip_boxes([-5, 10, 150, 170], [0, 10, 100, 0], [10, 5.5, 20, 5], [10, 5, 30, 5], 160, 120)
    assert box.tolist() == [[0, 0, 5, 10], [10, 10, 16, 15], [150, 100, 160, 120], [160, 0, 160, 5]]
    assert clipped.tolist() == [True, False, True, False] and outside.tolist() == [False, False, False, True]
    with pytest.raises(ValueError, match="max_tracklet_len"):
        VideoIngestConfig(max_tracklet_len=1000)
    with pytest.raises(ValueError, match="unknown key"):
        VideoIngestConfig.from_dict({"stride": 2})
    assert VideoIngestConfig.from_dict({"frame_stride": 12}).frame_stride == 12
