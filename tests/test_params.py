import difflib
import shutil
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from pipeline.params import SECTIONS, Params, ParamsError, load_params, parse_params
from pipeline.preflight import check_stages
from psta.config import FieldError
from psta.errors import ConfigError, UserError

REPO = Path(__file__).resolve().parents[1]
PAPER_CONFIGS = ["paper_mars", "paper_duke", "paper_ilidsvid", "paper_prid", "paper_lsvid"]
PARAMS_FILES = ["params.yaml"] + [f"configs/{name}.yaml" for name in PAPER_CONFIGS]


def test_repository_params_are_valid_and_complete():
    params = load_params(REPO / "params.yaml")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    # every section of the schema is spelled out in params.yaml, so users see every knob
    assert set(raw) == set(SECTIONS)
    for section, values in raw.items():
        assert set(values) == set(params.section(section)), section


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"data": {"sorce": "mars"}}, "unknown key(s) data.sorce; 'data' accepts: on_bad_frame, root, source, split, "
                                      "split_file, split_seed, strict_frame_size"),
        ({"synthetic": {"cameras_per_id": [2, "x"]}}, "synthetic.cameras_per_id[1]: expected int, got str 'x'"),
        ({"data": {"source": "market"}},
         "data.source: expected 'synthetic' | 'mars' | 'duke' | 'ilidsvid' | 'prid' | 'lsvid' | 'videos', "
         "got str 'market'"),
        ({"synthetic": {"seed": "zero"}}, "synthetic.seed: expected int >= 0, got str 'zero'"),
        ({"synthetic": {"num_cameras": True}}, "synthetic.num_cameras: expected int or null in [2, 9], got bool True"),
        ({"train": {"epochs": "3"}}, "train.epochs: expected int >= 1, got str '3'"),
        ({"train": {"lr": True}}, "train.lr: expected float > 0, got bool True"),
        ({"trian": {}}, "unknown section(s) trian"),
        ({"data": [1, 2]}, "data: expected a mapping of keys, got list [1, 2]"),
        ([1, 2], "the top level must be a mapping of sections"),
    ],
)
def test_bad_params_are_one_clear_error(raw, message):
    with pytest.raises(ParamsError) as err:
        parse_params(raw)
    assert message in str(err.value)
    assert str(err.value).startswith("params.yaml: ") and "\n" not in str(err.value)


