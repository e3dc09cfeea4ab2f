"""How a scan batch becomes a batch of 2-D backbone images, and how results go back to image layout.

Scan input (fixed convention): ``x: (B, S, 1, H, W)`` float32 in [0, 1]; columns (W) increase towards
the patient's LEFT, rows (H) towards posterior. The classifiers run a 2-D backbone on many images at
once, and the layout decides what one image is:

* `SliceLayout` (lung): one axial slice is one image, N = B * S.
* `HemisphereLayout` (brain MTL baseline): every slice is cut at the midline into two hemisphere
  images, N = B * S * 2, ordered (scan, slice, [left, right]). The right hemisphere is mirrored so both
  present their lateral side (skull) at the same columns: one shared backbone then sees "a hemisphere",
  and the order of the concatenated features tells the heads which side it came from.

Both are plain frozen dataclasses (no parameters), so models can hold them and still deep-copy/pickle.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def _check_scan(x: Tensor) -> None:
    if x.dim() != 5:
        raise ValueError(f"expected a scan batch (B, S, C, H, W), got shape {tuple(x.shape)}")


@dataclass(frozen=True)
class SliceLayout:
    """Each axial slice is one backbone image (the lung classifiers)."""

    #: per-slice feature length = features_per_slice * backbone channels
    features_per_slice: int = 1

    def to_images(self, x: Tensor) -> Tensor:
        """x: (B, S, C, H, W) -> (B*S, C, H, W)."""
        _check_scan(x)
        b, s, c, h, w = x.shape
        return x.reshape(b * s, c, h, w)

    def gather_features(self, pooled: Tensor, batch: int, slices: int) -> Tensor:
        """pooled: (B*S, D) per-image features -> (B, S, D) per-slice features."""
        return pooled.reshape(batch, slices, -1)

    def to_slices(self, t: Tensor, batch: int, slices: int) -> Tensor:
        """t: (B*S, C, h, w) a backbone layer's output -> (B, S, C, h, w)."""
        return t.reshape(batch, slices, *t.shape[1:])


@dataclass(frozen=True)
class HemisphereLayout:
    """Each slice is split into its left and (mirrored) right hemisphere (the brain MTL baseline)."""

    features_per_slice: int = 2

    def to_images(self, x: Tensor) -> Tensor:
        """x: (B, S, C, H, W), W even -> (B*S*2, C, H, W/2), hemisphere order [left, right].

        left = x[..., W//2:] (the patient's left is at the high columns); right = x[..., :W//2]
        flipped along W, so that its lateral side lands at the high columns like the left one's.
        """
        _check_scan(x)
        b, s, c, h, w = x.shape
        if w % 2:
            raise ValueError(f"the brain model splits slices at the midline and needs an even width, got W={w}")
        half = w // 2
        pair = (x[..., half:], x[..., :half].flip(-1))
        return torch.stack(pair, dim=2).reshape(b * s * 2, c, h, half)

    def gather_features(self, pooled: Tensor, batch: int, slices: int) -> Tensor:
        """pooled: (B*S*2, D) -> (B, S, 2D) = [left features, right features] per slice."""
        return pooled.reshape(batch, slices, -1)

    def to_slices(self, t: Tensor, batch: int, slices: int) -> Tensor:
        """t: (B*S*2, C, h, w_half) -> (B, S, C, h, 2*w_half) in image layout.

        The right hemisphere is un-mirrored and placed at columns [:w_half], the left at [w_half:],
        so a Grad-CAM or attention map lines up with the input slice.
        """
        pairs = t.reshape(batch, slices, 2, *t.shape[1:])
        left, right = pairs[:, :, 0], pairs[:, :, 1].flip(-1)
        return torch.cat([right, left], dim=-1)
