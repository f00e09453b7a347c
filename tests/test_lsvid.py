"""LS-VID: the reader on its synthetic tree (the v7.3 query file, cameras from the names, the
val list, queries without a match counted and skipped), and one clear error per bad input."""
from __future__ import annotations

import re
import shutil

import h5py
import numpy as np
import pytest
import scipy.io

from psta.data.lsvid import LISTS, QUERY_FILE, generate_lsvid, read_lsvid
from psta.data.mars_layout import savemat_deterministic
from psta.data.mat73 import write_mat73
from psta.data.synthetic import SyntheticConfig
from psta.evaluation import evaluate_protocol
from tests.test_readers import assert_fails_cleanly, run_stages

CFG = SyntheticConfig(seed=6, num_train_ids=8, num_test_ids=6, min_len=3, max_len=8, height=64, width=32)


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    root = tmp_path_factory.mktemp("src") / "LS-VID"
    return root, generate_lsvid(root, CFG)


@pytest.fixture
def copy(src, tmp_path):
    root = tmp_path / "LS-VID"
    shutil.copytree(src[0], root)
    return root


def lines(root, part):
    return (root / LISTS[part]).read_text().splitlines()


def test_index_matches_planted_and_both_protocols_skip_the_unmatched_query(src, tmp_path):
    root, planted = src
    _, index = run_stages("lsvid", root, tmp_path / "out")
    assert index.stats["splits"] == planted["splits"]
    t = index.tracklets
    assert list(dict.fromkeys(t.split)) == ["train", "query", "gallery", "val"]
    assert (t[t.split != "train"].label == -1).all() and sorted(set(t[t.split == "train"].label)) == list(range(8))
    assert not set(t[t.split == "val"].pid) & set(t[t.split == "train"].pid)
    for tid in range(len(t)):                          # frames: the prefix's files, sorted; camera = field 3
        paths = index.frame_paths(tid)
        assert paths == sorted(paths) and all(p.startswith(t["name"].iat[tid] + "_") for p in paths)
        assert {int(p.rsplit("/", 1)[1].split("_")[2]) - 1 for p in paths} == {t.camid.iat[tid]}
    test = t[t.split.isin(["query", "gallery"])].reset_index(drop=True)
    features = np.random.default_rng(0).normal(size=(len(test), 16))
    for protocol, with_queries in (("lsvid", True), ("lsvid_gallery_only", False)):
        result = evaluate_protocol(protocol, features, test, max_rank=5)
        queries, gallery = (test.split == "query").sum(), (test.split == "gallery").sum()
        assert result["num_gallery"] == gallery + (queries if with_queries else 0)
        assert result["num_skipped_queries"] == planted["skipped_queries"][protocol] >= 1
        assert result["num_valid_queries"] == queries - planted["skipped_queries"][protocol]


def test_the_query_file_is_matlab_v73_read_with_h5py(src, tmp_path):
    root, planted = src
    with pytest.raises(NotImplementedError, match="v7.3"):            # scipy sees a real v7.3 file
        scipy.io.loadmat(root / QUERY_FILE)
    with h5py.File(root / QUERY_FILE, "r") as f:
        rows = f["query"][0, :]                                       # as the LS-VID authors read it
        assert f["query"].attrs["MATLAB_class"] == b"double"
    assert len(rows) == planted["splits"]["query"]["tracklets"]
    assert open(root / QUERY_FILE, "rb").read(10) == b"MATLAB 7.3"
    # a copy re-saved as v7 (scipy) reads alike
    resaved = tmp_path / "LS-VID"
    shutil.copytree(root, resaved)
    savemat_deterministic(resaved / QUERY_FILE, {"query": rows[:, None]})
    a, b = read_lsvid(root), read_lsvid(resaved)
    assert a.tracklets.equals(b.tracklets) and a.paths.equals(b.paths)


def test_junk_label_and_no_val_list(copy, tmp_path):
    test = lines(copy, "test")
    query_rows = set(read_lsvid(copy).tracklets.query("split == 'query'").row)
    k = next(i for i in range(len(test)) if i not in query_rows)
    test[k] = test[k].split()[0] + " -1"
    (copy / LISTS["test"]).write_text("\n".join(test) + "\n")
    (copy / LISTS["val"]).unlink()
    _, index = run_stages("lsvid", copy, tmp_path / "out")
    assert index.stats["junk_tracklets_dropped"] == 1 and "val" not in index.stats["splits"]
    assert test[k].split()[0] not in set(index.tracklets.name)


# ------------------------------------------------------------------------------ bad input
def test_missing_root(tmp_path):
    assert_fails_cleanly("lsvid", tmp_path / "nope", tmp_path / "out", r"LS-VID root .*nope does not exist",
                         r"LS-VID/ folder itself")


