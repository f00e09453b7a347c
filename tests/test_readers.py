"""MARS and DukeMTMC-VideoReID readers, frame validation, and the errors for bad input.

Bad-input tests run the ingest and index stages the way the pipeline does
(``psta.index.ingest`` -> manifest -> ``psta.index.index_from_manifest``) and check that a
failure leaves no output behind.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from psta.data import read_duke, read_mars
from psta.data.frame_check import check_frames, check_jpeg_bytes
from psta.data.mars_layout import savemat_deterministic
from psta.data.synthetic import SyntheticConfig, generate_duke, generate_mars
from psta.errors import DatasetError
from psta.index import build_index, index_from_manifest, ingest, read_index

CFG = SyntheticConfig(seed=7, num_train_ids=8, num_test_ids=8, min_len=3, max_len=10,
                      num_distractor_tracklets=4, num_junk_tracklets=3, num_distractor_ids=3)


@pytest.fixture(scope="module")
def mars_src(tmp_path_factory):
    root = tmp_path_factory.mktemp("src") / "MARS"
    return root, generate_mars(root, CFG)


@pytest.fixture(scope="module")
def duke_src(tmp_path_factory):
    root = tmp_path_factory.mktemp("src") / "Duke"
    return root, generate_duke(root, CFG)


@pytest.fixture
def mars_copy(mars_src, tmp_path):
    root = tmp_path / "MARS"
    shutil.copytree(mars_src[0], root)
    return root


@pytest.fixture
def duke_copy(duke_src, tmp_path):
    root = tmp_path / "Duke"
    shutil.copytree(duke_src[0], root)
    return root


def run_stages(dataset: str, root: Path, out: Path, on_bad_frame: str = "error", **options):
    """What the pipeline's ingest and index stages do (``options``: the reader's, e.g. split)."""
    manifest = out / "ingest" / "manifest.parquet"
    summary = ingest(dataset, root, manifest, on_bad_frame, **options)
    index_from_manifest(manifest, out / "index")
    return summary, read_index(out / "index")


def assert_fails_cleanly(dataset: str, root: Path, out: Path, *patterns: str, on_bad_frame="error", **options):
    with pytest.raises(DatasetError) as err:
        run_stages(dataset, root, out, on_bad_frame, **options)
    msg = str(err.value)
    for p in patterns:
        assert re.search(p, msg), f"{p!r} not in: {msg}"
    leftovers = [p for p in out.rglob("*")] if out.exists() else []
    assert not [p for p in leftovers if p.is_file()], leftovers
    assert not (out / "index").exists() and not (out / "ingest" / "manifest.parquet").exists()
    return msg


# ------------------------------------------------------------------------------------------
# synthetic MARS through the real reader
# ------------------------------------------------------------------------------------------
def test_mars_index_matches_planted(mars_src, tmp_path):
    root, planted = mars_src
    summary, index = run_stages("mars", root, tmp_path / "out")
    st = index.stats
    assert st["splits"] == planted["splits"]
    assert st["junk_tracklets_dropped"] == planted["junk_tracklets"] == 3
    assert st["junk_frames_dropped"] == planted["junk_frames"]
    assert st["distractor_tracklets"] == planted["distractor_tracklets"] == 4
    assert st["skipped_bad_frames"] == 0 and summary["bad_frames"] == 0
    t = index.tracklets
    # train, then query, then gallery; labels 0..K-1 in pid order; no junk
    order = t.split.map({"train": 0, "query": 1, "gallery": 2}).to_numpy()
    assert (np.diff(order) >= 0).all() and (t.pid != -1).all()
    tr = t[t.split == "train"]
    assert sorted(set(tr.label)) == list(range(planted["splits"]["train"]["identities"]))
    assert (tr.sort_values("pid").label.diff().dropna() >= 0).all()
    assert (t[t.split != "train"].label == -1).all()
    assert set(t[t.pid == 0].split) == {"gallery"}
    assert index.root == root
    # every query has a same-identity gallery tracklet in another camera (MARS protocol)
    gal = t[t.split == "gallery"]
    for _, q in t[t.split == "query"].iterrows():
        assert ((gal.pid == q.pid) & (gal.camid != q.camid)).any(), q["name"]
        assert q.pid > 0
    # frames: existing files, temporal order, name = first frame's prefix, camera from the name
    for tid in range(0, len(t), 7):
        row = t.iloc[tid]
        paths = index.frame_paths(tid)
        assert len(paths) == row.n_frames
        assert all((root / p).is_file() for p in paths)
        assert [int(p[-7:-4]) for p in paths] == list(range(1, len(paths) + 1))
        base = Path(paths[0]).name
        assert base.startswith(row["name"]) and int(base[5]) - 1 == row.camid
        assert paths[0].startswith("bbox_train/" if row.split == "train" else "bbox_test/")


def test_mars_mat_int32_and_float64_read_alike(mars_copy):
    before = read_mars(mars_copy)
    info = mars_copy / "info"
    for fname, var in (("tracks_train_info.mat", "track_train_info"),
                       ("tracks_test_info.mat", "track_test_info"), ("query_IDX.mat", "query_IDX")):
        arr = scipy.io.loadmat(info / fname)[var]
        assert arr.dtype == np.float64
        scipy.io.savemat(info / fname, {var: arr.astype(np.int32)})
        assert scipy.io.loadmat(info / fname)[var].dtype == np.int32
    after = read_mars(mars_copy)
    assert after.tracklets.equals(before.tracklets)
    assert after.paths.equals(before.paths)


# ------------------------------------------------------------------------------------------
# synthetic Duke through the real reader
# ------------------------------------------------------------------------------------------
def test_duke_index_matches_planted(duke_src, tmp_path):
    root, planted = duke_src
    _, index = run_stages("duke", root, tmp_path / "out")
    st = index.stats
    assert st["splits"] == planted["splits"]
    assert st["junk_tracklets_dropped"] == 0
    assert st["distractor_identities"] == planted["distractor_identities"] == 3
    assert st["distractor_tracklets"] == planted["distractor_tracklets"]
    t = index.tracklets
    q, g = t[t.split == "query"], t[t.split == "gallery"]
    assert set(q.pid) <= set(g.pid)
    gal = {n: r for n, r in zip(g.name, g.itertuples())}
    for r in q.itertuples():   # the gallery holds each query tracklet itself
        twin = gal[r.name.replace("query/", "gallery/", 1)]
        assert (twin.pid, twin.camid, twin.n_frames) == (r.pid, r.camid, r.n_frames)


def test_duke_name_styles_and_f0002(duke_src):
    root, _ = duke_src
    raw = read_duke(root)
    styles, f0002 = set(), 0
    for i, row in enumerate(raw.tracklets.itertuples()):
        paths = raw.frame_paths(i)
        folder = root / row.name
        assert sorted(p.name for p in folder.iterdir()) == sorted(Path(p).name for p in paths)
        names = [Path(p).name for p in paths]
        m = [re.fullmatch(r"(\d{4})_?C(\d)_?F(\d{4})_?X(\d+)\.jpg", n) for n in names]
        fnum = [int(x.group(3)) for x in m]
        assert fnum == list(range(fnum[0], fnum[0] + len(fnum)))     # temporal order, no gap
        cam_char = names[0][6] if "_" in names[0] else names[0][5]   # DATASETS.md positions
        assert row.camid == int(cam_char) - 1
        assert row.pid == int(names[0][:4])
        styles.add("_" in names[0])
        f0002 += fnum[0] == 2
    assert styles == {True, False} and f0002 >= 1


# ------------------------------------------------------------------------------------------
# bad input: one clear DatasetError, nothing written
# ------------------------------------------------------------------------------------------
def test_missing_root(tmp_path):
    assert_fails_cleanly("mars", tmp_path / "nope", tmp_path / "out", r"MARS root .*nope does not exist",
                         r"data\.root")
    assert_fails_cleanly("duke", tmp_path / "nope", tmp_path / "out2", r"DukeMTMC-VideoReID root .*nope")


@pytest.mark.parametrize("fname", ["test_name.txt", "query_IDX.mat"])
def test_missing_info_file(mars_copy, tmp_path, fname):
    (mars_copy / "info" / fname).unlink()
    assert_fails_cleanly("mars", mars_copy, tmp_path / "out", rf"info/{re.escape(fname)} is missing")


def test_mat_without_variable(mars_copy, tmp_path):
    path = mars_copy / "info" / "tracks_test_info.mat"
    arr = scipy.io.loadmat(path)["track_test_info"]
    savemat_deterministic(path, {"tracks": arr})
    assert_fails_cleanly("mars", mars_copy, tmp_path / "out",
                         r"info/tracks_test_info\.mat has no variable 'track_test_info'", r"\['tracks'\]")


def test_row_range_outside_names(mars_copy, tmp_path):
    path = mars_copy / "info" / "tracks_train_info.mat"
    arr = scipy.io.loadmat(path)["track_train_info"]
    n_lines = len((mars_copy / "info" / "train_name.txt").read_text().splitlines())
    arr[4, 1] = n_lines + 3
    savemat_deterministic(path, {"track_train_info": arr})
    assert_fails_cleanly("mars", mars_copy, tmp_path / "out",
                         r"row 5 of info/tracks_train_info\.mat", rf"has lines 1\.\.{n_lines}")


@pytest.mark.parametrize("what", ["identity", "camera"])
def test_tracklet_mixing_identities_or_cameras(mars_copy, tmp_path, what):
    info = mars_copy / "info"
    tracks = scipy.io.loadmat(info / "tracks_test_info.mat")["track_test_info"].astype(int)
    r = int(np.flatnonzero((tracks[:, 2] > 0) & (tracks[:, 1] - tracks[:, 0] >= 2))[0])
    lines = (info / "test_name.txt").read_text().splitlines()
    line = tracks[r, 0]                     # second frame of the row (0-based index = start)
    orig = lines[line]
    if what == "identity":
        other = f"{(int(orig[:4]) % 9000) + 1:04d}"
        lines[line] = other + orig[4:]
    else:
        lines[line] = orig[:5] + str(int(orig[5]) % 6 + 1) + orig[6:]
    (info / "test_name.txt").write_text("\n".join(lines) + "\n")
    assert_fails_cleanly("mars", mars_copy, tmp_path / "out",
                         rf"row {r + 1} of info/tracks_test_info\.mat", "mixes identities or cameras",
                         re.escape(lines[line]), rf"line {line + 1}\b")


def _test_tracks(info):
    return scipy.io.loadmat(info / "tracks_train_info.mat")["track_train_info"].astype(np.int64)


def test_a_row_spanning_two_tracklet_numbers_is_refused(mars_copy, tmp_path):
    info = mars_copy / "info"
    tracks = _test_tracks(info)
    same = (tracks[1:, 2] == tracks[:-1, 2]) & (tracks[1:, 3] == tracks[:-1, 3]) & (tracks[1:, 0] == tracks[:-1, 1] + 1)
    r = int(np.flatnonzero(same)[0])  # rows r, r+1: T0001 and T0002 of one person and camera
    merged = np.delete(tracks, r + 1, axis=0)
    merged[r, 1] = tracks[r + 1, 1]
    savemat_deterministic(info / "tracks_train_info.mat", {"track_train_info": merged})
    lines = (info / "train_name.txt").read_text().splitlines()
    assert_fails_cleanly("mars", mars_copy, tmp_path / "out",
                         rf"row {r + 1} of info/tracks_train_info\.mat \(lines {tracks[r, 0]}\.\.{tracks[r + 1, 1]}",
                         "spans two tracklets", re.escape(lines[tracks[r + 1, 0] - 1]))


def test_overlapping_rows_are_refused(mars_copy, tmp_path):
    info = mars_copy / "info"
    tracks = _test_tracks(info)
    tracks[3, 1] += 2  # row 4 now also holds the first two frames of row 5
    savemat_deterministic(info / "tracks_train_info.mat", {"track_train_info": tracks})
    assert_fails_cleanly("mars", mars_copy, tmp_path / "out",
                         r"rows 4 and 5 of info/tracks_train_info\.mat \(1-based\) overlap",
                         rf"lines {tracks[3, 0]}\.\.{tracks[3, 1]} and {tracks[4, 0]}\.\.{tracks[4, 1]}",
                         "one frame in two tracklets")


def test_mars_empty_split(mars_copy, tmp_path):
    savemat_deterministic(mars_copy / "info" / "query_IDX.mat", {"query_IDX": np.zeros((1, 0))})
    assert_fails_cleanly("mars", mars_copy, tmp_path / "out", r"split 'query' is empty", "query_IDX")


def test_duke_unparsable_frame_name(duke_copy, tmp_path):
    frame = sorted((duke_copy / "gallery").rglob("*.jpg"))[5]
    bad = frame.with_name("frame_0005.jpg")
    frame.rename(bad)
    rel = bad.relative_to(duke_copy).as_posix()
    assert_fails_cleanly("duke", duke_copy, tmp_path / "out", rf"frame {re.escape(rel)} has an unparsable name")


def test_duke_tracklet_mixing_cameras(duke_copy, tmp_path):
    tdir = sorted((duke_copy / "train").glob("*/*"))[2]
    frame = sorted(tdir.iterdir())[1]
    name = frame.name
    cam_pos = 6 if "_" in name else 5
    moved = name[:cam_pos] + str(int(name[cam_pos]) % 8 + 1) + name[cam_pos + 1:]
    frame.rename(tdir / moved)
    assert_fails_cleanly("duke", duke_copy, tmp_path / "out",
                         rf"tracklet {re.escape(tdir.relative_to(duke_copy).as_posix())} mixes", re.escape(moved))


def test_duke_empty_split(duke_copy, tmp_path):
    for d in (duke_copy / "query").iterdir():
        shutil.rmtree(d)
    assert_fails_cleanly("duke", duke_copy, tmp_path / "out", r"split 'query' is empty")


def test_bad_frame_error_mode_names_file_and_fix(mars_copy, tmp_path):
    raw = read_mars(mars_copy)
    victim = raw.frame_paths(3)[1]
    data = (mars_copy / victim).read_bytes()
    (mars_copy / victim).write_bytes(data[: len(data) // 2])         # truncated: no EOI
    assert_fails_cleanly("mars", mars_copy, tmp_path / "out", re.escape(victim), "truncated JPEG",
                         r"data\.on_bad_frame: skip")


def test_bad_frames_skip_mode_drops_and_counts(mars_copy, tmp_path):
    raw = read_mars(mars_copy)
    t = raw.tracklets
    train = t.index[t.split == "train"]
    truncated, empty = raw.frame_paths(train[0])[0], raw.frame_paths(train[1])[-1]
    missing = raw.frame_paths(train[2])[1]
    whole = raw.frame_paths(train[3])                                   # every frame bad -> tracklet dropped
    (mars_copy / truncated).write_bytes((mars_copy / truncated).read_bytes()[:100])
    (mars_copy / empty).write_bytes(b"")
    (mars_copy / missing).unlink()
    for p in whole:
        (mars_copy / p).write_bytes(b"not a jpeg at all")
    summary, index = run_stages("mars", mars_copy, tmp_path / "out", on_bad_frame="skip")
    n_bad = 3 + len(whole)
    assert summary["bad_frames"] == n_bad
    st = index.stats
    assert st["skipped_bad_frames"] == n_bad and st["dropped_empty_tracklets"] == 1
    full = build_index(raw)
    assert st["splits"]["train"]["tracklets"] == full.stats["splits"]["train"]["tracklets"] - 1
    assert st["splits"]["train"]["frames"] == full.stats["splits"]["train"]["frames"] - n_bad
    paths = set(index.frames.path)
    assert not ({truncated, empty, missing} | set(whole)) & paths
    assert t["name"].iat[train[3]] not in set(index.tracklets.name)
    # frame_idx renumbered 0..n-1 after dropping
    tid = int(index.tracklets.index[index.tracklets.name == t["name"].iat[train[2]]][0])
    rows = index.frames.iloc[index.tracklets.frame_offset[tid]:][: index.tracklets.n_frames[tid]]
    assert rows.frame_idx.tolist() == list(range(t["n_frames"].iat[train[2]] - 1))
    reasons = {why.split(" (")[0] for why in summary["bad_examples"]}
    assert any("truncated" in r for r in reasons) and any("missing" in r for r in reasons)


def test_check_frames_reasons(tmp_path, mars_src):
    root, _ = mars_src
    good = next((root / "bbox_train").rglob("*.jpg")).read_bytes()
    assert check_jpeg_bytes(good) is None
    assert check_jpeg_bytes(b"") == "empty file (0 bytes)"
    assert "no SOI" in check_jpeg_bytes(b"GIF89a" + good[6:])
    assert "truncated" in check_jpeg_bytes(good[:-40])
    (tmp_path / "a.jpg").write_bytes(good)
    (tmp_path / "b.jpg").write_bytes(good[:200] + b"\xff\xd9")       # header fine, scan cut short
    ok, bad, _ = check_frames(tmp_path, ["a.jpg", "b.jpg", "c.jpg"], "skip")
    assert ok.tolist() == [True, False, False]
    assert bad[0][0] == "b.jpg" and "decode" in bad[0][1] and bad[1] == ("c.jpg", "missing file")
    ok = check_frames(tmp_path, ["a.jpg", "b.jpg"], "skip", decode=False).ok
    assert ok.tolist() == [True, True]                                # header-only check passes b
    with pytest.raises(ValueError, match="on_bad_frame"):
        check_frames(tmp_path, ["a.jpg"], "ignore")


def _gradient_jpeg(height=256, width=128) -> bytes:
    import io

    from PIL import Image

    pixels = np.broadcast_to(np.linspace(0, 255, width, dtype=np.uint8)[None, :, None], (height, width, 3))
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_damaged_scan_data_that_decodes_to_grey_is_a_bad_frame(tmp_path):
    from PIL import Image

    good = _gradient_jpeg()
    sos = good.index(b"\xff\xda")
    cut = good[:sos + 400] + b"\xff\xd9"  # the scan ends early: libjpeg fills grey, only warns
    with Image.open(__import__("io").BytesIO(cut)) as im:
        im.load()  # PIL decodes it without a word: that is the fault
    (tmp_path / "good.jpg").write_bytes(good)
    (tmp_path / "cut.jpg").write_bytes(cut)
    with pytest.raises(DatasetError, match=r"bad frame cut\.jpg .*does not decode cleanly \(libjpeg: "
                                           r"Corrupt JPEG data: premature end of data segment\).*on_bad_frame: skip"):
        check_frames(tmp_path, ["good.jpg", "cut.jpg"], "error")
    ok, bad, _ = check_frames(tmp_path, ["good.jpg", "cut.jpg"], "skip")
    assert ok.tolist() == [True, False] and bad[0][0] == "cut.jpg"


def test_frames_of_another_size_are_counted_or_refused(tmp_path):
    (tmp_path / "a.jpg").write_bytes(_gradient_jpeg())
    (tmp_path / "b.jpg").write_bytes(_gradient_jpeg(200, 100))
    result = check_frames(tmp_path, ["a.jpg", "b.jpg"], "error", frame_size=(256, 128))
    assert result.ok.all() and result.off_size == [("b.jpg", "100 x 200")]
    with pytest.raises(DatasetError, match=r"bad frame b\.jpg .*it is 100 x 200 pixels, not 128 x 256 .*"
                                           r"data\.strict_frame_size: true"):
        check_frames(tmp_path, ["a.jpg", "b.jpg"], "error", frame_size=(256, 128), strict_size=True)
    skipped = check_frames(tmp_path, ["a.jpg", "b.jpg"], "skip", frame_size=(256, 128), strict_size=True)
    assert skipped.ok.tolist() == [True, False] and skipped.off_size == []


def test_mars_name_lists_with_crlf_and_blank_tail_read_alike(mars_copy):
    before = read_mars(mars_copy)
    for split in ("train", "test"):
        p = mars_copy / "info" / f"{split}_name.txt"
        p.write_bytes(p.read_bytes().replace(b"\n", b"\r\n") + b"\r\n  \r\n")   # Windows copy + blank lines
    after = read_mars(mars_copy)
    assert after.tracklets.equals(before.tracklets) and after.paths.equals(before.paths)
