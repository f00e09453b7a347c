"""The served model: an MLflow pyfunc (models from code) that takes raw pixels.

Input: uint8 RGB frames ``B x T x H x W x 3`` at any ``H x W``. Each of the B clips is
resized to the model's input size (bicubic, antialias, as the frame cache) and ImageNet-
normalised, and its T frames are sampled with the evaluation's test sampling (T equal to the
model's clip length uses every frame as it is; a longer T, a whole tracklet, is sampled as
evaluation samples a tracklet). Output: float32 ``B x D`` L2-normalised embeddings; cosine
distance = 1 - dot product.

MLflow executes this file when it loads the model (``psta`` travels with the model as code),
so it imports nothing of the project but ``psta``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.models import set_model
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

CONTRACT = "uint8 RGB frames B x T x H x W x 3 (integers 0-255)"
INPUT = "frames"
# set by `mlflow models serve` in the scoring server's process (mlflow.pyfunc.scoring_server)
SERVING_ENV = "__pyfunc_model_path__"


def check_frames(frames) -> np.ndarray:
    """The input as a uint8 array of rank 5, or one short error saying what is wrong."""
    if isinstance(frames, dict) and set(frames) == {INPUT}:  # the scoring server names the tensor
        frames = frames[INPUT]
    array = np.asarray(frames)
    problem = None
    if array.dtype != np.uint8:
        problem = f"dtype {array.dtype}"
    elif array.ndim != 5 or array.shape[-1] != 3:
        problem = f"shape {tuple(array.shape)}"
    elif min(array.shape[:4]) < 1:
        problem = f"empty shape {tuple(array.shape)}"
    if problem is not None:
        raise MlflowException(f"expected {CONTRACT}, got {problem}", error_code=INVALID_PARAMETER_VALUE)
    return array


class PixelEmbedder(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from psta.model import load_checkpoint

        self.model, _ = load_checkpoint(context.artifacts["checkpoint"])
        self.serving = json.loads(Path(context.artifacts["serving"]).read_text())
        if os.environ.get(SERVING_ENV):
            # the scoring server quotes the request's array in every 400 it returns; keep that
            # quote to numpy's summary (shape and dtype) instead of thousands of pixel values
            np.set_printoptions(threshold=0, edgeitems=0)

    def predict(self, context, model_input, params=None) -> np.ndarray:
        import torch

        from psta.search.frames import embed_frame_sets

        frames = torch.from_numpy(np.ascontiguousarray(check_frames(model_input))).permute(0, 1, 4, 2, 3)
        s = self.serving
        return embed_frame_sets(self.model, list(frames), seq_len=s["seq_len"], height=s["height"],
                                width=s["width"], sampling=s["sampling"], max_clips=s.get("max_clips", 200),
                                seed=s.get("seed", 0), batch_size=s["batch_size"],
                                precision=s["precision"])


set_model(PixelEmbedder())
