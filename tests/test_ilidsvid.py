"""iLIDS-VID: the reader on its synthetic tree (every split as planted, person-number gaps,
original frame numbers, stills ignored), and one clear error per bad input with nothing written.
"""
from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import scipy.io

from psta.data.ilidsvid import SEQUENCES, SPLIT_FILE, generate_ilidsvid, read_ilidsvid
from psta.data.mars_layout import savemat_deterministic
from psta.data.synthetic import SyntheticConfig
from psta.evaluation import evaluate_protocol
from tests.test_readers import assert_fails_cleanly, run_stages

CFG = SyntheticConfig(seed=4, num_train_ids=6, num_test_ids=6, min_len=3, max_len=9, height=64, width=32)


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    root = tmp_path_factory.mktemp("src") / "ilids"
    return root, generate_ilidsvid(root, CFG)


@pytest.fixture
def copy(src, tmp_path):
    root = tmp_path / "ilids"
    shutil.copytree(src[0], root)
    return root


def ls_set(root):
    return scipy.io.loadmat(root / SPLIT_FILE)["ls_set"].astype(int)


@pytest.mark.parametrize("split", [0, 7])
def test_each_split_indexes_what_was_planted(src, tmp_path, split):
    root, planted = src
    summary, index = run_stages("ilidsvid", root, tmp_path / "out", split=split)
    assert index.stats["splits"] == planted["per_split"][split]
    assert index.stats["split"] == {"index": split, "count": 10, "source": SPLIT_FILE,
                                    "train_identities": 6, "test_identities": 6}
    assert summary["split"]["index"] == split
    # the test identities are the first half of ls_set's row, 1-based into the sorted cam1 folders
    people = sorted(p.name for p in (root / SEQUENCES / "cam1").iterdir())
    test_people = {people[i - 1] for i in ls_set(root)[split][:6]}
    t = index.tracklets
    assert {f"person{p:03d}" for p in t[t.split == "query"].pid} == test_people
    assert set(t[t.split == "query"].camid) == {0} and set(t[t.split == "gallery"].camid) == {1}
    assert sorted(t[t.split == "query"].pid) == sorted(t[t.split == "gallery"].pid)
    assert not set(t[t.split == "train"].pid) & set(t[t.split == "query"].pid)
    assert (t[t.split == "train"].groupby("pid").camid.nunique() == 2).all()


def test_person_number_gaps_original_frame_numbers_and_stills(src, tmp_path):
    root, planted = src
    _, index = run_stages("ilidsvid", root, tmp_path / "out")
    numbers = planted["person_numbers"]
    assert numbers[-1] > len(numbers)                             # gaps, as 300 people numbered to 319
    assert sorted(set(index.tracklets.pid)) == numbers            # pid = the person number, gaps kept
    firsts = []
    for tid in range(len(index.tracklets)):
        cam, person = index.tracklets["name"].iat[tid].split("/")
        paths = index.frame_paths(tid)
        assert paths[0].startswith(f"{SEQUENCES}/{cam}/{person}/{cam}_{person}_")
        frames = [int(re.search(r"_(\d{5})\.png$", p).group(1)) for p in paths]
        assert frames == list(range(frames[0], frames[0] + len(frames)))   # temporal order
        assert len(paths) == planted["sequence_frames"][cam][person]
        firsts.append(frames[0])
    assert max(firsts) > 1                                        # original numbers, not 1-based
    assert not index.frames.path.str.contains("/images/").any()
    assert len(list((root / "i-LIDS-VID/images").rglob("*.png"))) == planted["stills"]


def test_a_query_without_its_gallery_sequence_is_counted_and_skipped(copy, tmp_path):
    raw = read_ilidsvid(copy)
    gallery = raw.tracklets.index[raw.tracklets.split == "gallery"][2]
    for p in raw.frame_paths(gallery):                            # every frame bad: the sequence goes
        (copy / p).write_bytes(b"not a png")
    _, index = run_stages("ilidsvid", copy, tmp_path / "out", on_bad_frame="skip")
    assert index.stats["dropped_empty_tracklets"] == 1
    test = index.tracklets[index.tracklets.split.isin(["query", "gallery"])].reset_index(drop=True)
    result = evaluate_protocol("ilidsvid", np.eye(len(test)), test, max_rank=5)
    assert (result["num_queries"], result["num_skipped_queries"], result["num_valid_queries"]) == (6, 1, 5)


# ------------------------------------------------------------------------------ bad input
def test_missing_root(tmp_path):
    assert_fails_cleanly("ilidsvid", tmp_path / "nope", tmp_path / "out",
                         r"iLIDS-VID root .*nope does not exist", r"i-LIDS-VID/ and 'train-test people splits/'")


