"""params.yaml: typed sections, validated once, before any work or server starts.

Every knob of the pipeline lives in params.yaml, grouped by the stage that reads it. Each section
is declared once, as a :class:`psta.config.Section` (a strict, frozen pydantic model): the
library's own configs (``TrainConfig``, ``SyntheticConfig``, ``VideoIngestConfig``) are the
``train``, ``synthetic`` and ``videos`` sections, the others are declared here. Loading checks
every key, type, range and cross-field rule and turns every problem into ONE line naming the
key, the value, what is allowed and the file to fix::

    params.yaml: train.gamma: expected float in (0, 1], got int -1; fix it in params.yaml

A new key: add it to params.yaml (with a comment) and to its section below (type, default,
range as ``Field(default, ge=..., le=...)``, a ``Literal`` for a choice).
What the machine must provide (CUDA, files named in params) is checked by
:mod:`pipeline.preflight`.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from pipeline.dvcfile import check_dataset_root
from psta.config import FieldError, Section, Seq
from psta.data.registry import dataset_names, get_dataset, synthetic_layouts
from psta.data.synthetic import SyntheticConfig
from psta.data.videos import VideoIngestConfig
from psta.engine.config import PRECISIONS, TrainConfig
from psta.errors import ConfigError
from psta.search.vectors import IndexConfig
from psta.shapes import BACKBONE_STRIDE, pyramid_levels

DEFAULT_PARAMS = Path("params.yaml")


class ParamsError(ConfigError):
    """params.yaml is missing, malformed, or has an unknown, ill-typed or out-of-range value."""


class DataParams(Section):
    # synthetic | a registered dataset (psta.data.registry: mars, duke, ...) | videos
    source: Literal[("synthetic", *dataset_names(), "videos")] = "synthetic"
    # the dataset folder itself (holding bbox_train/ and info/ for MARS, train/ query/ gallery/
    # for Duke, <camera>.mp4 + <camera>.txt for videos), read in place; never inside an output
    # of dvc.yaml (pipeline.dvcfile); unused by synthetic (generated into data/generated/)
    root: str = Field("datasets/MARS", min_length=1)
    on_bad_frame: Literal["error", "skip"] = "error"
    # a frame not at the dataset's size (MARS: 256 x 128) is an error; else counted and warned
    strict_frame_size: bool = False
    # which of the 10 published train/test splits (iLIDS-VID, PRID-2011); 0 for the others
    split: int = Field(0, ge=0, le=9)
    # PRID-2011 without splits_prid2011.json in data.root: iLIDS-VID's train_test_splits_prid.mat
    split_file: str | None = Field(None, min_length=1)
    # PRID-2011 with neither: the seed of the 10 drawn splits (written to data/ingest/splits.json)
    split_seed: int = Field(0, ge=0)


class SyntheticParams(SyntheticConfig):
    """psta.data.synthetic.SyntheticConfig, plus which layout to write."""

    layout: Literal[synthetic_layouts()] = "mars"  # a registered dataset with a synthetic writer

    @model_validator(mode="after")
    def _cameras_fit_the_layout(self) -> "SyntheticParams":
        cameras = get_dataset(self.layout).cameras
        if cameras is not None:
            self.cameras_for(cameras)
        return self

    def config(self) -> SyntheticConfig:
        return SyntheticConfig(**self.model_dump(exclude={"layout"}))


class ModelParams(Section):
    arch: Literal["psta", "tap"] = "psta"
    backbone: Literal["resnet50", "resnet34", "resnet18"] = "resnet50"
    # none | imagenet | a path to a backbone .pth (see README: ImageNet weights)
    pretrained: str = Field("none", min_length=1)
    seq_len: int = Field(8, ge=1)
    height: int = 256
    width: int = 128

    @field_validator("height", "width")
    @classmethod
    def _whole_feature_cells(cls, size: int) -> int:
        if size < BACKBONE_STRIDE or size % BACKBONE_STRIDE:
            raise ValueError(f"a multiple of {BACKBONE_STRIDE} (the backbone's stride: 256 x 128 "
                             "gives 16 x 8 feature maps)")
        return size

    @model_validator(mode="after")
    def _pyramid(self) -> "ModelParams":
        if self.arch == "psta":
            try:
                pyramid_levels(self.seq_len)
            except ValueError:
                raise FieldError("seq_len", self.seq_len, "a power of two >= 2 for arch psta (2, 4, 8, "
                                 "16, ...: each pyramid level fuses frame pairs)") from None
        return self

    @property
    def levels(self) -> int:
        """Pyramid levels, i.e. losses per clip: log2(T) for psta, 1 for tap."""
        return pyramid_levels(self.seq_len) if self.arch == "psta" else 1


class CacheParams(Section):
    format: Literal["auto", "raw", "jpeg"] = "auto"
    shard_mb: int = Field(1024, ge=1)
    num_workers: int = Field(2, ge=0)
    jpeg_quality: int = Field(95, ge=1, le=100)
    # frames not already at the model's size are resized (antialiased) as the reference does:
    # training frames bicubically, query / gallery frames bilinearly
    train_interpolation: Literal["bicubic", "bilinear"] = "bicubic"
    test_interpolation: Literal["bicubic", "bilinear"] = "bilinear"


class AugmentParams(Section):
    flip_p: float = Field(0.5, ge=0, le=1)
    erase_p: float = Field(0.5, ge=0, le=1)


class EvaluateParams(Section):
    # auto: the paper's test sampling, begin-interval for MARS and dense for Duke
    sampling: Literal["auto", "begin", "dense", "all"] = "auto"
    metric: Literal["cosine", "euclidean"] = "cosine"
    rerank: bool = False
    k1: int = Field(20, ge=1)
    k2: int = Field(6, ge=1)
    lambda_value: float = Field(0.3, ge=0, le=1)
    batch_size: int = Field(32, ge=1)
    precision: Literal[PRECISIONS] = "auto"
    num_workers: int = Field(2, ge=0)
    max_rank: int = Field(50, ge=20)  # metrics.json reports rank-1/5/10/20
    untrained_baseline: bool = True
    # dense sampling keeps at most max_clips clips per tracklet (the reference: 200; 0: all), a
    # window of consecutive clips whose start is drawn from (seed, tracklet id)
    max_clips: int = Field(200, ge=0)
    seed: int = Field(0, ge=0)
    target_fpr: float = Field(1e-3, gt=0, lt=1)  # the "same person" threshold's FPR on the test pairs
    bootstrap: int = Field(1000, ge=0)  # resamples of the 95% intervals of rank-1 / mAP (0: none)
    bootstrap_seed: int = Field(0, ge=0)


class GalleryParams(IndexConfig):
    """The searchable gallery (pipeline/stages/gallery.py): which tracklets, and the index."""

    # auto: the headline protocol's gallery (MARS: query + gallery rows, Duke: gallery rows;
    # data.source=videos: every tracklet of the cameras), or a list of train / query / gallery
    splits: Seq[Literal["train", "query", "gallery"]] | Literal["auto"] = "auto"

    @field_validator("splits", mode="before")
    @classmethod
    def _some_split(cls, splits):  # before the union's own checks: one message, not one per member
        known = ("train", "query", "gallery")
        if splits != "auto" and not (isinstance(splits, (list, tuple)) and splits and len(set(splits)) == len(splits)
                                     and all(isinstance(s, str) and s in known for s in splits)):
            raise ValueError("auto or a non-empty list of distinct splits (train, query, gallery)")
        return splits

    def index_config(self) -> IndexConfig:
        return IndexConfig(**self.model_dump(exclude={"splits"}))


class ReportParams(Section):
    num_examples: int = Field(3, ge=0)  # best and worst queries shown as ranked lists


class TrackingParams(Section):
    experiment: str = Field("psta", min_length=1)


# a git branch or remote name: the safe subset of what `git check-ref-format` accepts
GIT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*")


class RetrainParams(Section):
    """The scheduled retraining deployment (`python -m pipeline serve`, pipeline/retrain.py)."""

    cron: str = "0 3 * * 0"  # when the deployment runs (UTC): Sundays 03:00
    push: bool = True  # `dvc push` the new outputs to the default DVC remote afterwards
    branch: str = "retrain"  # git branch that records each retrain's dvc.lock and metrics ("": none)
    git_remote: str = "origin"  # the branch is pushed there when that remote exists (and push is on)

    @field_validator("branch", "git_remote")
    @classmethod
    def _git_name(cls, name: str, info) -> str:
        if name == "" and info.field_name == "branch":
            return name
        if not GIT_NAME.fullmatch(name) or ".." in name or name.endswith((".lock", ".")):
            none = ', or "" for none' if info.field_name == "branch" else ""
            raise ValueError(f"a git {info.field_name.replace('git_', '')} name (letters, digits, '.', '_', '-', "
                             f"'/' between parts, e.g. 'retrain'){none}")
        return name

    @field_validator("cron")
    @classmethod
    def _prefect_cron(cls, cron: str) -> str:
        from prefect.client.schemas.schedules import CronSchedule
        from pydantic import ValidationError

        try:
            CronSchedule(cron=cron)
        except ValidationError:
            raise ValueError("a cron expression Prefect accepts: minute hour day-of-month month "
                             "day-of-week, e.g. '0 3 * * 0' (Sundays 03:00 UTC)") from None
        return cron


class Params(Section):
    data: DataParams = Field(default_factory=DataParams)
    synthetic: SyntheticParams = Field(default_factory=SyntheticParams)
    # data.source=videos: psta.data.videos' own config, one definition of every knob
    videos: VideoIngestConfig = Field(default_factory=VideoIngestConfig)
    model: ModelParams = Field(default_factory=ModelParams)
    cache: CacheParams = Field(default_factory=CacheParams)
    augment: AugmentParams = Field(default_factory=AugmentParams)
    # the training section is the engine's own config: one definition of every knob
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    gallery: GalleryParams = Field(default_factory=GalleryParams)
    report: ReportParams = Field(default_factory=ReportParams)
    tracking: TrackingParams = Field(default_factory=TrackingParams)
    retrain: RetrainParams = Field(default_factory=RetrainParams)

    @classmethod
    def _prefix(cls) -> str:
        return ""  # keys read as in params.yaml: train.lr

    @model_validator(mode="after")
    def _across_sections(self) -> "Params":
        weights = self.train.level_weights
        if weights and len(weights) != self.model.levels:
            raise FieldError("train.level_weights", list(weights), f"[] or {self.model.levels} weights, one per "
                             f"pyramid level of model.arch {self.model.arch} with seq_len {self.model.seq_len}")
        return self

    def section(self, name: str) -> dict[str, Any]:
        return getattr(self, name).model_dump()

    def sections(self, *names: str) -> dict[str, dict[str, Any]]:
        return {name: self.section(name) for name in names}

    def digest(self, *names: str) -> str:
        """A short hash of the named sections (all when none), for run tags and cache keys."""
        chosen = self.sections(*(names or type(self).model_fields))
        blob = json.dumps(chosen, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


SECTIONS = tuple(Params.model_fields)


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate a parsed params mapping; any problem is one ParamsError naming the file."""
    if raw is not None and not isinstance(raw, dict):
        raise ParamsError(f"{source}: the top level must be a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.from_dict(raw)
    except ConfigError as err:
        raise ParamsError(f"{source}: {err}; fix it in {source}") from None


def read_yaml(path: str | Path) -> Any:
    """params.yaml as DVC reads it (ruamel, YAML 1.2: `1e-05` is a number, `on` a string)."""
    return YAML(typ="safe").load(Path(path).read_text())


def load_params(path: str | Path = DEFAULT_PARAMS) -> Params:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: not found; run from the repository root or pass --params PATH")
    try:
        raw = read_yaml(path)
    except YAMLError as err:
        where = " ".join(str(err).split())
        raise ParamsError(f"{path}: not valid YAML: {where}") from None
    params = parse_params(raw, source=str(path))
    check_dataset_root(params.data.source, params.data.root, params_file=str(path))
    return params
