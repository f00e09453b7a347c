"""Synthetic MARS and DukeMTMC-VideoReID datasets, written in the exact published layouts.

The default pipeline runs on these, so the real readers (:mod:`psta.data.mars`,
:mod:`psta.data.duke`) are what it exercises. People are rendered with numpy: a figure with
head, torso, arms and legs whose clothing colours and patterns (stripes, logo, two-tone
sleeves, skirt/shorts, cap, bag) define the identity. Colours come from small shared
palettes, so many identities share a top or trouser colour and colour alone does not identify
anyone. Each camera has its own lighting, colour cast, blur, noise, person scale, viewing
direction and background texture; each tracklet walks (leg and arm swing, bob, the detector
box sliding over the background) and may be occluded by a pole or a box.

Everything is deterministic per seed: the same :class:`SyntheticConfig` gives byte-identical
files (the ``.mat`` headers carry a fixed text instead of a creation date).

:func:`write_mars_metadata` writes only ``info/`` (names and ``.mat`` files, no images) at the
full published MARS scale, for tests and benchmarks of the reader and index at real size.
"""
from __future__ import annotations

import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from pydantic import Field, model_validator
from scipy.ndimage import uniform_filter1d  # camera backgrounds only (once per camera)

from psta.atomic import atomic_dir
from psta.config import FieldError, Pair, Section
from psta.data.mars_layout import MAX_CAMERAS, track_numbers, tracklet_files, write_mars_info

__all__ = [
    "SyntheticConfig",
    "MarsScale",
    "Painter",
    "draw_pids",
    "identity_tracklets",
    "MARS_PUBLISHED",
    "MARS_CAMERAS",
    "DUKE_CAMERAS",
    "generate_mars",
    "generate_duke",
    "write_mars_metadata",
]

MARS_CAMERAS = 6   # cameras of the published releases: the default num_cameras of each layout
DUKE_CAMERAS = 8


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------
class SyntheticConfig(Section):
    """Size and look of a synthetic dataset. The defaults are the pipeline's demo scale.

    Counts: ``num_train_ids`` / ``num_test_ids`` identities; every identity is seen by
    ``cameras_per_id`` cameras (inclusive range, at least 2) with ``tracklets_per_camera``
    tracklets in each. Tracklet lengths are uniform in ``[min_len, max_len]``.
    MARS extras: ``num_distractor_tracklets`` (pid 0, folder ``0000``) and
    ``num_junk_tracklets`` (pid -1, folder ``00-1``). Duke extras: ``num_distractor_ids``
    gallery-only identities, a fraction of tracklets named in the old style
    (``0001C6F0099X30823.jpg``) and a fraction starting at ``F0002`` (at least one of each).
    """

    seed: int = Field(0, ge=0)
    num_train_ids: int = Field(48, ge=1)
    num_test_ids: int = Field(48, ge=1)
    num_cameras: int | None = Field(None, ge=2, le=9)  # None: 6 for MARS, 8 for Duke
    cameras_per_id: Pair[int] = (2, 3)
    tracklets_per_camera: Pair[int] = (1, 2)
    min_len: int = Field(8, ge=1, le=999)
    max_len: int = Field(48, ge=1, le=999)   # three frame digits in the names
    height: int = Field(128, ge=32)
    width: int = Field(64, ge=16)
    num_distractor_tracklets: int = Field(24, ge=0)   # MARS pid 0
    num_junk_tracklets: int = Field(12, ge=0)         # MARS pid -1
    num_distractor_ids: int = Field(12, ge=0)         # Duke gallery-only identities
    old_style_fraction: float = Field(0.3, ge=0, le=1)  # Duke old file-name style
    f0002_fraction: float = Field(0.1, ge=0, le=1)      # Duke tracklets whose first frame is F0002
    occlusion_prob: float = Field(0.25, ge=0, le=1)
    jpeg_quality: int = Field(90, ge=1, le=100)
    max_pid: int = Field(1500, ge=1, le=9999)        # pids are drawn from 1..max_pid (4 digits)

    @model_validator(mode="after")
    def _ranges(self) -> "SyntheticConfig":
        if not 1 <= self.tracklets_per_camera[0] <= self.tracklets_per_camera[1]:
            raise FieldError("tracklets_per_camera", self.tracklets_per_camera, "[lo, hi] with 1 <= lo <= hi")
        if self.min_len > self.max_len:
            raise FieldError("max_len", self.max_len, f">= min_len ({self.min_len})")
        if self.num_train_ids + self.num_test_ids + self.num_distractor_ids > self.max_pid:
            raise FieldError("max_pid", self.max_pid, "at least num_train_ids + num_test_ids + "
                             f"num_distractor_ids ({self.num_train_ids + self.num_test_ids + self.num_distractor_ids})")
        return self

    def cameras_for(self, default_cameras: int, max_cameras: int = 9) -> int:
        """The cameras to write for a layout whose release has ``default_cameras`` and whose names
        hold at most ``max_cameras``; a FieldError if num_cameras or cameras_per_id do not fit."""
        ncam = self.num_cameras or default_cameras
        if ncam > max_cameras:
            raise FieldError("num_cameras", ncam, f"<= {max_cameras} (the layout's names hold one camera digit)")
        lo, hi = self.cameras_per_id
        if not (2 <= lo <= hi <= ncam):
            raise FieldError("cameras_per_id", self.cameras_per_id,
                             f"[lo, hi] with 2 <= lo <= hi <= {ncam} (the layout's cameras)")
        return ncam


