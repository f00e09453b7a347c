"""Datasets: the registry, readers for MARS, DukeMTMC-VideoReID, iLIDS-VID, PRID-2011 and LS-VID,
frame validation, synthetic data.

Readers return :class:`RawTracklets` (tracklet metadata plus frame paths relative to the
dataset root, read without opening a JPEG); :func:`psta.index.build_index` turns that into the
tracklet index. Bad input raises :class:`psta.errors.DatasetError` naming the file and the fix.
Which datasets exist, and their protocols, test sampling and paper results:
:mod:`psta.data.registry`.
"""
from __future__ import annotations

import os

from psta.data.duke import read_duke
from psta.data.frame_check import check_frames
from psta.data.mars import read_mars
from psta.data.raw import SPLITS, RawTracklets
from psta.data.registry import DATASETS, DatasetSpec, dataset_names, get_dataset, register_dataset
from psta.data.synthetic import SyntheticConfig, generate_duke, generate_mars, write_mars_metadata
from psta.errors import DatasetError


def read_dataset(name: str, root: str | os.PathLike, **options) -> RawTracklets:
    """Read the registered dataset ``name`` (``"mars"``, ``"duke"``, ``"ilidsvid"``, ...) from
    ``root``; ``options`` are params.yaml's ``data`` keys its reader takes (``split``, ...)."""
    return get_dataset(name).read(root, **options)


__all__ = [
    "DATASETS",
    "DatasetError",
    "DatasetSpec",
    "RawTracklets",
    "SPLITS",
    "SyntheticConfig",
    "check_frames",
    "dataset_names",
    "generate_duke",
    "generate_mars",
    "get_dataset",
    "read_dataset",
    "read_duke",
    "read_mars",
    "register_dataset",
    "write_mars_metadata",
]
