"""MATLAB v7.3 .mat files: HDF5 behind a 512-byte MATLAB header (LS-VID's ``info_test.mat``).

scipy cannot read them (``loadmat`` refuses v7.3); h5py can. MATLAB stores arrays column-major,
so a MATLAB ``r x c`` variable is an HDF5 dataset of shape ``(c, r)``; each dataset carries a
``MATLAB_class`` attribute. The writer makes files MATLAB and scipy recognise as v7.3 (the
version bytes 0x0200 and ``IM`` at offset 124), deterministically (no timestamps).
"""
from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from psta.data.mars import mat_integers, read_mat_variable
from psta.errors import DatasetError

__all__ = ["read_mat73_integers", "write_mat73"]

_USERBLOCK = 512
_HEADER = b"MATLAB 7.3 MAT-file, Platform: posix, Created by: psta.data.mat73 HDF5 schema 1.00 ."


def write_mat73(path: str | os.PathLike, variables: dict[str, np.ndarray]) -> None:
    """Write ``variables`` (MATLAB-shaped numeric arrays) as a MATLAB v7.3 file."""
    path = Path(path)
    with h5py.File(path, "w", userblock_size=_USERBLOCK, track_order=False) as f:
        for name, value in variables.items():
            arr = np.atleast_2d(np.asarray(value))
            ds = f.create_dataset(name, data=arr.T, track_times=False)
            ds.attrs["MATLAB_class"] = np.bytes_({"f": "double", "i": "int64", "u": "uint64"}[arr.dtype.kind])
    header = _HEADER.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02IM"
    with open(path, "r+b") as f:
        f.write(header)


def read_mat73_integers(path: Path, variable: str, rel: str, release: str) -> np.ndarray:
    """``variable`` of a v7.3 file as int64, in MATLAB's shape; a file that is not HDF5 (e.g.
    re-saved with ``-v7``) is read with scipy instead."""
    if not h5py.is_hdf5(path):
        return read_mat_variable(path, variable, rel, release)
    try:
        with h5py.File(path, "r") as f:
            if variable not in f:
                raise DatasetError(f"{rel} has no variable '{variable}' (it holds {sorted(f.keys())}); "
                                   f"restore the file from {release}")
            arr = np.asarray(f[variable][()])
    except OSError as e:
        raise DatasetError(f"{rel} is not a readable MATLAB v7.3 file ({e}); restore it from "
                           f"{release}") from None
    return mat_integers(arr.T, variable, rel)