# --------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------
# label map indices
_BG, _SKIN, _HAIR, _TOP, _TOP2, _BOTTOM, _SHOES, _BAG, _HAT, _OCC = range(10)
_NLAB = 10

_TOPS = np.array([
    (200, 40, 40), (40, 70, 180), (50, 140, 60), (225, 225, 220), (35, 35, 40),
    (130, 130, 135), (220, 190, 50), (30, 40, 90), (220, 130, 160), (120, 80, 50),
], np.float32)
_BOTTOMS = np.array([
    (35, 35, 40), (50, 70, 120), (120, 120, 125), (190, 170, 130), (100, 70, 45),
    (220, 220, 215), (40, 75, 50),
], np.float32)
_HAIRS = np.array([(25, 20, 20), (60, 40, 25), (110, 75, 45), (200, 170, 110), (150, 150, 150)], np.float32)
_SKINS = np.array([(235, 200, 170), (210, 160, 120), (160, 110, 80), (100, 70, 50)], np.float32)
_BAGS = np.array([(30, 30, 30), (150, 40, 40), (60, 90, 160), (160, 130, 90), (90, 110, 60)], np.float32)
_SHOE_COLS = np.array([(20, 20, 20), (230, 230, 230), (90, 60, 40), (60, 60, 70)], np.float32)
_OCCS = np.array([(90, 90, 95), (60, 60, 60), (140, 120, 90), (70, 90, 110)], np.float32)


def _appearance(rng: np.random.Generator) -> dict:
    """Clothing and body of one identity."""
    top = int(rng.integers(len(_TOPS)))
    top2 = int((top + rng.integers(1, len(_TOPS))) % len(_TOPS))
    pal = np.zeros((_NLAB, 3), np.float32)
    jit = lambda: rng.uniform(-10, 10, 3).astype(np.float32)  # noqa: E731
    pal[_SKIN] = _SKINS[rng.integers(len(_SKINS))] + jit()
    pal[_HAIR] = _HAIRS[rng.integers(len(_HAIRS))] + jit()
    pal[_TOP] = _TOPS[top] + jit()
    pal[_TOP2] = _TOPS[top2] + jit()
    pal[_BOTTOM] = _BOTTOMS[rng.integers(len(_BOTTOMS))] + jit()
    pal[_SHOES] = _SHOE_COLS[rng.integers(len(_SHOE_COLS))] + jit()
    pal[_BAG] = _BAGS[rng.integers(len(_BAGS))] + jit()
    pal[_HAT] = _TOPS[rng.integers(len(_TOPS))] + jit()
    return {
        "palette": pal,
        "pattern": int(rng.choice(5, p=[0.3, 0.2, 0.15, 0.2, 0.15])),  # plain, hstripe, vstripe, logo, two-tone
        "stripe_freq": float(rng.uniform(7, 14)),
        "bottom": int(rng.choice(3, p=[0.65, 0.2, 0.15])),  # trousers, shorts, skirt
        "bag": int(rng.choice(3, p=[0.5, 0.3, 0.2])),       # none, backpack, handbag
        "bag_side": float(rng.choice([-1.0, 1.0])),
        "hat": bool(rng.random() < 0.15),
        "long_hair": bool(rng.random() < 0.3),
        "wf": float(rng.uniform(0.85, 1.15)),               # body width factor
        "hf": float(rng.uniform(0.93, 1.03)),               # body height factor
    }


