"""PSTA model library: backbone, STAM (TRA / SRA), PSTA and TAP, checkpoints, precision.

    from psta.model import build_model
    model = build_model("psta", num_classes=625)          # resnet50, T=8, 256x128
    logits, feats = model(clips)                          # train(): 3 levels each
    emb = model.eval()(clips)                             # B x 1024
"""
from psta.shapes import feature_map_size, pyramid_levels

from .attention import SRA, STAM, TRA, grouped_batch_norm
from .backbone import (
    BACKBONES,
    PretrainedWeightsError,
    ResNetBackbone,
    build_backbone,
    check_pretrained,
    imagenet_weights_file,
)
from .checkpoints import load_checkpoint, load_released_psta, read_checkpoint, save_checkpoint
from .inference import fold_batchnorm, prepare_for_inference
from .precision import autocast_context, cpu_supports_bf16, resolve_precision, to_channels_last
from .psta import ARCHS, PSTA, TAP, build_model, model_from_config
from .state_dict import CheckpointMismatchError, strict_load_state_dict, unwrap_model, unwrap_state_dict

__all__ = [
    "ARCHS", "BACKBONES", "PSTA", "TAP", "STAM", "TRA", "SRA", "ResNetBackbone",
    "build_model", "model_from_config", "build_backbone", "pyramid_levels", "feature_map_size",
    "grouped_batch_norm",
    "check_pretrained", "imagenet_weights_file", "PretrainedWeightsError",
    "load_released_psta", "save_checkpoint", "load_checkpoint", "read_checkpoint", "strict_load_state_dict",
    "unwrap_state_dict", "unwrap_model", "CheckpointMismatchError",
    "resolve_precision", "autocast_context", "cpu_supports_bf16", "to_channels_last",
    "fold_batchnorm", "prepare_for_inference",
]
