"""sha256 files beside the files they vouch for (``model.pt`` -> ``model.pt.sha256``).

The digest file has ``sha256sum``'s format (``<hex>  <name>``), so ``sha256sum -c
model.pt.sha256`` checks it too. Writers call :func:`write_digest` once the file is complete;
readers call :func:`check_digest` before trusting the bytes.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from psta.atomic import write_text_atomic
from psta.errors import IntegrityError, MissingFileError

SUFFIX = ".sha256"
_BLOCK = 8 << 20


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def digest_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + SUFFIX)


def write_digest(path: str | os.PathLike) -> Path:
    """Write ``<path>.sha256`` for the file as it is now (atomically)."""
    path = Path(path)
    target = digest_path(path)
    write_text_atomic(target, f"{file_sha256(path)}  {path.name}\n")
    return target


def check_digest(path: str | os.PathLike, required: bool = False, fix: str = "") -> bool:
    """Raise :class:`IntegrityError` unless ``path`` matches its ``.sha256`` file.

    Without a digest file: an error when ``required``, else ``False`` (nothing to check).
    ``fix`` is appended to the messages (how to get a good copy back).
    """
    path = Path(path)
    target = digest_path(path)
    fix = f"; {fix}" if fix else ""
    if not path.is_file():
        raise MissingFileError(f"{path} is missing{fix}")
    if not target.is_file():
        if required:
            raise IntegrityError(f"{path} has no checksum file {target.name} beside it, so it cannot "
                                 f"be trusted{fix}")
        return False
    want = target.read_text().split()[:1]
    if want != [file_sha256(path)]:
        raise IntegrityError(f"{path} is damaged: its sha256 differs from {target.name}{fix}")
    return True
