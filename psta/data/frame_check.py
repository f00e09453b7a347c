"""Frame validation: every frame file (JPEG, or PNG for iLIDS-VID / PRID-2011) exists, is
non-empty and decodes.

Checks per file, cheapest first: it exists and can be read; it is not empty. A JPEG must start
with the SOI marker and end with EOI (trailing zero padding allowed), and its header must parse
up to a frame header (SOF) with a non-zero size before the scan starts; a ``.png`` must start
with the PNG signature and an IHDR chunk of non-zero size and end with the IEND chunk. With
``decode=True`` (the default) PIL then decodes the image (a JPEG at 1/8 scale: every
compressed block is still decoded, only the inverse DCT is cheaper). The work is spread over a
few threads (file reads, libjpeg and zlib release the GIL).
"""
from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
from PIL import Image

from psta.errors import DatasetError

__all__ = ["check_frames", "check_jpeg_bytes", "check_png_bytes", "ON_BAD_FRAME"]

ON_BAD_FRAME = ("error", "skip")

_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_STANDALONE = {0x01, *range(0xD0, 0xD8)}


def check_jpeg_bytes(data: bytes, decode: bool = True) -> str | None:
    """Why ``data`` is not a usable JPEG, or ``None`` if it is."""
    if not data:
        return "empty file (0 bytes)"
    if data[:2] != b"\xff\xd8":
        return "not a JPEG (no SOI marker at the start)"
    if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        return "truncated JPEG (no EOI marker at the end)"
    # walk the marker segments up to the frame header
    i, n = 2, len(data)
    while True:
        while i < n and data[i] == 0xFF and i + 1 < n and data[i + 1] == 0xFF:
            i += 1  # fill bytes
        if i + 4 > n or data[i] != 0xFF:
            return "corrupt JPEG header (bad marker)"
        marker = data[i + 1]
        if marker in _STANDALONE:
            i += 2
            continue
        seg = int.from_bytes(data[i + 2:i + 4], "big")
        if seg < 2 or i + 2 + seg > n:
            return "corrupt JPEG header (bad segment length)"
        if marker in _SOF:
            if seg < 8:
                return "corrupt JPEG frame header"
            h = int.from_bytes(data[i + 5:i + 7], "big")
            w = int.from_bytes(data[i + 7:i + 9], "big")
            if h == 0 or w == 0:
                return f"JPEG frame header gives size {w}x{h}"
            break
        if marker in (0xDA, 0xD9):
            return "corrupt JPEG header (no frame header before the scan)"
        i += 2 + seg
    if decode:
        try:
            with Image.open(io.BytesIO(data)) as im:
                # DCT scaling: every entropy-coded block is still decoded, the IDCT is cheaper
                im.draft(im.mode, (max(1, im.width // 8), max(1, im.height // 8)))
                im.load()
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError...
            return f"does not decode ({type(e).__name__}: {e})"
    return None


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def check_png_bytes(data: bytes, decode: bool = True) -> str | None:
    """Why ``data`` is not a usable PNG, or ``None`` if it is."""
    if not data:
        return "empty file (0 bytes)"
    if not data.startswith(_PNG_SIGNATURE):
        return "not a PNG (no PNG signature at the start)"
    if data[12:16] != b"IHDR" or len(data) < 33:
        return "corrupt PNG header (no IHDR chunk first)"
    w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if w == 0 or h == 0:
        return f"PNG header gives size {w}x{h}"
    if not data.endswith(_PNG_END):
        return "truncated PNG (no IEND chunk at the end)"
    if decode:
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, zlib.error...
            return f"does not decode ({type(e).__name__}: {e})"
    return None


def _check_file(full: str, decode: bool) -> str | None:
    try:
        with open(full, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return "missing file"
    except IsADirectoryError:
        return "is a directory, not a file"
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    if full.lower().endswith(".png"):
        return check_png_bytes(data, decode)
    return check_jpeg_bytes(data, decode)


def _as_list(paths: pa.Array | pa.ChunkedArray | Sequence[str] | Iterable[str]) -> list[str]:
    if isinstance(paths, (pa.Array, pa.ChunkedArray)):
        return paths.to_pylist()
    if hasattr(paths, "tolist"):
        return list(paths.tolist())
    return list(paths)


def check_frames(root: str | os.PathLike, paths, on_bad_frame: str = "error", *,
                 decode: bool = True, workers: int | None = None,
                 chunk: int = 4096) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Validate the frame files (JPEG, or PNG by their ``.png`` name) ``root/p`` for every ``p`` in ``paths``.

    Args:
        root: dataset root the paths are relative to.
        paths: frame paths (a pyarrow string array, list, numpy array or Series).
        on_bad_frame: ``"error"`` raises one :class:`DatasetError` at the first bad frame
            (naming it and the ``data.on_bad_frame: skip`` fix); ``"skip"`` marks bad frames
            in the mask and lists them.
        decode: also decode every image with PIL (slower, catches corrupt scan data).
        workers: threads (default ``min(4, cpu count)``).

    Returns:
        ``(ok_mask, bad)``: a bool array aligned with ``paths`` and ``[(path, reason), ...]``
        for every bad frame, in path order.
    """
    if on_bad_frame not in ON_BAD_FRAME:
        raise ValueError(f"data.on_bad_frame must be one of {ON_BAD_FRAME}, got {on_bad_frame!r}")
    root = Path(root)
    plist = _as_list(paths)
    n = len(plist)
    ok = np.ones(n, bool)
    bad: list[tuple[str, str]] = []
    workers = workers or min(4, os.cpu_count() or 1)
    prefix = str(root) + os.sep

    def run(pool, start: int) -> list[str | None]:
        part = [prefix + p for p in plist[start:start + chunk]]
        if pool is None:
            return [_check_file(f, decode) for f in part]
        return list(pool.map(_check_file, part, [decode] * len(part)))

    pool = ThreadPoolExecutor(workers) if workers > 1 and n > 256 else None
    try:
        for start in range(0, n, chunk):
            for k, why in enumerate(run(pool, start)):
                if why is None:
                    continue
                i = start + k
                if on_bad_frame == "error":
                    raise DatasetError(
                        f"bad frame {plist[i]} (under {root}): {why}. Restore the file from the "
                        f"dataset release, or set `data.on_bad_frame: skip` in params.yaml to drop "
                        f"bad frames (they are counted in stats.json)")
                ok[i] = False
                bad.append((plist[i], why))
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return ok, bad
