"""Training engine: the loop (:mod:`.trainer`), checkpoints (:mod:`.checkpoint`), DDP set-up
(:mod:`.distributed`).

    from psta.engine import TrainConfig, train
"""
from .checkpoint import (
    CHECKPOINT_NAME,
    MODEL_NAME,
    TRAIN_STATE_FORMAT,
    capture_rng_state,
    find_resume_checkpoint,
    load_final_model,
    load_training_state,
    restore_rng_state,
    save_final_model,
    save_training_state,
    unwrap_model,
)
from .distributed import DistInfo, env_dist_info, init_distributed
from .trainer import (
    HISTORY_NAME,
    HeldoutEvaluator,
    ResumableBatchSampler,
    TrainConfig,
    TrainResult,
    build_criterion,
    resolve_autocast_dtype,
    resolve_device,
    seed_everything,
    split_validation,
    train,
)

__all__ = [
    "TrainConfig", "TrainResult", "train", "HeldoutEvaluator", "split_validation",
    "build_criterion", "resolve_device", "resolve_autocast_dtype", "seed_everything",
    "ResumableBatchSampler", "DistInfo", "env_dist_info", "init_distributed",
    "CHECKPOINT_NAME", "MODEL_NAME", "HISTORY_NAME", "TRAIN_STATE_FORMAT",
    "save_training_state", "load_training_state", "find_resume_checkpoint",
    "save_final_model", "load_final_model", "capture_rng_state", "restore_rng_state", "unwrap_model",
]
