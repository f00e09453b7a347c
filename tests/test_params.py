from pathlib import Path

import pytest
import yaml

from pipeline.params import Params, ParamsError, load_params, parse_params

REPO = Path(__file__).resolve().parents[1]


def test_repository_params_are_valid_and_complete():
    params = load_params(REPO / "params.yaml")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    # every section of the dataclass schema is spelled out in params.yaml, so users see every knob
    assert set(raw) == set(Params.__dataclass_fields__)
    for section, values in raw.items():
        assert set(values) == set(params.section(section)), section


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"data": {"sorce": "mars"}}, "unknown key(s) data.sorce; 'data' accepts: on_bad_frame, root, source"),
        ({"synthetic": {"cameras_per_id": [2, "x"]}}, "synthetic.cameras_per_id[1]: expected int, got str 'x'"),
        ({"data": {"source": "market"}}, "data.source: expected 'synthetic' | 'mars' | 'duke' | 'videos', got str 'market'"),
        ({"synthetic": {"seed": "zero"}}, "synthetic.seed: expected int, got str 'zero'"),
        ({"synthetic": {"num_cameras": True}}, "synthetic.num_cameras: expected int or null, got bool True"),
        ({"trian": {}}, "unknown section(s) trian"),
        ({"data": [1, 2]}, "'data' must be a mapping of keys"),
    ],
)
def test_bad_params_are_one_clear_error(raw, message):
    with pytest.raises(ParamsError) as err:
        parse_params(raw)
    assert message in str(err.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "params.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


def test_digest_changes_only_with_the_named_sections():
    a = parse_params({"synthetic": {"seed": 1}})
    b = parse_params({"synthetic": {"seed": 2}})
    assert a.digest("data") == b.digest("data")
    assert a.digest("synthetic") != b.digest("synthetic")


@pytest.mark.parametrize("name", ["paper_mars", "paper_duke"])
def test_paper_configs_are_complete_and_hold_the_recipe(name):
    path = REPO / "configs" / f"{name}.yaml"
    params = load_params(path)
    raw = yaml.safe_load(path.read_text())
    assert set(raw) == set(Params.__dataclass_fields__)
    assert params.data.source == name.split("_")[1]
    assert (params.model.backbone, params.model.pretrained) == ("resnet50", "imagenet")
    assert (params.model.height, params.model.width, params.model.seq_len) == (256, 128, 8)
    assert params.train.epochs == 500 and params.train.milestones == (70, 140, 210, 310, 410)
    assert params.train.batch_size == 32 and params.train.num_instances == 4


@pytest.mark.parametrize("root, how, out", [
    ("data/generated/MARS", "lies inside", "data/generated"),
    ("data/cache/MARS", "lies inside", "data/cache"),
    ("data", "contains", "data/"),
    (".", "contains", ""),
])
def test_a_dataset_root_inside_or_holding_an_output_is_refused(tmp_path, root, how, out):
    """DVC deletes stage outputs before it runs a stage: a dataset there would be lost."""
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"data": {"source": "mars", "root": root}}))
    with pytest.raises(ParamsError) as err:
        load_params(path)
    message = str(err.value)
    assert f"data.root {root!r} {how} {out}" in message
    assert "set data.root: datasets/" in message and "\n" not in message


def test_dataset_roots_outside_every_output_are_accepted(tmp_path):
    for source, root in (("mars", "datasets/MARS"), ("mars", "data/raw/MARS"), ("duke", str(tmp_path)),
                         ("synthetic", "data/generated/mars")):  # synthetic does not read data.root
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump({"data": {"source": source, "root": root}}))
        assert load_params(path).data.root == root