# issue 11 item 8 and issue 14 item 9: out of range, or a rule across keys; one line each
OUT_OF_RANGE = [
    ({"model": {"seq_len": 3}}, "model.seq_len: expected a power of two >= 2 for arch psta (2, 4, 8, 16, ...: "
                                "each pyramid level fuses frame pairs), got int 3"),
    ({"model": {"seq_len": 6}}, "model.seq_len: expected a power of two >= 2 for arch psta"),
    ({"model": {"seq_len": 0, "arch": "tap"}}, "model.seq_len: expected int >= 1, got int 0"),
    ({"model": {"height": 0}}, "model.height: expected a multiple of 16 (the backbone's stride: 256 x 128 gives "
                               "16 x 8 feature maps), got int 0"),
    ({"model": {"width": 100}}, "model.width: expected a multiple of 16"),
    ({"model": {"backbone": "resnet101"}}, "model.backbone: expected 'resnet50' | 'resnet34' | 'resnet18'"),
    ({"evaluate": {"k1": -5}}, "evaluate.k1: expected int >= 1, got int -5"),
    ({"evaluate": {"max_rank": 0}}, "evaluate.max_rank: expected int >= 20, got int 0"),
    ({"evaluate": {"batch_size": 0}}, "evaluate.batch_size: expected int >= 1, got int 0"),
    ({"evaluate": {"lambda_value": 5}}, "evaluate.lambda_value: expected float in [0, 1], got int 5"),
    ({"evaluate": {"num_workers": -1}}, "evaluate.num_workers: expected int >= 0, got int -1"),
    ({"cache": {"shard_mb": -1}}, "cache.shard_mb: expected int >= 1, got int -1"),
    ({"cache": {"jpeg_quality": 500}}, "cache.jpeg_quality: expected int in [1, 100], got int 500"),
    ({"augment": {"flip_p": 2}}, "augment.flip_p: expected float in [0, 1], got int 2"),
    ({"augment": {"erase_p": -0.1}}, "augment.erase_p: expected float in [0, 1], got float -0.1"),
    ({"train": {"gamma": -1}}, "train.gamma: expected float in (0, 1], got int -1"),
    ({"train": {"label_smoothing": 3}}, "train.label_smoothing: expected float in [0, 1), got int 3"),
    ({"train": {"num_workers": -3}}, "train.num_workers: expected int >= 0, got int -3"),
    ({"train": {"device": "cudaa"}}, "train.device: expected auto | cpu | cuda | cuda:N, got str 'cudaa'"),
    ({"train": {"batch_size": 30}}, "train.batch_size: expected a multiple of num_instances (4): P identities x K "
                                    "tracklets, got int 30"),
    ({"train": {"batch_size": 4}}, "train.batch_size: expected at least 2 identities of num_instances (8)"),
    ({"train": {"milestones": [70, 0]}}, "train.milestones[1]: expected int >= 1, got int 0"),
    ({"train": {"milestones": [9, 3]}}, "train.milestones: expected increasing epochs, got list [9, 3]"),
    ({"train": {"warmup_factor": 0}}, "train.warmup_factor: expected float in (0, 1], got int 0"),
    ({"train": {"val_fraction": 1}}, "train.val_fraction: expected float in [0, 1), got int 1"),
    ({"train": {"channels_last": "yes"}}, "train.channels_last: expected 'auto' | 'on' | 'off', got str 'yes'"),
    ({"train": {"level_weights": [1, 1]}, "model": {"seq_len": 8}},
     "train.level_weights: expected [] or 3 weights, one per pyramid level of model.arch psta with seq_len 8"),
    ({"train": {"bn_groups": 0}}, "train.bn_groups: expected int >= 1, got int 0"),
    ({"train": {"bn_groups": 3}}, "train.bn_groups: expected a divisor of batch_size (32): equal BatchNorm groups, "
                                  "got int 3"),
    ({"train": {"select": "best_test"}}, "train.select: expected 'last' | 'best_val', got str 'best_test'"),
    ({"train": {"select": "best_val"}}, "train.select: expected 'last' unless validation identities are held out"),
    ({"cache": {"train_interpolation": "nearest"}},
     "cache.train_interpolation: expected 'bicubic' | 'bilinear', got str 'nearest'"),
    ({"cache": {"test_interpolation": "lanczos"}},
     "cache.test_interpolation: expected 'bicubic' | 'bilinear', got str 'lanczos'"),
    ({"evaluate": {"max_clips": -1}}, "evaluate.max_clips: expected int >= 0, got int -1"),
    ({"evaluate": {"seed": -2}}, "evaluate.seed: expected int >= 0, got int -2"),
    ({"retrain": {"cron": "every sunday"}}, "retrain.cron: expected a cron expression Prefect accepts"),
    ({"retrain": {"cron": "61 * * * *"}}, "retrain.cron: expected a cron expression Prefect accepts"),
    ({"retrain": {"branch": "my branch"}}, "retrain.branch: expected a git branch name (letters, digits"),
    ({"retrain": {"branch": "a..b"}}, "retrain.branch: expected a git branch name"),
    ({"retrain": {"git_remote": ""}}, "retrain.git_remote: expected a git remote name"),
    ({"synthetic": {"cameras_per_id": [2, 7]}}, "synthetic.cameras_per_id: expected [lo, hi] with 2 <= lo <= hi "
                                                "<= 6 (the layout's cameras), got list [2, 7]"),
    ({"synthetic": {"layout": "duke", "cameras_per_id": [2, 9]}}, "synthetic.cameras_per_id: expected [lo, hi] "
                                                                  "with 2 <= lo <= hi <= 8"),
    ({"synthetic": {"cameras_per_id": [2]}}, "synthetic.cameras_per_id: expected a list of 2 ints, got list [2]"),
    ({"synthetic": {"min_len": 30, "max_len": 20}}, "synthetic.max_len: expected >= min_len (30), got int 20"),
    ({"synthetic": {"jpeg_quality": 0}}, "synthetic.jpeg_quality: expected int in [1, 100], got int 0"),
    ({"videos": {"test_fraction": 1.0}}, "videos.test_fraction: expected float in (0, 1), got float 1.0"),
    ({"videos": {"max_tracklet_len": 1000}}, "videos.max_tracklet_len: expected int in [1, 999], got int 1000"),
    ({"gallery": {"index": "annoy"}}, "gallery.index: expected 'flat' | 'hnsw' | 'ivf', got str 'annoy'"),
    ({"gallery": {"splits": []}}, "gallery.splits: expected auto or a non-empty list of distinct splits"),
    ({"gallery": {"splits": ["query", "query"]}}, "gallery.splits: expected auto or a non-empty list of distinct"),
    ({"gallery": {"splits": ["test"]}}, "gallery.splits: expected auto or a non-empty list of distinct splits (train, "
                                        "query, gallery), got list ['test']"),
    ({"gallery": {"hnsw_m": 1}}, "gallery.hnsw_m: expected int in [2, 256], got int 1"),
    ({"gallery": {"hnsw_ef_search": 0}}, "gallery.hnsw_ef_search: expected int in [1, 4096], got int 0"),
    ({"gallery": {"hnsw_ef_construction": 10_000}}, "gallery.hnsw_ef_construction: expected int in [1, 4096]"),
    ({"gallery": {"ivf_nlist": -1}}, "gallery.ivf_nlist: expected int in [0, 1000000], got int -1"),
    ({"gallery": {"ivf_nprobe": 0}}, "gallery.ivf_nprobe: expected int in [1, 1000000], got int 0"),
    ({"gallery": {"ivf_nlist": 16, "ivf_nprobe": 32}}, "gallery.ivf_nprobe: expected at most ivf_nlist (16): the "
                                                      "lists visited per query are some of the lists, got int 32"),
    ({"report": {"num_examples": -1}}, "report.num_examples: expected int >= 0, got int -1"),
    ({"evaluate": {"target_fpr": 0}}, "evaluate.target_fpr: expected float in (0, 1), got int 0"),
    ({"evaluate": {"target_fpr": 1.5}}, "evaluate.target_fpr: expected float in (0, 1), got float 1.5"),
    ({"evaluate": {"bootstrap": -1}}, "evaluate.bootstrap: expected int >= 0, got int -1"),
    ({"tracking": {"experiment": ""}}, "tracking.experiment: expected str"),
]


