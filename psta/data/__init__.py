"""Datasets: readers for MARS and DukeMTMC-VideoReID, frame validation, synthetic data.

Readers return :class:`RawTracklets` (tracklet metadata plus frame paths relative to the
dataset root, read without opening a JPEG); :func:`psta.index.build_index` turns that into the
tracklet index. Bad input raises :class:`psta.errors.DatasetError` naming the file and the fix.
"""
from __future__ import annotations

import os

from psta.data.duke import read_duke
from psta.data.frame_check import check_frames
from psta.data.mars import read_mars
from psta.data.raw import SPLITS, RawTracklets
from psta.data.synthetic import SyntheticConfig, generate_duke, generate_mars, write_mars_metadata
from psta.errors import DatasetError

#: dataset name -> reader
READERS = {"mars": read_mars, "duke": read_duke}
#: dataset name -> synthetic generator writing that dataset's layout
GENERATORS = {"mars": generate_mars, "duke": generate_duke}


def read_dataset(name: str, root: str | os.PathLike) -> RawTracklets:
    """Read dataset ``name`` (``"mars"`` or ``"duke"``) from ``root``."""
    try:
        reader = READERS[name]
    except KeyError:
        raise DatasetError(f"unknown dataset {name!r}; data.source must be one of {sorted(READERS)}") from None
    return reader(root)


__all__ = [
    "DatasetError",
    "GENERATORS",
    "READERS",
    "RawTracklets",
    "SPLITS",
    "SyntheticConfig",
    "check_frames",
    "generate_duke",
    "generate_mars",
    "read_dataset",
    "read_duke",
    "read_mars",
    "write_mars_metadata",
]
