"""Clip augmentation: one flip decision and one erasing rectangle for the whole clip."""
from __future__ import annotations

import pytest
import torch
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

from psta.data.transforms import (
    ERASE_FILL,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClipTransform,
    build_test_transform,
    build_train_transform,
)

H, W, T = 64, 32, 8


def _frame(seed: int = 0, h: int = H, w: int = W) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)


def _reference(frames: torch.Tensor) -> torch.Tensor:
    """v2's own ToDtype(scale) + Normalize, frame by frame."""
    tf = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    return torch.stack([tf(f) for f in frames])


FILL = torch.tensor(ERASE_FILL).view(3, 1, 1)


def _erased(frame: torch.Tensor) -> torch.Tensor:
    """H x W mask of the pixels holding exactly the reference's three fill values."""
    return (frame == FILL).all(dim=0)


def test_every_frame_gets_the_same_flip_and_erasing():
    frame = _frame()
    clip = frame.expand(T, -1, -1, -1).contiguous()  # T identical frames
    tf = build_train_transform(H, W)
    plain = _reference(frame[None])[0]
    flips = erases = 0
    for seed in range(60):
        out = tf(clip, generator=torch.Generator().manual_seed(seed))
        assert out.shape == (T, 3, H, W) and out.dtype == torch.float32
        for t in range(1, T):  # identical frames in -> identical frames out
            assert torch.equal(out[t], out[0])
        zero = _erased(out[0])  # erased pixels (no real pixel normalises to exactly the fill)
        if zero.any():
            erases += 1
            rows, cols = zero.any(dim=1).nonzero().ravel(), zero.any(dim=0).nonzero().ravel()
            i, j = int(rows[0]), int(cols[0])
            h, w = len(rows), len(cols)
            assert zero.sum() == h * w and zero[i:i + h, j:j + w].all()  # one rectangle
            assert 0.02 * H * W * 0.8 <= h * w <= 0.4 * H * W * 1.2
            assert (out[:, :, i:i + h, j:j + w] == FILL).all()  # same rectangle in every frame
        unerased = ~zero
        if torch.allclose(out[0][:, unerased], F.horizontal_flip(plain)[:, unerased], atol=1e-5) \
                and not torch.allclose(out[0][:, unerased], plain[:, unerased], atol=1e-5):
            flips += 1
        else:
            assert torch.allclose(out[0][:, unerased], plain[:, unerased], atol=1e-5)
    assert 12 <= flips <= 48, flips  # p = 0.5
    assert 12 <= erases <= 48, erases  # p = 0.5


def test_flip_and_erase_apply_to_all_frames_of_a_varied_clip():
    clip = torch.stack([_frame(s) for s in range(T)])
    tf = ClipTransform(H, W, flip_p=1.0, erase_p=1.0)
    params = tf.make_params(torch.Generator().manual_seed(0))
    assert params["flip"] and params["erase"] is not None
    out = tf.apply(clip, params)
    ref = _reference(F.horizontal_flip(clip))
    i, j, h, w = params["erase"]
    ref[..., i:i + h, j:j + w] = FILL
    assert torch.allclose(out, ref, atol=1e-5)


def test_erased_pixels_carry_exactly_the_three_fill_values():
    clip = torch.stack([_frame(s) for s in range(T)])
    tf = ClipTransform(H, W, erase_p=1.0)
    params = tf.make_params(torch.Generator().manual_seed(3))
    i, j, h, w = params["erase"]
    out = tf.apply(clip, params)
    for c, value in enumerate((0.485, 0.456, 0.406)):  # written into the normalised tensor
        assert (out[:, c, i:i + h, j:j + w] == torch.tensor(value)).all()
    assert _erased(out[0]).sum() == h * w  # nowhere else


def test_erasing_aspect_ratio_is_uniform_on_0_3_to_1_over_0_3():
    """The reference draws the ratio uniformly (torchvision: log-uniformly). A tiny area on a
    huge frame makes the first attempt always fit, so h / w is the drawn ratio up to rounding."""
    from scipy import stats

    tf = ClipTransform(20000, 10000, erase_p=1.0, erase_scale=(0.0005, 0.00051))
    g = torch.Generator().manual_seed(0)
    ratios = []
    for _ in range(3000):
        _, _, h, w = tf.make_params(g)["erase"]
        ratios.append(h / w)
    lo, hi = 0.3, 1 / 0.3
    assert lo * 0.99 <= min(ratios) and max(ratios) <= hi * 1.01
    assert stats.kstest(ratios, stats.uniform(lo, hi - lo).cdf).pvalue > 0.01
    assert stats.kstest(ratios, stats.loguniform(lo, hi).cdf).pvalue < 1e-6  # not torchvision's law


def test_same_generator_seed_same_output_and_global_rng_untouched():
    clip = torch.stack([_frame(s) for s in range(T)])
    tf = build_train_transform(H, W)
    outs = [tf(clip, generator=torch.Generator().manual_seed(42)) for _ in range(2)]
    assert torch.equal(outs[0], outs[1])
    state = torch.random.get_rng_state()
    tf(clip, generator=torch.Generator().manual_seed(1))
    assert torch.equal(state, torch.random.get_rng_state())


def test_test_transform_is_resize_and_normalise():
    clip = torch.stack([_frame(s, 2 * H, 2 * W) for s in range(3)])
    tf = build_test_transform(H, W)
    out = tf(clip)
    # the reference resizes test frames bilinearly (training frames: bicubic)
    resized = F.resize(clip, [H, W], interpolation=InterpolationMode.BILINEAR, antialias=True)
    assert out.shape == (3, 3, H, W)
    assert torch.allclose(out, _reference(resized), atol=1e-5)
    assert torch.equal(out, tf(clip))  # nothing random
    bicubic = F.resize(clip, [H, W], interpolation=InterpolationMode.BICUBIC, antialias=True)
    train_tf = build_train_transform(H, W, flip_p=0.0, erase_p=0.0)
    assert torch.allclose(train_tf(clip), _reference(bicubic), atol=1e-5)
    assert not torch.allclose(out, train_tf(clip), atol=1e-3)


def test_float_input_and_bad_shapes():
    clip = torch.stack([_frame(s) for s in range(2)])
    tf = build_test_transform(H, W)
    assert torch.allclose(tf(clip.float() / 255), tf(clip), atol=1e-5)
    with pytest.raises(ValueError, match="3 x H x W"):
        tf(torch.zeros(2, 4, H, W, dtype=torch.uint8))
    with pytest.raises(ValueError):
        ClipTransform(H, W, flip_p=1.5)