@pytest.mark.parametrize("rel", [LISTS["train"], LISTS["test"], QUERY_FILE])
def test_missing_file(copy, tmp_path, rel):
    (copy / rel).unlink()
    assert_fails_cleanly("lsvid", copy, tmp_path / "out", rf"{re.escape(rel)} is missing under", "LS-VID release")


def test_query_file_without_query(copy, tmp_path):
    write_mat73(copy / QUERY_FILE, {"queries": np.ones((3, 1))})
    assert_fails_cleanly("lsvid", copy, tmp_path / "out",
                         rf"{QUERY_FILE} has no variable 'query' \(it holds \['queries'\]\)")


@pytest.mark.parametrize("fault, pattern", [
    ("outside", r"entry 2 of 'query' in test/data/info_test\.mat is 999, outside the \d+ rows of "
                r"list_sequence/list_seq_test\.txt"),
    ("twice", r"'query' in test/data/info_test\.mat lists a row twice"),
    ("empty", r"split 'query' is empty: 'query' in test/data/info_test\.mat lists no rows"),
    ("all", r"split 'gallery' is empty: every row of list_sequence/list_seq_test\.txt is a query"),
])
def test_bad_query_rows(copy, tmp_path, fault, pattern):
    with h5py.File(copy / QUERY_FILE, "r") as f:
        rows = f["query"][0, :]
    rows = {"outside": np.r_[rows[:1], 999, rows[2:]], "twice": np.r_[rows, rows[:1]], "empty": np.zeros(0),
            "all": np.arange(1, len(lines(copy, "test")) + 1.0)}[fault]
    write_mat73(copy / QUERY_FILE, {"query": rows[:, None]})
    assert_fails_cleanly("lsvid", copy, tmp_path / "out", pattern)


def test_malformed_list_line(copy, tmp_path):
    train = lines(copy, "train")
    train[3] = train[3].replace(" ", "\t") + " extra"
    (copy / LISTS["train"]).write_text("\n".join(train) + "\n")
    assert_fails_cleanly("lsvid", copy, tmp_path / "out", r"line 4 of list_sequence/list_seq_train\.txt .* is not "
                         r"'<path prefix> <label>'")


def test_tracklet_without_frames_or_folder(copy, tmp_path):
    prefix = lines(copy, "test")[2].split()[0]
    for f in copy.glob(prefix + "_*"):
        f.unlink()
    assert_fails_cleanly("lsvid", copy, tmp_path / "out",
                         rf"line 3 of list_sequence/list_seq_test\.txt: tracklet {prefix} has no frames")
    folder = lines(copy, "train")[0].split()[0].rsplit("/", 1)[0]
    shutil.rmtree(copy / folder)
    assert_fails_cleanly("lsvid", copy, tmp_path / "out2", rf"line 1 of list_sequence/list_seq_train\.txt: "
                         rf"folder {folder}/ of tracklet .* is missing")


@pytest.mark.parametrize("fault, pattern", [
    ("name", r"frame {f} has an unparsable name; LS-VID frame names have four '_'-separated fields"),
    ("camera", r"frame {f} names camera 16; LS-VID cameras are 1\.\.15"),
    ("mixed", r"tracklet {t} mixes cameras: frame {f} has camera \d+"),
])
def test_bad_frame_names(copy, tmp_path, fault, pattern):
    prefix = lines(copy, "val")[1].split()[0]
    frame = sorted(copy.glob(prefix + "_*"))[-1]
    a, b, cam, d = frame.name.split("_")
    new = {"name": f"{a}_{b}_{cam}.jpg", "camera": f"{a}_{b}_16_{d}",
           "mixed": f"{a}_{b}_{int(cam) % 15 + 1:02d}_{d}"}[fault]
    frame.rename(frame.with_name(new))
    rel = f"{prefix.rsplit('/', 1)[0]}/{new}"
    assert_fails_cleanly("lsvid", copy, tmp_path / "out", pattern.format(f=re.escape(rel), t=re.escape(prefix)))


def test_validation_identity_that_also_trains(copy, tmp_path):
    val = lines(copy, "val")
    val[0] = val[0].split()[0] + " " + lines(copy, "train")[0].split()[1]
    (copy / LISTS["val"]).write_text("\n".join(val) + "\n")
    assert_fails_cleanly("lsvid", copy, tmp_path / "out", r"identity \d+ is in both list_sequence/list_seq_val\.txt "
                         r"and list_sequence/list_seq_train\.txt")


def test_empty_train_list(copy, tmp_path):
    (copy / LISTS["train"]).write_text("\n")
    assert_fails_cleanly("lsvid", copy, tmp_path / "out", r"split 'train' is empty: list_sequence/list_seq_train\.txt "
                         r"lists no tracklets")
