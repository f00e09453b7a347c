"""PRID-2011: the video protocol's people (27-frame rule, single-camera people out), the three
split sources, and one clear error per bad input with nothing written (the dataset never)."""
from __future__ import annotations

import hashlib
import json
import re
import shutil

import numpy as np
import pytest

from psta.data.mars_layout import savemat_deterministic
from psta.data.prid import MIN_FRAMES, MULTI_SHOT, SPLITS_JSON, draw_splits, generate_prid, read_prid
from psta.data.synthetic import SyntheticConfig
from tests.test_readers import assert_fails_cleanly, run_stages

CFG = SyntheticConfig(seed=5, num_train_ids=5, num_test_ids=5, min_len=3, max_len=8, height=64, width=32,
                      num_distractor_ids=2)


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    root = tmp_path_factory.mktemp("src") / "prid"
    return root, generate_prid(root, CFG)


@pytest.fixture
def copy(src, tmp_path):
    root = tmp_path / "prid"
    shutil.copytree(src[0], root)
    return root


def tree_digest(root) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(p.relative_to(root).as_posix().encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def people_of(index, split):
    return sorted(f"person_{p:04d}" for p in set(index.tracklets[index.tracklets.split == split].pid))


def test_protocol_people_and_drawn_splits(src, tmp_path):
    root, planted = src
    before = tree_digest(root)
    summary, index = run_stages("prid", root, tmp_path / "out", split=3, split_seed=11)
    st = index.stats
    for split in ("train", "query", "gallery"):
        assert {k: st["splits"][split][k] for k in ("tracklets", "identities")} == planted["splits"][split]
    # 27-frame rule: people with 21-26 frames in one camera are out; so are single-camera people
    assert planted["too_short"] and st["excluded"]["too_short"] == planted["too_short"]
    for p in planted["too_short"]:
        assert 21 <= min(planted["sequence_frames"][c][p] for c in ("cam_a", "cam_b")) < MIN_FRAMES
    assert st["excluded"]["single_camera"] == planted["single_camera"] == {"cam_a": 2, "cam_b": 4}
    assert st["protocol_identities"] == len(planted["protocol_people"]) == 10
    used = set(people_of(index, "train")) | set(people_of(index, "query"))
    assert used == set(planted["protocol_people"])
    assert (index.tracklets.pid <= 200).all()
    t = index.tracklets
    assert set(t[t.split == "query"].camid) == {0} and set(t[t.split == "gallery"].camid) == {1}
    # the drawn splits: from data.split_seed, recorded, half test, deterministic, one per data.split
    assert st["split"] == {"index": 3, "count": 10, "source": "drawn from data.split_seed=11",
                           "train_identities": 5, "test_identities": 5}
    splits = draw_splits(planted["protocol_people"], 11)
    assert people_of(index, "query") == splits[3]["test"] and people_of(index, "train") == splits[3]["train"]
    assert splits != draw_splits(planted["protocol_people"], 12)
    assert len({tuple(s["test"]) for s in splits}) == 10
    assert read_prid(root, split=3, split_seed=11).generated_splits == splits
    assert summary["split"]["index"] == 3
    assert tree_digest(root) == before and not (root / SPLITS_JSON).exists()   # nothing written into it


def test_frames_in_order_from_0001(src, tmp_path):
    root, planted = src
    _, index = run_stages("prid", root, tmp_path / "out")
    for tid in range(len(index.tracklets)):
        cam, person = index.tracklets["name"].iat[tid].split("/")
        paths = index.frame_paths(tid)
        assert paths == [f"{MULTI_SHOT}/{cam}/{person}/{f:04d}.png" for f in range(1, len(paths) + 1)]
        assert len(paths) == planted["sequence_frames"][cam][person] >= MIN_FRAMES


def test_splits_json_in_the_root_is_used_first(copy, tmp_path, src):
    people = src[1]["protocol_people"]
    splits = [{"train": people[:5], "test": people[5:]}, {"train": people[5:], "test": people[:5]}]
    (copy / SPLITS_JSON).write_text(json.dumps(splits))
    mat = tmp_path / "train_test_splits_prid.mat"
    savemat_deterministic(mat, {"ls_set": np.tile(np.arange(1, 11.0), (10, 1))})
    _, index = run_stages("prid", copy, tmp_path / "out", split=1, split_file=str(mat))
    assert index.stats["split"]["source"] == SPLITS_JSON and index.stats["split"]["count"] == 2
    assert people_of(index, "query") == people[:5] and people_of(index, "train") == people[5:]


def test_ls_set_split_file(src, tmp_path):
    root, planted = src
    people = planted["protocol_people"]
    ls = np.stack([np.roll(np.arange(1, 11), k) for k in range(10)]).astype(float)
    mat = tmp_path / "train_test_splits_prid.mat"
    savemat_deterministic(mat, {"ls_set": ls})
    _, index = run_stages("prid", root, tmp_path / "out", split=2, split_file=str(mat))
    assert index.stats["split"]["source"] == f"data.split_file={mat}"
    assert people_of(index, "query") == sorted(people[int(i) - 1] for i in ls[2, :5])
    assert people_of(index, "train") == sorted(people[int(i) - 1] for i in ls[2, 5:])
    assert read_prid(root, split_file=mat).generated_splits is None


# ------------------------------------------------------------------------------ bad input
def test_missing_root(tmp_path):
    assert_fails_cleanly("prid", tmp_path / "nope", tmp_path / "out", r"PRID-2011 root .*nope does not exist",
                         r"prid_2011/")


def test_missing_camera_folder(copy, tmp_path):
    shutil.rmtree(copy / MULTI_SHOT / "cam_b")
    assert_fails_cleanly("prid", copy, tmp_path / "out", rf"camera folder {MULTI_SHOT}/cam_b/ is missing")


@pytest.mark.parametrize("content, pattern", [
    ("{not json", r"splits_prid2011\.json in data\.root is not readable JSON"),
    ('{"train": []}', r"must be a non-empty list of \{\"train\": \[\.\.\.\], \"test\": \[\.\.\.\]\}"),
    ("too_short", r"split 0 lists 'person_\d{4}' in 'test', which is not one of the 10 people of the video protocol"),
    ("overlap", r"split 0 lists 'person_\d{4}' in both 'train' and 'test'"),
    ("empty", r"split 'query' is empty: splits_prid2011\.json gives no test identities"),
])
def test_bad_splits_json(copy, tmp_path, src, content, pattern):
    people = src[1]["protocol_people"]
    split = {"too_short": {"train": people[:5], "test": people[5:] + src[1]["too_short"]},
             "overlap": {"train": people[:6], "test": people[5:]},
             "empty": {"train": people, "test": []}}.get(content)
    (copy / SPLITS_JSON).write_text(json.dumps([split]) if split else content)
    assert_fails_cleanly("prid", copy, tmp_path / "out", pattern)


def test_split_file_missing_or_of_the_wrong_shape(src, tmp_path):
    root = src[0]
    missing = tmp_path / "nowhere.mat"
    assert_fails_cleanly("prid", root, tmp_path / "out", rf"split file {re.escape(str(missing))} is missing",
                         "train_test_splits_prid.mat", split_file=str(missing))
    mat = tmp_path / "train_test_splits_prid.mat"
    savemat_deterministic(mat, {"ls_set": np.tile(np.arange(1, 12.0), (10, 1))})
    assert_fails_cleanly("prid", root, tmp_path / "out2", r"has shape \(10, 11\); expected splits x 10",
                         split_file=str(mat))


def test_split_outside_the_splits(copy, tmp_path, src):
    people = src[1]["protocol_people"]
    (copy / SPLITS_JSON).write_text(json.dumps([{"train": people[:5], "test": people[5:]}] * 2))
    assert_fails_cleanly("prid", copy, tmp_path / "out", r"data\.split=5 is outside the 2 splits of "
                         r"splits_prid2011\.json; choose 0\.\.1", split=5)


def test_person_folder_without_frames(copy, tmp_path):
    person = copy / MULTI_SHOT / "cam_a" / "person_0003"
    for f in person.iterdir():
        f.unlink()
    assert_fails_cleanly("prid", copy, tmp_path / "out",
                         rf"person folder {MULTI_SHOT}/cam_a/person_0003 holds no frames")


def test_unparsable_frame_name(copy, tmp_path):
    frame = copy / MULTI_SHOT / "cam_b" / "person_0002" / "0005.png"
    frame.rename(frame.with_name("img5.png"))
    assert_fails_cleanly("prid", copy, tmp_path / "out",
                         rf"frame {MULTI_SHOT}/cam_b/person_0002/img5\.png has an unparsable name", r"0001\.png")