@pytest.mark.parametrize("raw, message", OUT_OF_RANGE, ids=[m.split(":")[0] for _, m in OUT_OF_RANGE])
def test_out_of_range_values_are_one_line_naming_key_value_and_range(raw, message):
    with pytest.raises(ParamsError) as err:
        parse_params(raw)
    text = str(err.value)
    assert message in text
    assert text.startswith("params.yaml: ") and text.endswith("; fix it in params.yaml") and "\n" not in text


def test_gallery_section_takes_a_list_of_splits_and_gives_the_index_its_knobs():
    gallery = parse_params({"gallery": {"splits": ["query", "gallery"], "index": "ivf", "ivf_nlist": 64,
                                        "ivf_nprobe": 64}}).gallery
    assert gallery.splits == ("query", "gallery")
    assert gallery.index_config().to_dict() == {"index": "ivf", "hnsw_m": 32, "hnsw_ef_construction": 80,
                                                "hnsw_ef_search": 128, "ivf_nlist": 64, "ivf_nprobe": 64}


def test_several_problems_are_all_named_on_one_line():
    with pytest.raises(ParamsError) as err:
        parse_params({"train": {"gamma": -1, "epochs": 0, "learning_rate": 1}})
    text = str(err.value)
    assert "\n" not in text
    for part in ("unknown key(s) train.learning_rate", "train.gamma: expected", "train.epochs: expected"):
        assert part in text


