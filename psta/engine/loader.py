"""The training loader: identity batches that can start mid-epoch, after a validation split.

:func:`build_train_loader` turns a map-style dataset into the rank's ``DataLoader`` over a
:class:`ResumableBatchSampler`; :meth:`TrainLoader.start_epoch` positions it at any batch of any
epoch, so a resumed run draws exactly the batches the interrupted one would have.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from psta.data.sampling import IdentitySampler

from .config import TrainConfig
from .distributed import DistInfo
from .runtime import seed_worker
from .validation import split_validation

__all__ = ["ResumableBatchSampler", "TrainLoader", "build_train_loader", "identity_sampler"]

SamplerFactory = Callable[[np.ndarray, TrainConfig, DistInfo], Sampler]


class ResumableBatchSampler(Sampler):
    """Groups a sampler's items into batches; an epoch can start at batch ``start`` and stop at ``stop``.

    The inner sampler's ``set_epoch`` is called by :meth:`set_epoch`; skipped batches are drawn
    from the sampler (cheap: indices only) but never loaded. ``index_map`` maps the sampler's
    positions to dataset indices (the train subset after a validation split); keys of the form
    ``(index, epoch, draw)`` keep their extra fields.
    """

    def __init__(self, sampler: Iterable, batch_size: int, index_map: np.ndarray | None = None):
        self.sampler = sampler
        self.batch_size = int(batch_size)
        self.index_map = None if index_map is None else [int(i) for i in index_map]
        self.start = 0
        self.stop: int | None = None

    def set_epoch(self, epoch: int, start: int = 0, stop: int | None = None) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        self.start, self.stop = int(start), stop

    def full_length(self) -> int:
        n = len(self.sampler) // self.batch_size  # type: ignore[arg-type]
        return n if self.stop is None else min(n, self.stop)

    def __len__(self) -> int:
        return max(self.full_length() - self.start, 0)

    def _map(self, item):
        if self.index_map is None:
            return item
        if isinstance(item, tuple):
            return (self.index_map[int(item[0])],) + tuple(item[1:])
        return self.index_map[int(item)]

    def __iter__(self) -> Iterator[list]:
        end = self.full_length()
        batch: list = []
        b = 0
        for item in self.sampler:
            if b >= end:
                break
            batch.append(item)
            if len(batch) == self.batch_size:
                if b >= self.start:
                    yield [self._map(i) for i in batch]
                b += 1
                batch = []


def identity_sampler(labels: np.ndarray, config: TrainConfig, dist_info: DistInfo) -> Sampler:
    """The recipe's P x K identity sampler, this rank's shard of it."""
    return IdentitySampler(labels, num_instances=config.num_instances,
                           batch_size=config.batch_size // dist_info.world_size, seed=config.seed,
                           rank=dist_info.rank, world_size=dist_info.world_size)


@dataclass
class TrainLoader:
    loader: DataLoader
    batch_sampler: ResumableBatchSampler
    generator: torch.Generator
    train_indices: np.ndarray
    val_indices: np.ndarray

    def start_epoch(self, epoch: int, start: int, stop: int | None, seed: int, rank: int) -> int:
        """Position the loader at batch ``start`` of ``epoch``; returns the epoch's number of batches."""
        self.batch_sampler.set_epoch(epoch, start=start, stop=stop)
        self.generator.manual_seed(seed * 1_000_003 + epoch * 101 + rank)
        return self.batch_sampler.full_length()


def dataset_labels(dataset: Dataset, labels: Sequence[int] | np.ndarray | None) -> np.ndarray:
    """One identity label per dataset item: ``labels``, else ``dataset.labels``."""
    if labels is None:
        labels = getattr(dataset, "labels", None)
    if labels is None:
        raise ValueError("train(): pass labels= (one identity label per dataset item) or a "
                         "dataset with a .labels attribute")
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != len(dataset):
        raise ValueError(f"{len(labels)} labels for a dataset of {len(dataset)} items")
    return labels


def build_train_loader(config: TrainConfig, dataset: Dataset, labels: np.ndarray, dist_info: DistInfo,
                       device: torch.device, sampler_factory: SamplerFactory | None = None) -> TrainLoader:
    """Hold the validation identities out, then batch the rest with ``sampler_factory``
    (default :func:`identity_sampler`), ``batch_size / world_size`` clips per rank."""
    train_idx, val_idx = split_validation(labels, config.val_fraction, config.val_ids, config.seed)
    sampler = (sampler_factory or identity_sampler)(labels[train_idx], config, dist_info)
    batch_sampler = ResumableBatchSampler(sampler, config.batch_size // dist_info.world_size,
                                          None if len(val_idx) == 0 else train_idx)
    generator = torch.Generator()
    loader = DataLoader(dataset, batch_sampler=batch_sampler, num_workers=config.num_workers,
                        pin_memory=device.type == "cuda", persistent_workers=config.num_workers > 0,
                        worker_init_fn=seed_worker, generator=generator)
    return TrainLoader(loader, batch_sampler, generator, train_idx, val_idx)
