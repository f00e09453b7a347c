"""The tracklet index: published MARS counts at full scale, schema, manifest, atomic writes."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from psta.data import read_mars
from psta.data.synthetic import MarsScale, write_mars_metadata
from psta.errors import DatasetError
from psta.index import (
    FRAMES_SCHEMA,
    MANIFEST_SCHEMA,
    TRACKLETS_SCHEMA,
    build_index,
    read_index,
    read_manifest,
    write_index,
    write_manifest,
)

TINY = MarsScale(train_ids=6, train_tracklets=20, train_frames=300, query_ids=5, gallery_only_ids=1,
                 queries=9, junk=3, distractors=4, test_tracklets=40, test_frames=500,
                 min_len=2, max_len=40)


@pytest.fixture(scope="module")
def full_mars(tmp_path_factory):
    """info/ of MARS at the published scale (names and .mat files only)."""
    root = tmp_path_factory.mktemp("full") / "MARS"
    planted = write_mars_metadata(root, seed=0)
    return root, planted, read_mars(root)


@pytest.fixture
def tiny(tmp_path):
    root = tmp_path / "MARS"
    write_mars_metadata(root, seed=1, scale=TINY)
    return read_mars(root)


def test_full_scale_mars_reproduces_published_counts(full_mars, tmp_path):
    root, planted, raw = full_mars
    index = build_index(raw)
    st = index.stats
    assert st["splits"]["train"] == {"tracklets": 8298, "identities": 625, "frames": 509914}
    assert st["splits"]["query"]["tracklets"] == 1980 and st["splits"]["query"]["identities"] == 626
    assert st["splits"]["gallery"]["tracklets"] == 9330
    assert st["junk_tracklets_dropped"] == 870
    assert st["distractor_tracklets"] == 3248
    assert st["num_classes"] == 625 and st["num_cameras"] == 6
    test_frames = st["splits"]["query"]["frames"] + st["splits"]["gallery"]["frames"] + st["junk_frames_dropped"]
    assert test_frames == 681089
    assert st["frames"] + st["junk_frames_dropped"] == 1191003
    assert st["tracklet_length"]["min"] == 2 and st["tracklet_length"]["max"] == 920
    assert st["splits"] == planted["splits"]
    # raw reader view: 12,180 test rows, query rows never junk or distractor
    t = raw.tracklets
    assert (t.split != "train").sum() == 12180 and (t.split == "query").sum() == 1980
    q = t[t.split == "query"]
    assert (q.pid > 0).all()
    # every query has a same-identity gallery tracklet in another camera
    g = index.tracklets[index.tracklets.split == "gallery"]
    qq = index.tracklets[index.tracklets.split == "query"]
    pairs = qq[["pid", "camid"]].merge(g[["pid", "camid"]], on="pid", suffixes=("_q", "_g"))
    good = pairs[pairs.camid_q != pairs.camid_g].drop_duplicates(["pid", "camid_q"])
    assert len(good) == len(qq.drop_duplicates(["pid", "camid"]))
    # round trip through disk
    write_index(index, tmp_path / "index")
    back = read_index(tmp_path / "index")
    assert back.tracklets.equals(index.tracklets) and back.frames.equals(index.frames)
    assert back.stats == st
    assert len(back.frames) == st["frames"]


def test_layout_and_schema(tiny, tmp_path):
    index = build_index(tiny)
    t, f = index.tracklets, index.frames
    assert list(t.columns) == TRACKLETS_SCHEMA.names and list(f.columns) == FRAMES_SCHEMA.names
    assert t.tracklet_id.tolist() == list(range(len(t)))
    order = t.split.map({"train": 0, "query": 1, "gallery": 2})
    assert order.is_monotonic_increasing
    assert (t.frame_offset == np.r_[0, np.cumsum(t.n_frames)[:-1]]).all()
    assert (f.tracklet_id.to_numpy() == np.repeat(t.tracklet_id, t.n_frames)).all()
    for tid in (0, len(t) // 2, len(t) - 1):
        rows = f.iloc[t.frame_offset[tid]: t.frame_offset[tid] + t.n_frames[tid]]
        assert rows.frame_idx.tolist() == list(range(t.n_frames[tid]))
        assert rows.path.str.contains(t.name[tid]).all()
    train = t[t.split == "train"]
    pids = sorted(train.pid.unique())
    assert (train.label == train.pid.map({p: i for i, p in enumerate(pids)})).all()
    out = write_index(index, tmp_path / "idx")
    assert sorted(p.name for p in out.iterdir()) == ["frames.parquet", "stats.json", "tracklets.parquet"]
    assert pq.read_schema(out / "tracklets.parquet").remove_metadata().equals(TRACKLETS_SCHEMA)
    assert pq.read_schema(out / "frames.parquet").remove_metadata().equals(FRAMES_SCHEMA)
    stats = json.loads((out / "stats.json").read_text())
    assert set(stats) >= {"splits", "junk_tracklets_dropped", "distractor_tracklets", "skipped_bad_frames"}


def test_manifest_round_trip_equals_direct_index(tiny, tmp_path):
    ok = np.ones(tiny.num_frames, bool)
    ok[[0, 5, 6]] = False
    path = write_manifest(tiny, ok, tmp_path / "ingest" / "manifest.parquet")
    schema = pq.read_schema(path)
    assert schema.remove_metadata().equals(MANIFEST_SCHEMA)
    assert schema.metadata[b"psta.dataset"] == b"mars"
    table = pq.read_table(path)
    assert table.num_rows == tiny.num_frames and table.column("ok").to_pylist().count(False) == 3
    back = read_manifest(path)
    assert back.dataset == "mars" and back.root == tiny.root
    assert back.tracklets.equals(tiny.tracklets) and back.paths.equals(tiny.paths)
    direct, via = build_index(tiny, ok), build_index(back)
    assert via.tracklets.equals(direct.tracklets) and via.frames.equals(direct.frames)
    assert via.stats == direct.stats
    junk_bad = int((~ok & tiny.tracklets.junk.to_numpy()[tiny.frame_tracklet()]).sum())
    assert via.stats["skipped_bad_frames"] == 3 - junk_bad


def test_read_index_rejects_bad_files(tiny, tmp_path):
    out = write_index(build_index(tiny), tmp_path / "idx")
    tr = pq.read_table(out / "tracklets.parquet")
    pq.write_table(tr.drop_columns(["label"]), out / "tracklets.parquet")
    with pytest.raises(DatasetError, match=r"tracklets\.parquet lacks column 'label'"):
        read_index(out)
    pq.write_table(tr.set_column(tr.schema.get_field_index("camid"), "camid",
                                 tr.column("camid").cast(pa.int32())), out / "tracklets.parquet")
    with pytest.raises(DatasetError, match=r"column 'camid' of .*tracklets\.parquet has type int32, expected int64"):
        read_index(out)
    pq.write_table(tr, out / "tracklets.parquet")
    (out / "frames.parquet").unlink()
    with pytest.raises(DatasetError, match=r"frames\.parquet is missing"):
        read_index(out)
    with pytest.raises(DatasetError, match="does not exist"):
        read_index(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match=r"manifest .* is missing"):
        read_manifest(tmp_path / "nowhere.parquet")


def test_failed_write_leaves_nothing(tiny, tmp_path):
    index = build_index(tiny)
    bad = index.tracklets.copy()
    bad["pid"] = bad["pid"].astype(str) + "x"
    broken = type(index)(tracklets=bad, frames=index.frames, stats=index.stats, root=index.root)
    with pytest.raises(DatasetError, match="tracklets.parquet"):
        write_index(broken, tmp_path / "idx")
    assert not (tmp_path / "idx").exists()
    # an existing index survives a failed rewrite untouched
    write_index(index, tmp_path / "idx")
    before = {p.name: p.read_bytes() for p in (tmp_path / "idx").iterdir()}
    with pytest.raises(DatasetError):
        write_index(broken, tmp_path / "idx")
    assert {p.name: p.read_bytes() for p in (tmp_path / "idx").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["MARS", "idx"]


def test_split_left_empty_is_an_error(tiny, tmp_path):
    is_query = (tiny.tracklets.split == "query").to_numpy()
    ok = ~is_query[tiny.frame_tracklet()]           # every query frame bad
    with pytest.raises(DatasetError, match=r"split 'query' is empty after indexing .* 9 left without a good frame"):
        build_index(tiny, ok)
    partial = np.ones(tiny.num_frames, bool)
    partial[0] = False
    assert build_index(tiny, partial).stats["skipped_bad_frames"] == 1


def test_index_dtypes_in_pandas(tiny):
    index = build_index(tiny)
    assert index.tracklets.dtypes.to_dict() == {
        "tracklet_id": np.dtype("int64"), "split": pd.StringDtype("pyarrow", na_value=np.nan),
        "pid": np.dtype("int64"), "label": np.dtype("int64"), "camid": np.dtype("int64"),
        "n_frames": np.dtype("int64"), "frame_offset": np.dtype("int64"),
        "name": pd.StringDtype("pyarrow", na_value=np.nan)}
    assert index.frames.frame_idx.dtype == np.int32
    assert index.num_classes == 6