def _is_checked(section: type[BaseModel], name: str) -> bool:
    info = section.model_fields[name]
    tp = info.annotation
    if typing.get_origin(tp) is typing.Literal or tp is bool or info.metadata:
        return True
    if typing.get_origin(tp) is tuple:  # every item has a range, or the section checks the list
        return True
    decorators = section.__pydantic_decorators__
    return any(name in d.info.fields for d in decorators.field_validators.values())


@pytest.mark.parametrize("name", SECTIONS)
def test_every_key_has_a_range_or_a_choice(name):
    """Each knob refuses nonsense up front: a bound, a Literal, or a validator of its own."""
    section = Params.model_fields[name].annotation
    unchecked = [key for key in section.model_fields if not _is_checked(section, key)]
    assert not unchecked, f"give {name}.{unchecked} a range (Field(ge=, le=)), a Literal or a validator"


def test_library_configs_raise_the_same_one_line_error():
    from psta.data.synthetic import SyntheticConfig
    from psta.engine import TrainConfig

    with pytest.raises(ConfigError, match=r"^TrainConfig\.gamma: expected float in \(0, 1\], got int -1$"):
        TrainConfig(gamma=-1)
    with pytest.raises(ConfigError, match=r"^SyntheticConfig\.max_pid: expected at least"):
        SyntheticConfig(num_train_ids=1000, num_test_ids=1000)
    assert TrainConfig.from_dict({"milestones": [5, 9]}).milestones == (5, 9)
    assert issubclass(ParamsError, UserError) and issubclass(FieldError, ValueError)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "params.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML") as err:
        load_params(bad)
    assert "\n" not in str(err.value)


def test_values_are_read_as_dvc_writes_them(tmp_path):
    # `dvc exp run -S train.weight_decay=1e-5` writes `1e-05`, which PyYAML would read as a string
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  weight_decay: 1e-05\n  channels_last: on\nsynthetic:\n  num_cameras:\n")
    params = load_params(path)
    assert params.train.weight_decay == 1e-5 and params.train.channels_last == "on"
    assert params.synthetic.num_cameras is None


def test_digest_changes_only_with_the_named_sections():
    a = parse_params({"synthetic": {"seed": 1}})
    b = parse_params({"synthetic": {"seed": 2}})
    assert a.digest("data") == b.digest("data")
    assert a.digest("synthetic") != b.digest("synthetic")
    assert a.digest() != b.digest()


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_configs_are_complete_and_hold_the_recipe(name):
    path = REPO / "configs" / f"{name}.yaml"
    params = load_params(path)
    raw = yaml.safe_load(path.read_text())
    assert set(raw) == set(SECTIONS)
    assert params.data.source == name.split("_")[1]
    assert (params.model.backbone, params.model.pretrained) == ("resnet50", "imagenet")
    assert (params.model.height, params.model.width, params.model.seq_len) == (256, 128, 8)
    assert params.train.epochs == 500 and params.train.milestones == (70, 140, 210, 310, 410)
    assert params.train.batch_size == 32 and params.train.num_instances == 4
    # the reference's recipe: fp32 throughout, the mean of the level losses (CE + triplet, each
    # weighted 1), train frames resized bicubically and test frames bilinearly, <= 200 dense clips
    assert params.train.precision == "fp32" and params.evaluate.precision == "fp32"
    assert params.train.level_weights == () and (params.train.ce_weight, params.train.triplet_weight) == (1, 1)
    assert (params.cache.train_interpolation, params.cache.test_interpolation) == ("bicubic", "bilinear")
    assert params.evaluate.max_clips == 200
    assert params.train.bn_groups == 2  # BatchNorm over 16 clips, the loss over all 32, as on 2 GPUs
    assert params.train.select == "last"  # never the test set


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


# ------------------------------------------------------------------ what the machine must give
def cpu_only(monkeypatch):
    monkeypatch.setattr("pipeline.preflight._cuda_devices", lambda: 0)


