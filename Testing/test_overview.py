"""overview.png's choices: which slices it shows and which voxels its overlay colours (ACATLogic/overview.py)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ACATLogic.options import OVERLAY_PERCENTILE
from ACATLogic.overview import TILE, overlay_range, pick_slices, shown, write_overview
from ACATLogic.volume import CTVolume


def test_the_slice_through_the_maximum_is_always_shown():
    saliency = np.zeros((30, 8, 8), np.float32)
    saliency[5:8] = 0.3  # broad, weak: the most mass
    saliency[12:15] = 0.3
    saliency[22, 4, 4] = 1.0  # one sharp peak: little mass
    assert 22 in pick_slices(saliency)
    assert pick_slices(saliency) == sorted(pick_slices(saliency)) and len(pick_slices(saliency)) == 3
    gaps = np.diff(pick_slices(saliency))
    assert (gaps >= 30 // 9).all()


def test_the_overlay_colours_the_top_five_percent_like_the_viewers():
    rng = np.random.default_rng(0)
    saliency = rng.random((10, 20, 20)).astype(np.float32) ** 4  # peaky, as a whitened map is
    low, high = overlay_range(saliency)
    assert OVERLAY_PERCENTILE == 95.0
    assert abs(float((saliency > low).mean()) - 0.05) < 0.002 and high == float(saliency.max())
    zero = np.zeros((4, 5, 5), np.float32)
    assert not shown(zero, *overlay_range(zero))[0].any()  # an all-zero map colours nothing
    assert overlay_range(np.full((2, 3, 3), np.nan, np.float32)) == (0.0, 0.0)  # nothing but NaN: nothing to show
    top = np.zeros((10, 10, 10), np.float32)
    top[:2] = 1.0  # 20 % of the voxels at the maximum: the 95th percentile is the maximum itself
    coloured, strength = shown(top, *overlay_range(top))
    assert coloured[:2].all() and not coloured[2:].any() and (strength[:2] == 1).all()


def test_a_peaky_map_is_visible_in_the_overview(tmp_path):
    """A map whose values stay below 0.2 but for one spot still colours its top 5 % (the old fixed 0.2 floor
    left a whitened map almost invisible)."""
    hu = np.full((12, 32, 32), 40.0, np.float32)
    ct = CTVolume(hu, spacing_mm=np.array([1.0, 1.0, 5.0]), origin_mm=np.zeros(3), direction=np.eye(3))
    sal = np.zeros_like(hu)
    sal[6, 8:16, 8:16] = 0.1
    sal[6, 10, 10] = 1.0
    out = tmp_path / "overview.png"
    slices = write_overview(out, ct, ct.with_voxels(sal), None, "test", (40.0, 80.0))
    assert 6 in slices
    image = np.asarray(Image.open(out).convert("RGB")).astype(int)
    red = (image[..., 0] > image[..., 1] + 40).sum()  # the heat overlay (the R / L labels are yellow)
    voxel = (TILE / 32) ** 2  # screen pixels per voxel of the tile
    assert red > 40 * voxel  # the whole 8 x 8 patch, not the one peak voxel


def test_a_map_with_nan_gives_a_picture_without_nan(tmp_path):
    hu = np.full((6, 16, 16), 40.0, np.float32)
    ct = CTVolume(hu, spacing_mm=np.array([1.0, 1.0, 5.0]), origin_mm=np.zeros(3), direction=np.eye(3))
    sal = np.zeros_like(hu)
    sal[3, 4:8, 4:8] = 0.5
    sal[1, 0, 0] = np.nan
    slices = write_overview(tmp_path / "o.png", ct, ct.with_voxels(sal), None, "test", (40.0, 80.0))
    clean = sal.copy()
    clean[1, 0, 0] = 0.0
    assert write_overview(tmp_path / "c.png", ct, ct.with_voxels(clean), None, "test", (40.0, 80.0)) == slices
    assert 3 in slices
    with_nan, without = (np.asarray(Image.open(tmp_path / n).convert("RGB")) for n in ("o.png", "c.png"))
    np.testing.assert_array_equal(with_nan, without)  # the NaN voxel counts as 0
