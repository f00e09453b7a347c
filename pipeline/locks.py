"""One process at a time: a non-blocking `flock` that refuses a second holder with the first's pid.

The lock files live in .dvc/tmp/ (git-ignored by DVC's own .gitignore). The kernel releases a
lock when its holder exits, killed or not: there is never a stale lock to clean up.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from typing import Callable, Iterator

LOCK_DIR = Path(".dvc/tmp")


class Busy(RuntimeError):
    """Another process holds the lock."""


@contextlib.contextmanager
def exclusive(path: str | Path, busy: Callable[[str], str], error: type[Busy] = Busy) -> Iterator[Path]:
    """Hold the lock at ``path``, or raise ``error(busy(holder_pid))`` at once (never waits)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # no O_TRUNC: the holder's pid stays
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise error(busy(holder)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def stage_lock(stage: str) -> contextlib.AbstractContextManager[Path]:
    """The lock of one stage in this project: two runs of it would write the same outputs."""
    path = LOCK_DIR / f"stage-{stage}.lock"
    return exclusive(path, lambda holder: (
        f"another `python -m pipeline {stage}` is running in this project (pid {holder}); this one "
        f"is refused and changed nothing. Wait for it to finish (the lock {path} frees itself when "
        f"that process ends), or stop it with `kill {holder}`."))