@pytest.mark.parametrize("raw, stage, message", [
    ({"train": {"precision": "fp16"}}, "train",
     "train.precision: expected auto, fp32 or bf16 here: fp16 trains on a CUDA device only, got str 'fp16'"),
    ({"evaluate": {"precision": "fp16"}}, "evaluate",
     "evaluate.precision: expected auto, fp32 or bf16 here: fp16 needs a CUDA device, got str 'fp16'"),
    ({"train": {"device": "cuda:1"}}, "train",
     "train.device: expected auto or cpu on this machine (no CUDA device), got str 'cuda:1'"),
    ({"train": {"resume": "nowhere/checkpoint.pt"}}, "train",
     "train.resume: expected auto, never, or an existing checkpoint file (or a folder holding checkpoint.pt); "
     "nothing is there, got str 'nowhere/checkpoint.pt'"),
])
def test_what_the_machine_lacks_is_the_same_kind_of_error(monkeypatch, raw, stage, message):
    cpu_only(monkeypatch)
    params = parse_params(raw)
    with pytest.raises(ParamsError) as err:
        check_stages(params, (stage,))
    assert str(err.value) == f"params.yaml: {message}; fix it in params.yaml"
    check_stages(params, ("ingest", "index", "cache", "report"))  # stages that do not need it pass


def test_resume_from_an_existing_checkpoint_and_torchrun_batch_split(monkeypatch, tmp_path):
    cpu_only(monkeypatch)
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    check_stages(parse_params({"train": {"resume": str(tmp_path)}}), ("train",))
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ParamsError, match=r"train.batch_size: expected a multiple of WORLD_SIZE x num_instances "
                                          r"\(3 x 4\) under torchrun, got int 32"):
        check_stages(parse_params({"train": {"batch_size": 32}}), ("train",))
    monkeypatch.setenv("WORLD_SIZE", "2")  # 24 clips split into 8 groups, but 12 per rank do not
    with pytest.raises(ParamsError, match=r"train.bn_groups: expected a divisor of the 12 clips each of the 2 "
                                          r"torchrun ranks trains on per step, got int 8"):
        check_stages(parse_params({"train": {"batch_size": 24, "bn_groups": 8}}), ("train",))


# ------------------------------------------------------------------ DVC's writer: one line per -S
@pytest.mark.parametrize("name", PARAMS_FILES)
@pytest.mark.parametrize("override, line", [
    ("train.epochs=3", "  epochs: 3"),
    ("train.lr=1e-5", "  lr: 1e-05"),
    ("retrain.cron=0 4 * * 1", "  cron: 0 4 * * 1"),
    ("synthetic.seed=7", "  seed: 7"),
    ("data.split=3", "  split: 3"),
])
def test_dvc_set_param_changes_exactly_one_line_and_keeps_the_comments(tmp_path, name, override, line):
    from dvc.utils.hydra import apply_overrides  # what `dvc exp run -S` calls to rewrite params

    path = tmp_path / "params.yaml"
    shutil.copy(REPO / name, path)
    before = path.read_text()
    apply_overrides(path, [override])
    after = path.read_text()
    changed = [d for d in difflib.ndiff(before.splitlines(), after.splitlines()) if d[:2] in ("- ", "+ ")]
    assert len(changed) == 2, "\n".join(changed)
    assert changed[1].startswith(f"+ {line}")
    assert after.count("#") == before.count("#")
    load_params(path)


def test_cli_and_library_errors_share_one_base():
    from psta.data.cache import CacheError
    from psta.errors import DatasetError, IntegrityError
    from psta.model import CheckpointMismatchError, PretrainedWeightsError
    from psta.report.inputs import ReportInputError

    for cls, builtin in ((DatasetError, ValueError), (CacheError, ValueError), (ParamsError, ValueError),
                         (PretrainedWeightsError, FileNotFoundError), (ReportInputError, FileNotFoundError),
                         (CheckpointMismatchError, RuntimeError), (ConfigError, ValueError),
                         (IntegrityError, ValueError)):
        assert issubclass(cls, UserError) and issubclass(cls, builtin), cls
