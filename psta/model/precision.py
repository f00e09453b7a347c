"""Numeric precision and memory-format helpers.

``resolve_precision("auto" | "fp32" | "bf16" | "fp16", device)`` gives the autocast dtype
(``None`` = plain fp32). ``auto`` picks bf16 only where the hardware computes it natively:
CUDA devices with ``torch.cuda.is_bf16_supported()``, CPUs with AVX512-BF16 or AMX-BF16 that
PyTorch dispatches AVX512 kernels on; fp32 otherwise. fp16 is CUDA-only.
"""
from __future__ import annotations

import contextlib
import functools
import platform
from pathlib import Path

import torch
from torch import nn

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str]:
    if platform.system() != "Linux":
        return frozenset()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_supports_bf16() -> bool:
    """True where the CPU has native bf16 arithmetic (AVX512-BF16 or AMX-BF16) usable by PyTorch."""
    capability = torch.backends.cpu.get_cpu_capability()
    if "AVX512" not in capability and "AMX" not in capability:
        return False
    flags = _cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _device(device: str | torch.device) -> torch.device:
    return device if isinstance(device, torch.device) else torch.device(device)


def resolve_precision(precision: str, device: str | torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``: torch.bfloat16, torch.float16 or None (fp32)."""
    dev = _device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if dev.type not in ("cpu", "cuda"):
        if precision in ("auto", "fp32"):
            return None
        raise ValueError(f"precision {precision!r} is only supported on cpu and cuda devices, not {dev.type}")
    if precision == "fp32":
        return None
    if precision == "fp16":
        if dev.type != "cuda":
            raise ValueError("fp16 autocast is only supported on CUDA devices; use 'bf16' or 'fp32' on the CPU")
        return torch.float16
    if precision == "bf16":
        if dev.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError("this CUDA device does not support bf16; use 'fp16' or 'fp32'")
        return torch.bfloat16
    # auto
    if dev.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_supports_bf16() else None


def autocast_context(device: str | torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype`` on ``device``, or a no-op context for ``None`` (fp32)."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=_device(device).type, dtype=dtype)


def to_channels_last(model: nn.Module) -> nn.Module:
    """Convert the model's 4-d parameters to channels_last (in place); inputs follow automatically."""
    return model.to(memory_format=torch.channels_last)
