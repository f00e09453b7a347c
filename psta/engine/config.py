"""TrainConfig: every knob of training. The defaults are the reference's recipe (docs/SPEC.md)."""
from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from psta.config import FieldError, Section, Seq
from psta.model.precision import PRECISIONS

__all__ = ["TrainConfig", "PRECISIONS", "SELECTIONS", "RESUME_FREE_KEYS"]

#: which weights become model.pt: the last epoch's, or the best held-out validation epoch's
SELECTIONS = ("last", "best_val")
#: settings that may change between a run and its resumption without changing the result
RESUME_FREE_KEYS = frozenset({"epochs", "resume", "progress", "log_every_steps", "eval_every",
                              "checkpoint_every_steps", "num_workers"})
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


class TrainConfig(Section):
    """Every knob of training; the defaults are the reference's recipe."""

    # --- schedule (per epoch) and optimiser
    epochs: int = Field(500, ge=1)
    lr: float = Field(3.5e-4, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    warmup_epochs: int = Field(10, ge=0)
    warmup_factor: float = Field(0.01, gt=0, le=1)
    milestones: Seq[Annotated[int, Field(ge=1)]] = (70, 140, 210, 310, 410)
    gamma: float = Field(0.3, gt=0, le=1)
    # --- batches: global batch = batch_size clips (P identities x num_instances), split over ranks
    batch_size: int = Field(32, ge=1)
    num_instances: int = Field(4, ge=1)
    num_workers: int = Field(4, ge=0)
    max_steps_per_epoch: int = Field(0, ge=0)  # 0: the sampler's whole epoch
    # BatchNorm sees batch / bn_groups clips at a time (the reference's 2-GPU DataParallel: 2),
    # while the loss and its hard-triplet mining see the whole batch
    bn_groups: int = Field(1, ge=1)
    # --- loss
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    triplet_margin: float = Field(0.3, ge=0)
    triplet_distance: Literal["cosine", "euclidean"] = "cosine"
    ce_weight: float = Field(1.0, ge=0)
    triplet_weight: float = Field(1.0, ge=0)
    # per pyramid level; empty: 1 / levels each, the mean (the reference); [1, 1, 1]: the sum
    level_weights: Seq[Annotated[float, Field(ge=0)]] = ()
    # --- runtime
    device: str = "auto"                  # auto | cpu | cuda | cuda:N
    precision: Literal[PRECISIONS] = "auto"  # fp16: CUDA only; the reference: fp32
    channels_last: Literal["auto", "on", "off"] = "auto"  # auto: on for CUDA
    seed: int = Field(0, ge=0)
    deterministic: bool = False           # torch.use_deterministic_algorithms, no cudnn.benchmark
    sync_bn: bool = False                 # SyncBatchNorm under DDP (the paper: no)
    find_unused_parameters: bool = False
    # --- checkpoints, logs, validation, model selection
    resume: str = Field("auto", min_length=1)  # auto | never | <path to a checkpoint or its folder>
    checkpoint_every_steps: int = Field(0, ge=0)  # 0: only at the end of every epoch
    log_every_steps: int = Field(20, ge=0)
    progress: bool = True                 # tqdm bar (rank 0, and only when stderr is a terminal)
    eval_every: int = Field(10, ge=0)     # epochs; 0: never (except with evaluate at the end)
    val_fraction: float = Field(0.0, ge=0, lt=1)  # share of training identities held out for validation
    val_ids: Seq[Annotated[int, Field(ge=0)]] = ()  # or: these training labels held out
    select: Literal[SELECTIONS] = "last"  # best_val: the best held-out rank-1 (then mAP) epoch

    @field_validator("device")
    @classmethod
    def _device(cls, device: str) -> str:
        if not _DEVICE.fullmatch(device):
            raise ValueError("auto | cpu | cuda | cuda:N")
        return device

    @model_validator(mode="after")
    def _consistent(self) -> "TrainConfig":
        if self.batch_size % self.num_instances:
            raise FieldError("batch_size", self.batch_size,
                             f"a multiple of num_instances ({self.num_instances}): P identities x K tracklets")
        if self.batch_size // self.num_instances < 2:
            raise FieldError("batch_size", self.batch_size, f"at least 2 identities of num_instances "
                             f"({2 * self.num_instances}): the triplet loss needs negatives in the batch")
        if self.batch_size % self.bn_groups:
            raise FieldError("bn_groups", self.bn_groups,
                             f"a divisor of batch_size ({self.batch_size}): equal BatchNorm groups")
        if any(b <= a for a, b in zip(self.milestones, self.milestones[1:])):
            raise FieldError("milestones", list(self.milestones), "increasing epochs")
        if self.val_fraction and self.val_ids:
            raise FieldError("val_ids", list(self.val_ids), "[] when val_fraction is set (give either, not both)")
        if self.select == "best_val" and not (self.val_fraction or self.val_ids):
            raise FieldError("select", self.select, "'last' unless validation identities are held out "
                             "(best_val needs held-out validation identities: set val_fraction or val_ids)")
        return self
