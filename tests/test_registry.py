"""The dataset registry: every registered dataset runs through reader, index and its protocols,
and one new entry is all the stages, params and evaluation need to know about a dataset."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.params import ParamsError, parse_params
from pipeline.stages.evaluate import sampling_for
from pipeline.stages.ingest import dataset_of
from psta.data import read_dataset
from psta.data.mars import read_mars
from psta.data.registry import (
    DATASETS,
    PROTOCOLS,
    DatasetSpec,
    PaperResult,
    Protocol,
    dataset_names,
    get_dataset,
    register_dataset,
    synthetic_layouts,
)
from psta.data.synthetic import SyntheticConfig, generate_mars
from psta.engine.inference import SAMPLINGS
from psta.errors import DatasetError
from psta.evaluation import evaluate_protocol
from psta.index import build_index

TINY = SyntheticConfig(seed=5, num_train_ids=4, num_test_ids=4, min_len=3, max_len=6,
                       num_distractor_tracklets=2, num_junk_tracklets=1, num_distractor_ids=1)


@pytest.fixture
def registry_snapshot():
    """Restore the registry's tables after a test that registers a dataset."""
    saved = dict(DATASETS), dict(PROTOCOLS)
    yield
    for table, before in zip((DATASETS, PROTOCOLS), saved, strict=True):
        table.clear()
        table.update(before)


def test_the_builtin_datasets_and_what_params_accept():
    every = ("mars", "duke", "ilidsvid", "prid", "lsvid")
    assert dataset_names() == every and synthetic_layouts() == every
    mars, duke = get_dataset("mars"), get_dataset("duke")
    assert mars.protocol_names == ("mars_official", "mars_torchreid") and mars.test_sampling == "begin"
    assert duke.protocol_names == ("duke",) and duke.test_sampling == "dense"
    assert (mars.paper.rank1, mars.paper.mAP, duke.paper.rank1, duke.paper.mAP) == (91.5, 85.8, 98.3, 97.7)
    for spec in DATASETS.values():
        assert spec.test_sampling in SAMPLINGS
        assert {p.name for p in spec.protocols} <= set(PROTOCOLS)
    assert parse_params({"data": {"source": "duke"}, "synthetic": {"layout": "duke"}}).data.source == "duke"
    assert [get_dataset(n).num_splits for n in every] == [1, 1, 10, 10, 1]
    assert get_dataset("lsvid").protocol_names == ("lsvid", "lsvid_gallery_only")
    assert get_dataset("ilidsvid").paper.rank1 == 91.5 and get_dataset("ilidsvid").paper.mAP is None
    with pytest.raises(ParamsError, match="synthetic.layout: expected 'mars' | 'duke' | 'ilidsvid' | "
                                          "'prid' | 'lsvid', got str 'market'"):
        parse_params({"synthetic": {"layout": "market"}})


@pytest.mark.parametrize("name", ["mars", "duke", "ilidsvid", "prid", "lsvid"])
def test_each_dataset_reads_what_its_writer_planted_and_evaluates(name, tmp_path):
    spec = get_dataset(name)
    planted = spec.synthetic(tmp_path / name, TINY)
    index = build_index(spec.reader(tmp_path / name))
    assert index.stats["dataset"] == name
    for split in ("train", "query", "gallery"):
        assert (index.tracklets.split == split).sum() == planted["splits"][split]["tracklets"]
    test = index.tracklets[index.tracklets.split.isin(["query", "gallery"])].reset_index(drop=True)
    features = np.random.default_rng(0).normal(size=(len(test), 8))
    for protocol in spec.protocols:
        result = evaluate_protocol(protocol.name, features, test, max_rank=5)
        queries = (test.split == "query").sum()
        gallery = (test.split == "gallery").sum() + (queries if protocol.queries_in_gallery else 0)
        assert (result["num_queries"], result["num_gallery"]) == (queries, gallery)


def test_unknown_dataset_is_one_error_naming_the_key():
    with pytest.raises(DatasetError, match=r"unknown dataset 'market'; data.source must be one of "
                                           r"\['mars', 'duke', 'ilidsvid', 'prid', 'lsvid'\]"):
        read_dataset("market", "anywhere")


def test_a_spec_must_hold_its_headline_and_paper_protocols():
    p = Protocol("p", queries_in_gallery=False, description="")
    common = dict(name="x", title="X", reader=read_mars, synthetic=None, test_sampling="begin",
                  split_scheme="fixed")
    with pytest.raises(ValueError, match="headline protocol 'q' is not one of its protocols"):
        DatasetSpec(**common, protocols=(p,), headline_protocol="q", paper=None)
    with pytest.raises(ValueError, match="the paper's protocol 'q' is not one of its protocols"):
        DatasetSpec(**common, protocols=(p,), headline_protocol="p", paper=PaperResult(1.0, 1.0, "q"))
    with pytest.raises(ValueError, match="dataset 'mars' is already registered"):
        register_dataset(get_dataset("mars"))


def test_one_registry_entry_is_all_a_new_dataset_needs(registry_snapshot, tmp_path):
    """A MARS-layout copy under another name, with its own protocol: the reader, the ingest's
    dataset choice, the evaluate stage's sampling and protocols all follow the new entry."""
    every_row = Protocol("copy_all", queries_in_gallery=True, description="gallery = every test row")
    register_dataset(DatasetSpec(
        name="marscopy", title="MARS copy", reader=read_mars, synthetic=generate_mars,
        protocols=(every_row,), headline_protocol="copy_all", test_sampling="all",
        paper=None, split_scheme="fixed"))
    generate_mars(tmp_path / "copy", TINY)
    raw = read_dataset("marscopy", tmp_path / "copy")
    assert len(raw) > 0
    params = parse_params({})
    assert sampling_for(params, "marscopy") == "all"
    assert dataset_of(parse_params({"data": {"source": "mars"}})).name == "mars"
    test = build_index(raw).tracklets
    test = test[test.split != "train"].reset_index(drop=True)
    result = evaluate_protocol("copy_all", np.eye(len(test)), test, max_rank=5)
    assert result["protocol"] == "copy_all" and result["num_gallery"] == len(test)
    with pytest.raises(ValueError, match="protocol 'copy_all' is already registered with another definition"):
        register_dataset(DatasetSpec(
            name="other", title="Other", reader=read_mars, synthetic=None,
            protocols=(Protocol("copy_all", False, "different"),), headline_protocol="copy_all",
            test_sampling="begin", paper=None, split_scheme="fixed"))


def test_data_split_is_range_checked_and_refused_for_fixed_split_datasets(tmp_path):
    assert parse_params({"data": {"split": 9}}).data.split == 9
    with pytest.raises(ParamsError, match=r"data.split: expected int in \[0, 9\], got int 10"):
        parse_params({"data": {"split": 10}})
    with pytest.raises(DatasetError, match=r"data.split=3, but MARS has one fixed train/test split; set "
                                           r"data.split: 0"):
        read_dataset("mars", tmp_path, split=3)


@pytest.mark.parametrize("name", ["mars", "duke", "ilidsvid", "prid", "lsvid"])
def test_each_paper_config_is_a_valid_params_file_for_its_dataset(name):
    from pipeline.params import load_params
    from tests.conftest import REPO

    params = load_params(REPO / "configs" / f"paper_{name}.yaml")
    assert params.data.source == name and params.model.backbone == "resnet50" and params.model.seq_len == 8
    assert (params.train.epochs, params.train.lr, params.train.batch_size) == (500, 0.00035, 32)
    assert params.evaluate.sampling == get_dataset(name).test_sampling
