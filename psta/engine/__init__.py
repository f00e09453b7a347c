"""Training engine.

    from psta.engine import TrainConfig, train

Modules: :mod:`.config` (TrainConfig), :mod:`.trainer` (the loop), :mod:`.loader` (resumable
identity batches), :mod:`.validation` (held-out identities), :mod:`.bn_groups` (BatchNorm as on
several DataParallel GPUs), :mod:`.checkpoint`, :mod:`.distributed` (torchrun / DDP set-up),
:mod:`.runtime` (device, precision, seeds), :mod:`.inference` (test embeddings).
"""
from .bn_groups import forward_in_groups
from .checkpoint import (
    CHECKPOINT_NAME,
    MODEL_NAME,
    TRAIN_STATE_FORMAT,
    capture_rng_state,
    find_resume_checkpoint,
    load_training_state,
    restore_rng_state,
    save_training_state,
)
from .config import SELECTIONS, TrainConfig
from .distributed import DistInfo, env_dist_info, init_distributed
from .loader import ResumableBatchSampler
from .runtime import resolve_device, seed_everything
from .trainer import HISTORY_NAME, TrainResult, build_criterion, epoch_summary, train
from .validation import HeldoutEvaluator, split_validation

__all__ = [
    "TrainConfig", "SELECTIONS", "TrainResult", "train", "HeldoutEvaluator", "split_validation",
    "build_criterion", "epoch_summary", "forward_in_groups", "resolve_device",
    "seed_everything", "ResumableBatchSampler", "DistInfo", "env_dist_info", "init_distributed",
    "CHECKPOINT_NAME", "MODEL_NAME", "HISTORY_NAME", "TRAIN_STATE_FORMAT",
    "save_training_state", "load_training_state", "find_resume_checkpoint",
    "capture_rng_state", "restore_rng_state",
]