def test_missing_split_file(copy, tmp_path):
    (copy / SPLIT_FILE).unlink()
    assert_fails_cleanly("ilidsvid", copy, tmp_path / "out",
                         re.escape(f"split file {SPLIT_FILE} is missing"), "iLIDS-VID release")


def test_split_file_without_ls_set(copy, tmp_path):
    savemat_deterministic(copy / SPLIT_FILE, {"splits": ls_set(copy).astype(float)})
    assert_fails_cleanly("ilidsvid", copy, tmp_path / "out", r"has no variable 'ls_set' \(it holds \['splits'\]\)")


def test_split_file_of_the_wrong_shape(copy, tmp_path):
    savemat_deterministic(copy / SPLIT_FILE, {"ls_set": ls_set(copy)[:, :-1].astype(float)})
    assert_fails_cleanly("ilidsvid", copy, tmp_path / "out", r"'ls_set' in .* has shape \(10, 11\); expected "
                         r"splits x 12, one column per person \(12 people found\)")


@pytest.mark.parametrize("fault, pattern", [
    ("outside", r"entry \(row 3, column 5\) of 'ls_set' .* is 13, outside 1\.\.12"),
    ("twice", r"row 3 of 'ls_set' .* lists person index \d+ twice"),
])
def test_split_file_with_bad_indices(copy, tmp_path, fault, pattern):
    ls = ls_set(copy)
    ls[2, 4] = 13 if fault == "outside" else ls[2, 5]
    savemat_deterministic(copy / SPLIT_FILE, {"ls_set": ls.astype(float)})
    assert_fails_cleanly("ilidsvid", copy, tmp_path / "out", pattern)


def test_split_outside_the_split_file(copy, tmp_path):
    savemat_deterministic(copy / SPLIT_FILE, {"ls_set": ls_set(copy)[:3].astype(float)})
    assert_fails_cleanly("ilidsvid", copy, tmp_path / "out", r"data\.split=5 is outside the 3 splits of "
                         + re.escape(SPLIT_FILE), r"choose 0\.\.2", split=5)


def test_person_folder_without_frames(copy, tmp_path):
    person = sorted((copy / SEQUENCES / "cam2").iterdir())[3]
    for f in person.iterdir():
        f.unlink()
    assert_fails_cleanly("ilidsvid", copy, tmp_path / "out",
                         rf"person folder {SEQUENCES}/cam2/{person.name} holds no frames")


def test_unparsable_frame_name(copy, tmp_path):
    frame = sorted((copy / SEQUENCES / "cam1").rglob("*.png"))[4]
    frame.rename(frame.with_name("frame_0004.png"))
    assert_fails_cleanly("ilidsvid", copy, tmp_path / "out",
                         rf"frame {SEQUENCES}/cam1/{frame.parent.name}/frame_0004\.png has an unparsable name",
                         r"cam1_person001_00317\.png")


def test_person_seen_by_one_camera_only(copy, tmp_path):
    person = sorted((copy / SEQUENCES / "cam2").iterdir())[1]
    shutil.rmtree(person)
    assert_fails_cleanly("ilidsvid", copy, tmp_path / "out",
                         rf"{SEQUENCES}/cam1/{person.name} has no sequence in cam2")


def test_empty_camera_folder(copy, tmp_path):
    for person in (copy / SEQUENCES / "cam1").iterdir():
        shutil.rmtree(person)
    assert_fails_cleanly("ilidsvid", copy, tmp_path / "out",
                         rf"camera folder {SEQUENCES}/cam1/ holds no person folders")


def test_bad_png_frame_names_the_file(copy, tmp_path):
    frame = sorted((copy / SEQUENCES / "cam2").rglob("*.png"))[7]
    frame.write_bytes(frame.read_bytes()[:-30])
    rel = frame.relative_to(copy).as_posix()
    assert_fails_cleanly("ilidsvid", copy, tmp_path / "out", re.escape(rel), "truncated PNG",
                         r"data\.on_bad_frame: skip")


def test_the_report_summary_names_the_split(src, tmp_path):
    from psta.report.summary import summary_section

    _, index = run_stages("ilidsvid", src[0], tmp_path / "out", split=4)
    results = {"protocols": {"ilidsvid": {"rank1": 0.5, "mAP": 0.4, "num_queries": 6, "num_gallery": 6,
                                          "num_valid_queries": 6}}}
    section = summary_section(results, "ilidsvid", "iLIDS-VID", "ilidsvid", None, None, index.stats, provenance={})
    facts = dict(section["facts"])
    assert facts["Split"] == f"4 of 0..9 ({SPLIT_FILE}): 6 train / 6 test identities"
