"""Process-group set-up for ``torchrun`` launches (DistributedDataParallel).

``torchrun --nproc_per_node N ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` in every process. :func:`init_distributed` reads them; with ``WORLD_SIZE > 1`` it
initialises the default process group (``nccl`` on CUDA, ``gloo`` on CPU) and pins the process to
``cuda:LOCAL_RANK``. Without them (a plain ``python`` launch) it is a no-op: rank 0 of 1.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "env_dist_info", "init_distributed", "cleanup_distributed", "barrier",
           "all_reduce_sum", "all_gather_objects", "broadcast_object", "broadcast_buffers"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def env_dist_info() -> DistInfo:
    """Rank, world size and local rank from the ``torchrun`` environment (defaults 0, 1, 0)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"inconsistent torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def init_distributed(device_type: str) -> DistInfo:
    """Initialise the default process group when launched by ``torchrun`` with several processes.

    Idempotent: an already initialised group is reused. Returns the :class:`DistInfo`.
    """
    info = env_dist_info()
    if not info.distributed:
        return info
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if dist.is_initialized():
        return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=info.local_rank)
    if device_type == "cuda":
        if info.local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={info.local_rank} but only {torch.cuda.device_count()} CUDA "
                               f"device(s) are visible; use --nproc_per_node <= the number of GPUs")
        torch.cuda.set_device(info.local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
    for var in ("MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise RuntimeError(f"WORLD_SIZE > 1 but {var} is not set; launch with torchrun")
    kwargs: dict[str, Any] = {"backend": backend, "rank": info.rank, "world_size": info.world_size}
    if backend == "nccl":
        kwargs["device_id"] = torch.device("cuda", info.local_rank)
    dist.init_process_group(**kwargs)
    return info


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if _active():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum of a list of numbers over all ranks (identity when not distributed)."""
    if not _active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` when not distributed."""
    if not _active():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank; ``obj`` itself when not distributed."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank.

    DDP already broadcasts them at the start of every forward, so the model being trained is rank
    0's; after the last step of an epoch the other ranks still hold running statistics of their
    own batches. This makes every rank's state dict identical (and equal to the checkpoint).
    """
    if not _active():
        return
    with torch.no_grad():
        for buf in module.buffers():
            dist.broadcast(buf, src=src)
