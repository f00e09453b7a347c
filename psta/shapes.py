"""The model's shape rules, importable without torch (config validation checks them up front).

PSTA fuses frame pairs level by level, so a clip of T frames gives log2(T) pyramid levels; the
ResNet backbone (last stride 1) downsamples its input by 16.
"""
from __future__ import annotations

BACKBONE_STRIDE = 16


def pyramid_levels(seq_len: int) -> int:
    """log2(T) for T a power of two >= 2, else a ValueError saying why."""
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2 or seq_len & (seq_len - 1):
        raise ValueError(
            f"PSTA needs the clip length seq_len (T) to be a power of two >= 2 (2, 4, 8, 16, ...): "
            f"every pyramid level fuses frame pairs and halves T down to 1; got T={seq_len!r}")
    return seq_len.bit_length() - 1


def feature_map_size(height: int, width: int) -> tuple[int, int]:
    """Feature-map size h x w for an input of height x width (overall stride 16, last stride 1).

    conv1, maxpool, layer2 and layer3 each map n -> floor((n - 1) / 2) + 1; layer4 keeps the size.
    """
    if height < 1 or width < 1:
        raise ValueError(f"input size must be positive, got {height} x {width}")

    def down(n: int) -> int:
        for _ in range(4):
            n = (n - 1) // 2 + 1
        return n

    return down(height), down(width)


__all__ = ["BACKBONE_STRIDE", "pyramid_levels", "feature_map_size"]
