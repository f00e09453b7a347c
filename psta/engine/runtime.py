"""Where and how training runs: device, seeds, determinism flags (the autocast dtype:
psta.model.precision.resolve_precision)."""
from __future__ import annotations

import contextlib
import os
import random
from typing import Iterator

import numpy as np
import torch

from .distributed import DistInfo

__all__ = ["resolve_device", "seed_everything", "seed_worker",
           "use_channels_last", "determinism"]


def resolve_device(device: str = "auto", dist_info: DistInfo | None = None) -> torch.device:
    """``auto``: ``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``."""
    local = dist_info.local_rank if dist_info is not None else 0
    if device == "auto":
        return torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} but CUDA is not available; use device='auto' or 'cpu'")
        if dev.index is None:
            dev = torch.device("cuda", local)
    return dev


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:  # DataLoader worker_init_fn (top level: picklable)
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def use_channels_last(setting: str | bool, device: torch.device) -> bool:
    s = str(setting).lower()
    return device.type == "cuda" if s == "auto" else s in ("on", "true")


@contextlib.contextmanager
def determinism(deterministic: bool, device: torch.device) -> Iterator[None]:
    """Deterministic algorithms (or cudnn.benchmark on CUDA) for the block; the flags restored after."""
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2:]
