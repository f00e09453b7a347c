"""params.yaml: typed sections, validated once at the stage boundary.

Every knob of the pipeline lives in params.yaml, grouped by the stage that reads it. Loading
checks every key against the dataclasses below, so a typo or an ill-typed value is one clear
error naming the key and the fix, before any long work starts.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.dvcfile import check_dataset_root
from psta.data.registry import dataset_names, synthetic_layouts
from psta.data.videos import VideoIngestConfig
from psta.engine.trainer import TrainConfig

DEFAULT_PARAMS = Path("params.yaml")


class ParamsError(ValueError):
    """params.yaml is missing, unknown or ill-typed."""


@dataclass(frozen=True)
class DataParams:
    # synthetic | a registered dataset (psta.data.registry: mars, duke, ...) | videos
    source: Literal[("synthetic", *dataset_names(), "videos")] = "synthetic"
    # the dataset folder itself (holding bbox_train/ and info/ for MARS, train/ query/ gallery/
    # for Duke, <camera>.mp4 + <camera>.txt for videos), read in place; never inside an output
    # of dvc.yaml (pipeline.dvcfile); unused by synthetic (generated into data/generated/)
    root: str = "datasets/MARS"
    on_bad_frame: Literal["error", "skip"] = "error"
    # a frame not at the dataset's size (MARS: 256 x 128) is an error; else counted and warned
    strict_frame_size: bool = False


@dataclass(frozen=True)
class SyntheticParams:
    """psta.data.synthetic.SyntheticConfig, plus which layout to write."""

    layout: Literal[synthetic_layouts()] = "mars"  # a registered dataset with a synthetic writer
    seed: int = 0
    num_train_ids: int = 48
    num_test_ids: int = 48
    num_cameras: int | None = None
    cameras_per_id: tuple[int, ...] = (2, 3)
    tracklets_per_camera: tuple[int, ...] = (1, 2)
    min_len: int = 8
    max_len: int = 48
    height: int = 128
    width: int = 64
    num_distractor_tracklets: int = 24
    num_junk_tracklets: int = 12
    num_distractor_ids: int = 12
    old_style_fraction: float = 0.3
    f0002_fraction: float = 0.1
    occlusion_prob: float = 0.25
    jpeg_quality: int = 90

    def config(self):
        from psta.data.synthetic import SyntheticConfig

        values = {k: v for k, v in dataclasses.asdict(self).items() if k != "layout"}
        return SyntheticConfig(**values)


@dataclass(frozen=True)
class ModelParams:
    arch: Literal["psta", "tap"] = "psta"
    backbone: Literal["resnet50", "resnet34", "resnet18"] = "resnet50"
    # none | imagenet | a path to a backbone .pth (see README: ImageNet weights)
    pretrained: str = "none"
    seq_len: int = 8
    height: int = 256
    width: int = 128


@dataclass(frozen=True)
class CacheParams:
    format: Literal["auto", "raw", "jpeg"] = "auto"
    shard_mb: int = 1024
    num_workers: int = 2
    jpeg_quality: int = 95


@dataclass(frozen=True)
class AugmentParams:
    flip_p: float = 0.5
    erase_p: float = 0.5


@dataclass(frozen=True)
class EvaluateParams:
    # auto: the paper's test sampling, begin-interval for MARS and dense for Duke
    sampling: Literal["auto", "begin", "dense", "all"] = "auto"
    metric: Literal["cosine", "euclidean"] = "cosine"
    rerank: bool = False
    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3
    batch_size: int = 32
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    num_workers: int = 2
    max_rank: int = 50
    untrained_baseline: bool = True


@dataclass(frozen=True)
class ReportParams:
    num_examples: int = 3  # best and worst queries shown as ranked lists


@dataclass(frozen=True)
class TrackingParams:
    experiment: str = "psta"


@dataclass(frozen=True)
class RetrainParams:
    """The scheduled retraining deployment (`python -m pipeline serve`, pipeline/retrain.py)."""

    cron: str = "0 3 * * 0"  # when the deployment runs (UTC): Sundays 03:00
    push: bool = True  # `dvc push` the new outputs to the default DVC remote afterwards


@dataclass(frozen=True)
class Params:
    data: DataParams = field(default_factory=DataParams)
    synthetic: SyntheticParams = field(default_factory=SyntheticParams)
    # data.source=videos: psta.data.videos' own config, one definition of every knob
    videos: VideoIngestConfig = field(default_factory=VideoIngestConfig)
    model: ModelParams = field(default_factory=ModelParams)
    cache: CacheParams = field(default_factory=CacheParams)
    augment: AugmentParams = field(default_factory=AugmentParams)
    # the training section is the engine's own config: one definition of every knob
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    report: ReportParams = field(default_factory=ReportParams)
    tracking: TrackingParams = field(default_factory=TrackingParams)
    retrain: RetrainParams = field(default_factory=RetrainParams)

    def section(self, name: str) -> dict[str, Any]:
        return dataclasses.asdict(getattr(self, name))

    def sections(self, *names: str) -> dict[str, dict[str, Any]]:
        return {name: self.section(name) for name in names}

    def digest(self, *names: str) -> str:
        """A short hash of the named sections (all when none), for run tags and cache keys."""
        chosen = self.sections(*names) if names else dataclasses.asdict(self)
        blob = json.dumps(chosen, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(v) for v in typing.get_args(tp))
    if typing.get_origin(tp) in (list, tuple):
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
    elif isinstance(tp, types.UnionType) or origin is typing.Union:
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, where)
            except ParamsError:
                continue
    elif origin in (list, tuple):
        if isinstance(value, list):
            return tuple(_coerce(v, typing.get_args(tp)[0], f"{where}[{i}]") for i, v in enumerate(value))
    elif tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ParamsError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _build(cls: type, raw: Any, where: str, source: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: '{where}' must be a mapping of keys, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ParamsError(
            f"{source}: unknown key(s) {', '.join(f'{where}.{k}' for k in unknown)}; "
            f"'{where}' accepts: {', '.join(sorted(known))}"
        )
    values = {}
    for name in raw:
        tp = hints[name]
        key = f"{where}.{name}"
        if dataclasses.is_dataclass(tp):
            values[name] = _build(tp, raw[name], key, source)
        else:
            try:
                values[name] = _coerce(raw[name], tp, key)
            except ParamsError as err:
                raise ParamsError(f"{source}: {err}; fix the value in {source}") from None
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise ParamsError(f"{source}: section '{where}': {err}; fix the value in {source}") from None


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: the top level must be a mapping of sections")
    hints = typing.get_type_hints(Params)
    unknown = sorted(set(raw) - set(hints))
    if unknown:
        raise ParamsError(
            f"{source}: unknown section(s) {', '.join(unknown)}; known sections: {', '.join(hints)}"
        )
    return Params(**{name: _build(hints[name], raw[name], name, source) for name in raw})


def load_params(path: str | Path = DEFAULT_PARAMS) -> Params:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: not found; run from the repository root or pass --params PATH")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    params = parse_params(raw, source=str(path))
    check_dataset_root(params.data.source, params.data.root, params_file=str(path))
    return params