def _camera(rng: np.random.Generator, h: int, w: int) -> dict:
    """Look of one camera: lighting, colour cast, blur, noise, scale, background texture."""
    hb, wb = 2 * h, 4 * w
    yy = np.arange(hb, dtype=np.float32)[:, None]
    xx = np.arange(wb, dtype=np.float32)[None, :]
    horizon = rng.uniform(0.45, 0.7) * hb
    wall = rng.uniform(60, 200, 3).astype(np.float32)
    floor = rng.uniform(50, 170, 3).astype(np.float32)
    bg = np.where((yy < horizon)[..., None], wall, floor).astype(np.float32)
    kind = int(rng.integers(3))
    period = rng.uniform(0.15, 0.5) * w
    if kind == 0:     # vertical panels / windows on the wall
        panel = ((xx / period) % 1.0 < 0.2) & (yy < horizon)
        bg = np.where(panel[..., None], bg * 0.75, bg)
    elif kind == 1:   # bricks
        row = (yy // (period * 0.5)).astype(np.int64)
        brick = (((xx + (row % 2) * period * 0.5) / period) % 1.0 < 0.08) | ((yy / (period * 0.5)) % 1.0 < 0.1)
        bg = np.where((brick & (yy < horizon))[..., None], bg * 0.8, bg)
    else:             # floor tiles
        tile = (((xx / period) % 1.0 < 0.06) | ((yy / (period * 0.7)) % 1.0 < 0.06)) & (yy >= horizon)
        bg = np.where(tile[..., None], bg * 0.7, bg)
    # low-frequency blotches
    cshape = (hb // 16 + 2, wb // 16 + 2)
    coarse = (rng.normal(0, 16, cshape + (1,)) + rng.normal(0, 5, cshape + (3,))).astype(np.float32)
    blot = np.repeat(np.repeat(coarse, 16, 0), 16, 1)[:hb, :wb]
    blot = uniform_filter1d(uniform_filter1d(blot, 15, axis=0, mode="wrap"), 15, axis=1, mode="wrap")
    bg = np.clip(bg + blot, 0, 255)
    # lighting
    gain = rng.uniform(0.65, 1.25)
    cast = rng.uniform(0.85, 1.15, 3).astype(np.float32)
    grad = np.linspace(rng.uniform(0.85, 1.15), rng.uniform(0.85, 1.15), h, dtype=np.float32)
    blur = int(rng.choice([0, 1, 1, 2])) * max(1, round(h / 128))
    noise_sigma = rng.uniform(2.0, 6.0)
    noise = rng.normal(0, noise_sigma, (3, 2 * h, 2 * w)).astype(np.float32)
    bg = np.ascontiguousarray(np.moveaxis(bg, -1, 0), dtype=np.float32)      # 3 x hb x wb
    return {
        "bg": np.concatenate([bg, bg[:, :, :w]], axis=2),                   # wrapped by w columns
        "bg_width": wb,
        "light": (gain * cast[:, None, None, None] * grad[None, None, :, None]).astype(np.float32),  # 3x1xHx1
        "blur": blur,
        "noise": noise,
        "scale": float(rng.uniform(0.8, 0.95)),
        "front_prob": float(rng.choice([0.2, 0.8])),
    }


class _Figure:
    """One tracklet's walking person: pose per frame and the label map it is drawn into."""

    def __init__(self, app: dict, cam: dict, rng: np.random.Generator, n: int, h: int, w: int, junk: bool):
        f32 = np.float32
        t = np.arange(n, dtype=f32)[:, None, None]
        self.yy = np.arange(h, dtype=f32)[None, :, None]
        self.xx = np.arange(w, dtype=f32)[None, None, :]
        self.direction = float(rng.choice([-1.0, 1.0]))
        self.front = bool(rng.random() < cam["front_prob"])
        phase = rng.uniform(0, 2 * np.pi) + t * rng.uniform(0.35, 0.6)
        self.sinp = np.sin(phase)
        scale = cam["scale"] * app["hf"] * rng.uniform(0.95, 1.05)
        if junk:  # a bad detection: part of a body, badly framed, or nothing at all
            scale *= rng.uniform(1.3, 2.0)
        self.ph = ph = f32(h * scale) * (1 + f32(0.01) * np.sin(t * f32(rng.uniform(0.1, 0.3))))
        bob = -f32(0.012) * ph * np.abs(np.cos(phase))
        self.y0 = (h - ph) * 0.5 + bob + (f32(rng.uniform(-0.5, 0.0) * h) if junk else f32(0))
        drift = f32(rng.uniform(-0.04, 0.04) * w) + f32(rng.uniform(-0.05, 0.05)) * t
        self.cx = f32(w / 2) + drift + (f32(rng.uniform(-0.4, 0.4) * w) if junk else f32(0))
        self.wf = f32(app["wf"])
        self.lab = np.zeros((n, h, w), np.uint8)

    def band(self, a, b):
        """Rows between fractions a and b of the person height."""
        return (self.yy >= self.y0 + a * self.ph) & (self.yy < self.y0 + b * self.ph)

    def put(self, mask, label: int) -> None:
        np.copyto(self.lab, np.uint8(label), where=mask)


def _draw_limbs_and_torso(fig: _Figure, app: dict) -> None:
    f32, band, put = np.float32, fig.band, fig.put
    xx, yy, y0, ph, cx, wf = fig.xx, fig.yy, fig.y0, fig.ph, fig.cx, fig.wf
    # legs (left +1, right -1 swing in opposite phase)
    hip, foot = f32(0.50), f32(0.97)
    leg_len = (foot - hip) * ph
    for s in (-1.0, 1.0):
        swing = f32(s * 0.07) * ph * fig.sinp * fig.direction
        centre = cx + f32(s * 0.045) * wf * ph + swing * (yy - (y0 + hip * ph)) / leg_len
        leg = band(hip, foot) & (np.abs(xx - centre) <= f32(0.042) * wf * ph)
        lower = f32(0.70) if app["bottom"] == 1 else (f32(0.74) if app["bottom"] == 2 else foot)
        put(leg & band(hip, lower), _BOTTOM)
        put(leg & band(lower, foot), _SKIN)
        put(leg & band(0.925, foot), _SHOES)
    if app["bottom"] == 2:  # skirt: a trapezoid
        frac = (yy - (y0 + 0.48 * ph)) / (0.26 * ph)
        half = (0.10 + 0.06 * frac) * wf * ph
        put(band(0.48, 0.74) & (np.abs(xx - cx) <= half), _BOTTOM)
    # arms, swinging against the legs
    sh, hand = f32(0.15), f32(0.47)
    arm_len = (hand - sh) * ph
    for s in (-1.0, 1.0):
        swing = -f32(s * 0.05) * ph * fig.sinp * fig.direction
        centre = cx + f32(s * 0.125) * wf * ph + swing * (yy - (y0 + sh * ph)) / arm_len
        arm = band(sh, hand) & (np.abs(xx - centre) <= f32(0.028) * wf * ph)
        put(arm & band(sh, 0.41), _TOP2 if app["pattern"] == 4 else _TOP)
        put(arm & band(0.41, hand), _SKIN)
    # torso: shoulders wider than the waist
    frac = (yy - (y0 + 0.14 * ph)) / (0.38 * ph)
    half = (0.112 - 0.018 * frac) * wf * ph
    torso = band(0.14, 0.52) & (np.abs(xx - cx) <= half)
    put(torso, _TOP)
    pat = app["pattern"]
    if pat == 1:
        put(torso & (((yy - y0) / ph * f32(app["stripe_freq"])) % 1.0 < 0.45), _TOP2)
    elif pat == 2:
        put(torso & (((xx - cx) / ph * f32(app["stripe_freq"] * 1.4)) % 1.0 < 0.4), _TOP2)
    elif pat == 3 and fig.front:
        put(band(0.21, 0.30) & (np.abs(xx - cx) <= f32(0.045) * ph), _TOP2)
    elif pat == 4:
        put(band(0.14, 0.19) & (np.abs(xx - cx) <= half), _TOP2)


def _draw_head_and_bag(fig: _Figure, app: dict) -> None:
    f32, band, put = np.float32, fig.band, fig.put
    xx, yy, y0, ph, cx, wf, front = fig.xx, fig.yy, fig.y0, fig.ph, fig.cx, fig.wf, fig.front
    hy = y0 + f32(0.075) * ph
    head = ((xx - cx) / (f32(0.058) * ph)) ** 2 + ((yy - hy) / (f32(0.068) * ph)) ** 2 <= 1
    put(head, _SKIN)
    hair_line = hy - (f32(0.01) if front else f32(-0.05)) * ph
    put(head & (yy < hair_line), _HAIR)
    if app["long_hair"]:
        put(band(0.075, 0.22) & (np.abs(xx - cx) <= f32(0.06) * ph) & (~head if front else True), _HAIR)
    if app["hat"]:
        put(head & (yy < hy - f32(0.02) * ph), _HAT)
        put(band(0.05, 0.065) & (np.abs(xx - cx - fig.direction * 0.03 * ph) <= f32(0.075) * ph), _HAT)
    if app["bag"] == 1:
        if front:  # straps
            for s in (-1.0, 1.0):
                put(band(0.14, 0.32) & (np.abs(xx - cx - s * 0.065 * wf * ph) <= f32(0.012) * ph), _BAG)
        else:
            put(band(0.16, 0.42) & (np.abs(xx - cx) <= f32(0.085) * wf * ph), _BAG)
    elif app["bag"] == 2:
        side = f32(app["bag_side"])
        bx = cx + side * f32(0.16) * wf * ph
        put(band(0.42, 0.55) & (np.abs(xx - bx) <= f32(0.04) * ph), _BAG)
        put(band(0.15, 0.42) & (np.abs(xx - bx + side * 0.02 * ph) <= f32(0.008) * ph), _BAG)


def _occlude(fig: _Figure, rng: np.random.Generator, palette: np.ndarray, ox: np.ndarray, wb: int,
             h: int, w: int) -> None:
    """An occluder fixed in the scene (it slides with the background): a pole or a box."""
    f32, xx, yy = np.float32, fig.xx, fig.yy
    palette[_OCC] = _OCCS[rng.integers(len(_OCCS))] * rng.uniform(0.8, 1.2)
    xs = f32(rng.uniform(0, wb))
    xo = ((xs - ox.astype(f32))[:, None, None] + wb / 2) % wb - wb / 2  # scene x in image coords
    if rng.random() < 0.5:   # pole
        pw = f32(rng.uniform(0.06, 0.15) * w)
        fig.put((xx >= xo + w * 0.3) & (xx < xo + w * 0.3 + pw), _OCC)
    else:                    # box in front of the legs
        top = f32(rng.uniform(0.55, 0.8) * h)
        fig.put((yy >= top) & (xx >= xo) & (xx < xo + f32(rng.uniform(0.4, 0.9) * w)), _OCC)


def _compose(fig: _Figure, palette: np.ndarray, bg: np.ndarray, cam: dict, rng: np.random.Generator,
             n: int, h: int, w: int) -> np.ndarray:
    """Channel-first: cylindrical shading of the figure, camera light, sensor noise (the camera
    blur is applied when encoding, see _jpeg). Returns uint8 n x h x w x 3."""
    f32 = np.float32
    palette[_BG] = 0.0
    shade = 1.0 - 0.22 * np.clip(np.abs(fig.xx - fig.cx) / (0.16 * fig.ph), 0, 1) ** 2      # n x 1 x w
    img = np.empty((3, n, h, w), f32)
    lab_i = fig.lab.astype(np.intp)
    for c in range(3):
        np.take(np.ascontiguousarray(palette[:, c]), lab_i, out=img[c])                  # 3 x n x h x w
    img *= shade
    bg *= fig.lab == _BG
    img += bg
    img *= cam["light"] * f32(rng.uniform(0.92, 1.08))
    img *= (1 + f32(0.02) * rng.standard_normal(n).astype(f32))[None, :, None, None]
    nz = cam["noise"]
    offs = rng.integers(0, [nz.shape[1] - h + 1, nz.shape[2] - w + 1], size=(n, 2))
    for i in range(n):
        img[:, i] += nz[:, offs[i, 0]:offs[i, 0] + h, offs[i, 1]:offs[i, 1] + w]
    np.clip(img, 0, 255, out=img)
    return np.ascontiguousarray(img.astype(np.uint8).transpose(1, 2, 3, 0))


def _render(app: dict, cam: dict, rng: np.random.Generator, n: int, h: int, w: int,
            occlusion_prob: float, junk: bool = False) -> np.ndarray:
    """Render one tracklet: ``n`` frames of a walking person, uint8 n x h x w x 3."""
    fig = _Figure(app, cam, rng, n, h, w, junk)
    if not (junk and rng.random() < 0.4):
        _draw_limbs_and_torso(fig, app)
        _draw_head_and_bag(fig, app)
    # the detector box follows the person, so the background slides behind it
    cam_bg, wb = cam["bg"], cam["bg_width"]
    oy = int(rng.integers(0, cam_bg.shape[1] - h + 1))
    ox = rng.uniform(0, wb) + fig.direction * rng.uniform(0.3, 1.2) * np.arange(n)
    starts = np.round(ox).astype(np.int64) % wb
    bg = np.stack([cam_bg[:, oy:oy + h, x:x + w] for x in starts], axis=1)         # 3 x n x h x w
    palette = app["palette"].copy()
    if rng.random() < occlusion_prob:
        _occlude(fig, rng, palette, ox, wb, h, w)
    return _compose(fig, palette, bg, cam, rng, n, h, w)


def _workers(workers: int | None) -> int:
    # default 1: on a small shared machine threads lose more to GIL hand-offs than they gain
    return max(1, workers or 1)


def _jpeg(frame: np.ndarray, quality: int, blur: int = 0, image_format: str = "JPEG") -> bytes:
    """Encode one frame (JPEG, or PNG as iLIDS-VID and PRID-2011 publish theirs), after the
    camera's box blur (PIL's, cheap)."""
    im = Image.fromarray(frame)
    if blur:
        im = im.filter(ImageFilter.BoxBlur(blur))
    buf = io.BytesIO()
    im.save(buf, format=image_format, **({"quality": quality} if image_format == "JPEG" else {}))
    return buf.getvalue()


class Painter:
    """Renders tracklets with per-seed independent random streams (``stream``: one per layout).

    A writer of a new layout draws identities with :func:`draw_pids` and
    :func:`identity_tracklets`, then renders jobs ``(appearance key, 0-based camera, frames,
    serial, junk)`` with :meth:`render_many` and writes the encoded bytes it yields
    (``image_format``: ``"JPEG"`` or ``"PNG"``).
    """

    def __init__(self, cfg: SyntheticConfig, ncam: int, stream: int, image_format: str = "JPEG"):
        self.cfg, self.stream, self.image_format = cfg, stream, image_format
        self.cams = [_camera(np.random.default_rng([cfg.seed, stream, 2, c]), cfg.height, cfg.width)
                     for c in range(ncam)]
        self._apps: dict[int, dict] = {}

    def appearance(self, key: int) -> dict:
        if key not in self._apps:
            self._apps[key] = _appearance(np.random.default_rng([self.cfg.seed, self.stream, 1, key]))
        return self._apps[key]

    def frames(self, app_key: int, cam: int, n: int, serial: int, junk: bool = False) -> list[bytes]:
        rng = np.random.default_rng([self.cfg.seed, self.stream, 3, serial])
        imgs = _render(self.appearance(app_key), self.cams[cam], rng, n, self.cfg.height,
                       self.cfg.width, self.cfg.occlusion_prob, junk=junk)
        blur = self.cams[cam]["blur"]
        return [_jpeg(f, self.cfg.jpeg_quality, blur, self.image_format) for f in imgs]

    def render_many(self, jobs: list[tuple], workers: int | None = None):
        """Yield ``frames(*job)`` for each job, in order, rendered by ``workers`` threads.

        numpy and PIL release the GIL in their inner loops; every job has its own random
        stream, so the output does not depend on the number of workers.
        """
        workers = _workers(workers)
        for job in jobs:                      # appearances first: no dict writes in threads
            self.appearance(job[0])
        if workers <= 1:
            for job in jobs:
                yield self.frames(*job)
            return
        window = 4 * workers
        with ThreadPoolExecutor(workers) as ex:
            pending = [ex.submit(self.frames, *job) for job in jobs[:window]]
            for k in range(len(jobs)):
                if k + window < len(jobs):
                    pending.append(ex.submit(self.frames, *jobs[k + window]))
                yield pending[k].result()
                pending[k] = None


def _counts(pid: np.ndarray, length: np.ndarray) -> dict:
    pid = np.asarray(pid)
    return {"tracklets": int(len(pid)), "identities": int(len(np.unique(pid[pid > 0]))),
            "frames": int(np.sum(length))}


# --------------------------------------------------------------------------------------------
# identities (any layout)
# --------------------------------------------------------------------------------------------
def draw_pids(rng: np.random.Generator, cfg: SyntheticConfig, n_extra: int = 0):
    """Distinct pids from 1..max_pid: sorted train, test and ``n_extra`` more (e.g. distractors)."""
    pool = rng.choice(np.arange(1, cfg.max_pid + 1), cfg.num_train_ids + cfg.num_test_ids + n_extra, replace=False)
    train = np.sort(pool[:cfg.num_train_ids])
    test = np.sort(pool[cfg.num_train_ids:cfg.num_train_ids + cfg.num_test_ids])
    extra = np.sort(pool[cfg.num_train_ids + cfg.num_test_ids:])
    return train, test, extra


def identity_tracklets(rng, cfg: SyntheticConfig, ncam: int, pid: int):
    """Cameras and per-camera tracklet counts of one identity."""
    k = int(rng.integers(cfg.cameras_per_id[0], cfg.cameras_per_id[1] + 1))
    cams = np.sort(rng.choice(np.arange(1, ncam + 1), k, replace=False))
    per = rng.integers(cfg.tracklets_per_camera[0], cfg.tracklets_per_camera[1] + 1, size=k)
    return cams, per


# --------------------------------------------------------------------------------------------
# MARS
# --------------------------------------------------------------------------------------------
def _mars_planted(info: dict, root, seed: int, ncam: int) -> dict:
    """What a MARS tree holds, per split, as the index should find it (queries, gallery w/o junk)."""
    te = info["test"]
    q, junk, dis = te["query"], te["pid"] == -1, te["pid"] == 0
    gal = ~q & ~junk
    return {
        "dataset": "mars",
        "root": str(root),
        "seed": seed,
        "num_cameras": ncam,
        "splits": {
            "train": _counts(info["train"]["pid"], info["train"]["length"]),
            "query": _counts(te["pid"][q], te["length"][q]),
            "gallery": _counts(te["pid"][gal], te["length"][gal]),
        },
        "test_tracklets": int(len(te["pid"])),
        "junk_tracklets": int(junk.sum()),
        "junk_frames": int(te["length"][junk].sum()),
        "distractor_tracklets": int(dis.sum()),
        "files": int(info["train"]["length"].sum() + te["length"].sum()),
    }


def generate_mars(root: str | os.PathLike, cfg: SyntheticConfig | None = None, *,
                  workers: int | None = None) -> dict:
    """Write a synthetic dataset in the exact MARS layout under ``root`` (atomically).

    Layout: ``bbox_train/<pid>/<PPPPCcTttttFfff>.jpg``, ``bbox_test/<pid>/...`` (with ``0000``
    distractors and ``00-1`` junk), ``info/{train,test}_name.txt``,
    ``info/tracks_{train,test}_info.mat`` (N x 4 float64 ``[start, end, pid, camera]``, 1-based
    inclusive lines) and ``info/query_IDX.mat`` (1-based rows). Every test identity has one
    query tracklet in each of its query cameras and gallery tracklets in at least one other
    camera, so every query has a valid match under either protocol.

    ``root`` is replaced as a whole (written next to it, then renamed). ``workers`` threads
    render tracklets (default 1); the files do not depend on it.

    Returns what was planted: per-split ``{"tracklets", "identities", "frames"}`` (gallery
    excludes queries and junk; identities exclude pid 0), junk and distractor counts.
    """
    cfg = cfg or SyntheticConfig()
    ncam = cfg.cameras_for(MARS_CAMERAS, MAX_CAMERAS)
    root = Path(root)
    rng = np.random.default_rng([cfg.seed, 10, 0])
    train_pids, test_pids, _ = draw_pids(rng, cfg)
    lens = lambda k: rng.integers(cfg.min_len, cfg.max_len + 1, size=k)  # noqa: E731

    def build(pids, test: bool):
        pid, cam, query = [], [], []
        for p in pids:
            cams, per = identity_tracklets(rng, cfg, ncam, int(p))
            nq = int(rng.integers(1, len(cams))) if test else 0   # leave >= 1 gallery camera
            qcams = set(rng.choice(cams, nq, replace=False).tolist()) if nq else set()
            for c, m in zip(cams, per):
                for j in range(int(m)):
                    pid.append(int(p))
                    cam.append(int(c))
                    query.append(j == 0 and int(c) in qcams)
        return np.array(pid, np.int64), np.array(cam, np.int64), np.array(query, bool)

    tr_pid, tr_cam, _ = build(train_pids, False)
    te_pid, te_cam, te_q = build(test_pids, True)
    nd, nj = cfg.num_distractor_tracklets, cfg.num_junk_tracklets
    te_pid = np.concatenate([te_pid, np.zeros(nd, np.int64), -np.ones(nj, np.int64)])
    te_cam = np.concatenate([te_cam, rng.integers(1, ncam + 1, nd + nj)])
    te_q = np.concatenate([te_q, np.zeros(nd + nj, bool)])
    train = {"pid": tr_pid, "cam": tr_cam, "tnum": track_numbers(tr_pid, tr_cam), "length": lens(len(tr_pid))}
    test = {"pid": te_pid, "cam": te_cam, "tnum": track_numbers(te_pid, te_cam), "length": lens(len(te_pid))}

    painter = Painter(cfg, ncam, stream=11)
    with atomic_dir(root) as tmp:
        info = write_mars_info(tmp, train, test, te_q)
        files, jobs = [], []
        for split in ("train", "test"):
            pids, cams = info[split]["pid"].tolist(), info[split]["cam"].tolist()
            for (sub, fnames), pid, cam in zip(tracklet_files(info, split), pids, cams, strict=True):
                files.append((tmp / sub, fnames))
                key = pid if pid > 0 else 100_000 + len(jobs)   # distractors/junk: one-off people
                jobs.append((key, cam - 1, len(fnames), len(jobs), pid < 0))
        for (d, fnames), frames in zip(files, painter.render_many(jobs, workers)):
            d.mkdir(parents=True, exist_ok=True)
            for name, data in zip(fnames, frames):
                (d / name).write_bytes(data)

    return _mars_planted(info, root, cfg.seed, ncam)


# --------------------------------------------------------------------------------------------
# DukeMTMC-VideoReID
# --------------------------------------------------------------------------------------------
def _duke_frame_names(pid: int, cam: int, f0: int, x0: int, n: int, old: bool) -> list[str]:
    if old:
        return [f"{pid:04d}C{cam}F{f0 + i:04d}X{x0 + i:05d}.jpg" for i in range(n)]
    return [f"{pid:04d}_C{cam}_F{f0 + i:04d}_X{x0 + i:05d}.jpg" for i in range(n)]


def generate_duke(root: str | os.PathLike, cfg: SyntheticConfig | None = None, *,
                  workers: int | None = None) -> dict:
    """Write a synthetic dataset in the DukeMTMC-VideoReID layout under ``root`` (atomically).

    Layout: ``{train,query,gallery}/<pid>/<tracklet>/<frame>.jpg`` with frame names in both
    styles (``0001_C6_F0099_X30823.jpg`` and ``0001C6F0099X30823.jpg``); some tracklets start
    at ``F0002``. Each test identity has one query tracklet; the gallery holds every test
    tracklet, the query ones included (same folder name), plus ``num_distractor_ids``
    gallery-only identities.

    ``root`` is replaced as a whole; ``workers`` as in :func:`generate_mars`.

    Returns what was planted: per-split ``{"tracklets", "identities", "frames"}``, distractor
    identity/tracklet counts, and style/start counts.
    """
    cfg = cfg or SyntheticConfig()
    ncam = cfg.cameras_for(DUKE_CAMERAS, 9)  # one camera digit
    root = Path(root)
    rng = np.random.default_rng([cfg.seed, 20, 0])
    train_pids, test_pids, dis_pids = draw_pids(rng, cfg, cfg.num_distractor_ids)

    # (split, pid, tracklet folder, camera, length, f0, x0, old)
    rows: list[tuple] = []

    def add(splits: tuple[str, ...], pid: int, tid: int, cam: int):
        n = int(rng.integers(cfg.min_len, cfg.max_len + 1))
        f0 = 2 if rng.random() < cfg.f0002_fraction else 1
        x0 = int(rng.integers(1, 60000))
        old = bool(rng.random() < cfg.old_style_fraction)
        for s in splits:
            rows.append((s, pid, tid, cam, n, f0, x0, old))

    for p in train_pids:
        cams, per = identity_tracklets(rng, cfg, ncam, int(p))
        tid = 0
        for c, m in zip(cams, per):
            for _ in range(int(m)):
                tid += 1
                add(("train",), int(p), tid, int(c))
    for p in test_pids:
        cams, per = identity_tracklets(rng, cfg, ncam, int(p))
        qcam = int(rng.choice(cams))
        tid = 0
        for c, m in zip(cams, per):
            for j in range(int(m)):
                tid += 1
                add(("query", "gallery") if (int(c) == qcam and j == 0) else ("gallery",), int(p), tid, int(c))
    for p in dis_pids:
        for tid in range(1, int(rng.integers(1, 3)) + 1):
            add(("gallery",), int(p), tid, int(rng.integers(1, ncam + 1)))

    # guarantee both name styles and an F0002 start in every split
    for split in ("train", "query", "gallery"):
        idx = [i for i, r in enumerate(rows) if r[0] == split]
        for i, (old, f0) in zip(idx[:2], ((True, 2), (False, 1))):
            r = rows[i]
            rows[i] = r[:5] + (f0, r[6], old)
    # a query tracklet and its gallery copy must be identical
    qkeys = {(r[1], r[2]): r for r in rows if r[0] == "query"}
    rows = [(r[0],) + qkeys[(r[1], r[2])][1:] if r[0] == "gallery" and (r[1], r[2]) in qkeys else r for r in rows]

    painter = Painter(cfg, ncam, stream=21)
    first: dict[tuple[int, int], int] = {}      # (pid, tracklet) -> job; a query and its gallery copy share one
    jobs = []
    for _split, pid, tid, cam, n, _f0, _x0, _old in rows:
        if (pid, tid) not in first:
            first[(pid, tid)] = len(jobs)
            jobs.append((pid, cam - 1, n, len(jobs), False))
    users: dict[int, list[tuple]] = {}
    for r in rows:
        users.setdefault(first[(r[1], r[2])], []).append(r)
    with atomic_dir(root) as tmp:
        for j, frames in enumerate(painter.render_many(jobs, workers)):
            for split, pid, tid, cam, n, f0, x0, old in users[j]:
                d = tmp / split / f"{pid:04d}" / f"{tid:04d}"
                d.mkdir(parents=True, exist_ok=True)
                for name, data in zip(_duke_frame_names(pid, cam, f0, x0, n, old), frames):
                    (d / name).write_bytes(data)

    def counts(split):
        rs = [r for r in rows if r[0] == split]
        return {"tracklets": len(rs), "identities": len({r[1] for r in rs}), "frames": sum(r[4] for r in rs)}

    qpids = {r[1] for r in rows if r[0] == "query"}
    dis_rows = [r for r in rows if r[0] == "gallery" and r[1] not in qpids]
    return {
        "dataset": "duke",
        "root": str(root),
        "seed": cfg.seed,
        "num_cameras": ncam,
        "splits": {s: counts(s) for s in ("train", "query", "gallery")},
        "distractor_identities": len({r[1] for r in dis_rows}),
        "distractor_tracklets": len(dis_rows),
        "junk_tracklets": 0,
        "old_style_tracklets": sum(1 for r in rows if r[7]),
        "f0002_tracklets": sum(1 for r in rows if r[5] == 2),
        "files": sum(r[4] for r in rows),
    }


# --------------------------------------------------------------------------------------------
# full-scale MARS metadata (names + .mat only)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MarsScale:
    """Counts of the published MARS release (the defaults)."""

    train_ids: int = 625
    train_tracklets: int = 8298
    train_frames: int = 509914
    query_ids: int = 626
    gallery_only_ids: int = 10          # 1,261 - 625 - 626 test identities without a query
    queries: int = 1980
    junk: int = 870
    distractors: int = 3248
    test_tracklets: int = 12180
    test_frames: int = 681089
    min_len: int = 2
    max_len: int = 920
    num_cameras: int = 6


MARS_PUBLISHED = MarsScale()


def _exact_lengths(rng, n: int, total: int, lo: int, hi: int, mean_log: float) -> np.ndarray:
    """n lengths in [lo, hi] summing to ``total``, long-tailed, with lo and hi both present."""
    x = np.exp(rng.normal(mean_log, 0.9, n))
    x = np.clip(np.round(x * (total / x.sum())), lo, hi).astype(np.int64)
    x[0], x[1] = lo, hi
    for _ in range(100):
        diff = total - int(x.sum())
        if diff == 0:
            break
        room = (x[2:] < hi) if diff > 0 else (x[2:] > lo)
        cand = np.flatnonzero(room) + 2
        pick = rng.choice(cand, min(abs(diff), len(cand)), replace=False)
        x[pick] += 1 if diff > 0 else -1
    if int(x.sum()) != total:
        raise ValueError(f"cannot split {total} frames into {n} tracklets of {lo}..{hi}")
    return rng.permutation(x)


def write_mars_metadata(root: str | os.PathLike, seed: int = 0, scale: MarsScale = MARS_PUBLISHED) -> dict:
    """Write only ``info/`` of a MARS-shaped dataset (names and ``.mat`` files, no images).

    At the default ``scale`` the files match the published release: 8,298 train tracklets of
    625 identities over 509,914 frames; 12,180 test tracklets over 681,089 frames, of which
    1,980 queries (626 identities), 870 junk (pid -1) and 3,248 distractors (pid 0), leaving
    9,330 gallery tracklets after junk removal; lengths 2-920. Fully vectorised (about a second).
    Returns the planted counts in the same form as :func:`generate_mars`.
    """
    sc = scale
    rng = np.random.default_rng([seed, 30, 0])
    ncam = sc.num_cameras
    n_test_ids = sc.query_ids + sc.gallery_only_ids
    pool = rng.choice(np.arange(1, 1502), sc.train_ids + n_test_ids, replace=False)
    train_ids = np.sort(pool[:sc.train_ids])
    test_ids = np.sort(pool[sc.train_ids:])
    qid_pos = np.sort(rng.choice(n_test_ids, sc.query_ids, replace=False))

    def spread(n_items: int, n_bins: int, base: np.ndarray, cap: np.ndarray | None = None) -> np.ndarray:
        out = base.astype(np.int64).copy()
        extra = n_items - int(out.sum())
        if extra < 0:
            raise ValueError("scale is inconsistent")
        if cap is None:
            out += rng.multinomial(extra, np.full(n_bins, 1.0 / n_bins))
            return out
        while extra:
            room = np.flatnonzero(out < cap)
            pick = rng.choice(room, min(extra, len(room)), replace=False)
            out[pick] += 1
            extra -= len(pick)
        return out

    # train: every identity in >= 2 cameras; tracklet k of an identity is in camera
    # (base + k mod ncam_i) so consecutive tracklets cycle through its cameras
    per_id = spread(sc.train_tracklets, sc.train_ids, np.full(sc.train_ids, 2))
    tr_pid = np.repeat(train_ids, per_id)
    k = np.arange(len(tr_pid)) - np.repeat(np.cumsum(per_id) - per_id, per_id)
    ncams = np.repeat(rng.integers(2, ncam + 1, sc.train_ids), per_id)
    base = np.repeat(rng.integers(0, ncam, sc.train_ids), per_id)
    tr_cam = (base + k % ncams) % ncam + 1

    # test: each query identity has q_i (1..5) query cameras and >= 1 gallery camera
    nq = spread(sc.queries, sc.query_ids, np.ones(sc.query_ids), cap=np.full(sc.query_ids, ncam - 1))
    id_q = np.zeros(n_test_ids, np.int64)
    id_q[qid_pos] = nq
    id_ncam = np.maximum(id_q + 1, rng.integers(2, ncam + 1, n_test_ids))
    id_ncam = np.minimum(id_ncam, ncam)
    id_base = rng.integers(0, ncam, n_test_ids)
    n_gal_ids = sc.test_tracklets - sc.queries - sc.junk - sc.distractors
    gal_per = spread(n_gal_ids, n_test_ids, np.ones(n_test_ids))
    q_pid = np.repeat(test_ids, id_q)
    qk = np.arange(len(q_pid)) - np.repeat(np.cumsum(id_q) - id_q, id_q)
    q_cam = (np.repeat(id_base, id_q) + qk) % ncam + 1
    g_pid = np.repeat(test_ids, gal_per)
    gk = np.arange(len(g_pid)) - np.repeat(np.cumsum(gal_per) - gal_per, gal_per)
    gq, gn = np.repeat(id_q, gal_per), np.repeat(id_ncam, gal_per)
    # gallery tracklet j of an identity: first its non-query cameras, then cycle over all
    slot = np.where(gq + gk < gn, gq + gk, gk % gn)
    g_cam = (np.repeat(id_base, gal_per) + slot) % ncam + 1
    te_pid = np.concatenate([q_pid, g_pid, np.zeros(sc.distractors, np.int64), -np.ones(sc.junk, np.int64)])
    te_cam = np.concatenate([q_cam, g_cam, rng.integers(1, ncam + 1, sc.distractors + sc.junk)])
    te_q = np.zeros(len(te_pid), bool)
    te_q[:len(q_pid)] = True
    # query tracklets come first within their (pid, camera), so they keep T number 1 after sorting
    train = {"pid": tr_pid, "cam": tr_cam, "tnum": track_numbers(tr_pid, tr_cam),
             "length": _exact_lengths(rng, len(tr_pid), sc.train_frames, sc.min_len, sc.max_len, 3.7)}
    test = {"pid": te_pid, "cam": te_cam, "tnum": track_numbers(te_pid, te_cam),
            "length": _exact_lengths(rng, len(te_pid), sc.test_frames, sc.min_len, sc.max_len, 3.6)}
    root = Path(root)
    info = write_mars_info(root, train, test, te_q)
    return _mars_planted(info, root, seed, ncam)
