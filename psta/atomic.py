"""Atomic outputs: write to a temporary sibling, then rename into place.

A writer that fails or is killed half-way leaves either the previous file or nothing, never a
half-written file that DVC (or the next stage) would trust. (Under `dvc repro` the previous
output is already gone: DVC deletes a stage's outputs before it runs the stage, and `dvc
checkout` brings cached ones back.) A killed writer does leave
its temporary sibling (``.<name>.<pid>.<random>.tmp``, or ``.old`` for a tree being swapped
out); :func:`sweep_stale` removes those whose process is gone.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path next to ``path``; rename it onto ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        # mkstemp creates 0600; give the result the permissions a plain open() would
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory next to ``path``; swap it in for ``path`` on success.

    The old directory (if any) is moved aside first and removed only after the new one is in
    place, so at every instant ``path`` is either the complete old or the complete new tree.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        old = None
        if path.exists() or path.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=_prefix(path), suffix=".old", dir=path.parent))
            os.replace(path, old / "x")
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


# .<name>.<pid>.<8 random chars>.tmp|old (files written before pids were recorded: no pid)
_TEMP = re.compile(r"^\.(?P<name>.+?)\.(?:(?P<pid>\d+)\.)?[a-z0-9_]{8}\.(?:tmp|old)$")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(entry: Path, name: str | None) -> bool:
    m = _TEMP.match(entry.name)
    if m is None or (name is not None and m["name"] != name):
        return False
    return m["pid"] is None or not _alive(int(m["pid"]))


def _remove(entry: Path) -> int:
    size = entry.stat().st_size if entry.is_file() else sum(
        f.stat().st_size for f in entry.rglob("*") if f.is_file())
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        entry.unlink(missing_ok=True)
    return size


def sweep_stale(path: str | os.PathLike) -> list[tuple[Path, int]]:
    """Remove the temporary files and folders that killed writers of ``path`` left behind.

    That is: the stale siblings of ``path`` and, when ``path`` is a folder (a persisted one
    keeps files across runs), every stale temporary anywhere inside it. Only names this module
    makes are touched, and only those whose writer process no longer runs. Returns
    ``[(removed path, bytes), ...]``.
    """
    path = Path(path)
    found = []
    if path.parent.is_dir():
        found += [e for e in path.parent.iterdir() if _stale(e, path.name)]
    if path.is_dir() and not path.is_symlink():
        found += [e for e in path.rglob(".*") if _stale(e, None)]
    removed = []
    for entry in found:
        if entry.exists() or entry.is_symlink():
            removed.append((entry, _remove(entry)))
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
