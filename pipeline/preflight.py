"""What a stage needs from this machine, checked with the params before any server starts.

:mod:`pipeline.params` validates params.yaml on its own; these checks look at the machine and
the checkout: CUDA for ``device: cuda`` and fp16, the files ``train.resume`` and
``model.pretrained`` name, a batch that splits over torchrun's ranks. Each failure is the
same one-line :class:`~pipeline.params.ParamsError` as a bad value in the file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from pipeline.params import Params, ParamsError
from psta.config import FieldError


def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _refuse(source: str, key: str, value, expected: str) -> None:
    raise ParamsError(f"{source}: {FieldError(key, value, expected)}; fix it in {source}")


def _check_device(params: Params, source: str) -> None:
    device = params.train.device
    if device.startswith("cuda"):
        count = _cuda_devices()
        index = int(device.partition(":")[2] or 0)
        if index >= count:
            have = f"{count} CUDA device(s)" if count else "no CUDA device"
            _refuse(source, "train.device", device, f"auto or cpu on this machine ({have})")


def _check_fp16(params: Params, source: str) -> None:
    if params.train.precision == "fp16" and (params.train.device == "cpu" or not _cuda_devices()):
        _refuse(source, "train.precision", "fp16", "auto, fp32 or bf16 here: fp16 trains on a CUDA device only")


def _check_fp16_evaluate(params: Params, source: str) -> None:
    if params.evaluate.precision == "fp16" and not _cuda_devices():
        _refuse(source, "evaluate.precision", "fp16", "auto, fp32 or bf16 here: fp16 needs a CUDA device")


def _check_resume(params: Params, source: str) -> None:
    resume = params.train.resume
    if resume in ("auto", "never", "none"):
        return
    path = Path(resume)
    if not (path / "checkpoint.pt" if path.is_dir() else path).is_file():
        _refuse(source, "train.resume", resume, "auto, never, or an existing checkpoint file (or a folder "
                "holding checkpoint.pt); nothing is there")


def _check_world_size(params: Params, source: str) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    t = params.train
    if world > 1 and (t.batch_size % world or (t.batch_size // world) % t.num_instances):
        _refuse(source, "train.batch_size", t.batch_size, f"a multiple of WORLD_SIZE x num_instances "
                f"({world} x {t.num_instances}) under torchrun")
    elif (t.batch_size // world) % t.bn_groups:
        _refuse(source, "train.bn_groups", t.bn_groups, f"a divisor of the {t.batch_size // world} clips "
                f"each of the {world} torchrun ranks trains on per step")


def _check_pretrained(params: Params, source: str) -> None:
    from psta.model import check_pretrained

    check_pretrained(params.model.pretrained, params.model.backbone)  # names the file and the fix


def _check_baseline_weights(params: Params, source: str) -> None:
    if params.evaluate.untrained_baseline:  # the untrained model starts from model.pretrained
        _check_pretrained(params, source)


CHECKS: dict[str, tuple[Callable[[Params, str], None], ...]] = {
    "train": (_check_device, _check_fp16, _check_resume, _check_world_size, _check_pretrained),
    "evaluate": (_check_fp16_evaluate, _check_baseline_weights),
}


def check_stages(params: Params, stages: tuple[str, ...], source: str = "params.yaml") -> None:
    """Raise one ParamsError (or PretrainedWeightsError) for the first unmet need of ``stages``."""
    done: set = set()
    for stage in stages:
        for check in CHECKS.get(stage, ()):
            if check not in done:
                done.add(check)
                check(params, source)
