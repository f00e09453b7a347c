"""TrainConfig: every knob of training. The defaults are the reference's recipe (docs/SPEC.md)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from psta.model.precision import PRECISIONS

__all__ = ["TrainConfig", "SELECTIONS", "RESUME_FREE_KEYS"]

#: which weights become model.pt: the last epoch's, or the best held-out validation epoch's
SELECTIONS = ("last", "best_val")
#: settings that may change between a run and its resumption without changing the result
RESUME_FREE_KEYS = frozenset({"epochs", "resume", "progress", "log_every_steps", "eval_every",
                              "checkpoint_every_steps", "num_workers"})


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of training; the defaults are the reference's recipe."""

    # --- schedule (per epoch) and optimiser
    epochs: int = 500
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    warmup_epochs: int = 10
    warmup_factor: float = 0.01
    milestones: tuple[int, ...] = (70, 140, 210, 310, 410)
    gamma: float = 0.3
    # --- batches: global batch = batch_size clips (P identities x num_instances), split over ranks
    batch_size: int = 32
    num_instances: int = 4
    num_workers: int = 4
    max_steps_per_epoch: int = 0          # 0: the sampler's whole epoch
    # BatchNorm sees batch / bn_groups clips at a time (the reference's 2-GPU DataParallel: 2),
    # while the loss and its hard-triplet mining see the whole batch
    bn_groups: int = 1
    # --- loss
    label_smoothing: float = 0.1
    triplet_margin: float = 0.3
    triplet_distance: str = "cosine"      # cosine | euclidean
    ce_weight: float = 1.0
    triplet_weight: float = 1.0
    level_weights: tuple[float, ...] = ()  # per pyramid level; empty: 1 / levels each (the mean)
    # --- runtime
    device: str = "auto"                  # auto | cpu | cuda | cuda:N
    precision: str = "auto"               # auto | fp32 | bf16 | fp16 (fp16: CUDA only)
    channels_last: str = "auto"           # auto (on for CUDA) | on | off
    seed: int = 0
    deterministic: bool = False           # torch.use_deterministic_algorithms, no cudnn.benchmark
    sync_bn: bool = False                 # SyncBatchNorm under DDP (the paper: no)
    find_unused_parameters: bool = False
    # --- checkpoints, logs, validation, model selection
    resume: str = "auto"                  # auto | never | <path to a checkpoint or its folder>
    checkpoint_every_steps: int = 0       # 0: only at the end of every epoch
    log_every_steps: int = 20
    progress: bool = True                 # tqdm bar (rank 0, and only when stderr is a terminal)
    eval_every: int = 10                  # epochs; 0: never (except with evaluate at the end)
    val_fraction: float = 0.0             # share of training identities held out for validation
    val_ids: tuple[int, ...] = ()         # or: these training labels held out
    select: str = "last"                  # last | best_val (best held-out rank-1, then mAP)

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> None:
            raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r}: {why}")

        for name in ("epochs", "batch_size", "num_instances", "bn_groups"):
            if int(getattr(self, name)) < 1:
                bad(name, "must be >= 1")
        for name in ("warmup_epochs", "num_workers", "max_steps_per_epoch", "checkpoint_every_steps",
                     "eval_every", "log_every_steps"):
            if int(getattr(self, name)) < 0:
                bad(name, "must be >= 0")
        if self.batch_size % self.num_instances:
            bad("batch_size", f"must be a multiple of num_instances={self.num_instances}")
        if self.batch_size % self.bn_groups:
            bad("bn_groups", f"must divide batch_size={self.batch_size}")
        if self.lr <= 0:
            bad("lr", "must be > 0")
        if self.precision not in PRECISIONS:
            bad("precision", f"choose one of {', '.join(PRECISIONS)}")
        if str(self.channels_last).lower() not in ("auto", "on", "off", "true", "false"):
            bad("channels_last", "choose auto, on or off")
        if self.triplet_distance not in ("cosine", "euclidean"):
            bad("triplet_distance", "choose cosine or euclidean")
        if not 0.0 <= self.val_fraction < 1.0:
            bad("val_fraction", "must be in [0, 1)")
        if self.val_fraction and self.val_ids:
            bad("val_ids", "give either val_fraction or val_ids, not both")
        if self.select not in SELECTIONS:
            bad("select", f"choose one of {', '.join(SELECTIONS)}")
        if self.select == "best_val" and not (self.val_fraction or self.val_ids):
            bad("select", "best_val needs held-out validation identities: set val_fraction or val_ids")
        if list(self.milestones) != sorted(self.milestones):
            bad("milestones", "must be increasing")
        # normalise sequences to tuples (a list from YAML / JSON is accepted)
        for name in ("milestones", "level_weights", "val_ids"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrainConfig":
        """Build from a mapping (e.g. a params.yaml section); unknown keys are a clear error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig key(s): {', '.join(unknown)}; "
                             f"accepted: {', '.join(sorted(known))}")
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers, strings, bools and lists (JSON / weights_only-safe)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}
