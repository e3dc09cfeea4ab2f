"""``overview.png``: a few axial slices - CT, saliency overlay, counterfactual, difference - in one image.

Slices are shown in the radiological convention on the canonical grid: the patient's right on the
image's left, anterior at the top; every tile is labelled R / L so nobody has to remember that.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .io.atomic import atomic_path
from .options import OVERLAY_PERCENTILE
from .volume import CTVolume, to_canonical

TILE = 220


def hot(values: np.ndarray) -> np.ndarray:
    """[0, 1] -> RGB (black-red-yellow-white), float in [0, 1]."""
    v = np.clip(values, 0, 1)[..., None]
    return np.clip(np.concatenate([3 * v, 3 * v - 1, 3 * v - 2], axis=-1), 0, 1)


def _grey(hu: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    level, width = window
    g = np.clip((hu - (level - width / 2)) / width, 0, 1)
    return np.repeat(g[..., None], 3, axis=-1)


def _diverging(delta: np.ndarray, scale: float) -> np.ndarray:
    """Blue (darker in the counterfactual) - black - red (brighter)."""
    d = np.clip(delta / scale, -1, 1)[..., None]
    return np.concatenate([np.clip(d, 0, 1), np.zeros_like(d), np.clip(-d, 0, 1)], axis=-1)


def tile(rgb: np.ndarray, spacing_ji: tuple[float, float], caption: str = "", *, size: int = TILE,
         smooth: bool = True) -> Image.Image:
    """An RGB slice on a square black tile with its physical aspect ratio, labelled R (left edge) and
    L (right edge): radiological view of a canonical slice. Shared with the phantom picture sheets."""
    h, w = rgb.shape[:2]
    aspect = (h * spacing_ji[0]) / (w * spacing_ji[1])  # physical height / width
    shape = (size, max(1, int(round(size * aspect)))) if aspect <= 1 else (max(1, int(round(size / aspect))), size)
    img = Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8)).resize(
        shape, Image.BILINEAR if smooth else Image.NEAREST)
    canvas = Image.new("RGB", (size, size))
    canvas.paste(img, ((size - shape[0]) // 2, (size - shape[1]) // 2))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    draw.text((4, size // 2 - 6), "R", fill=(255, 255, 0), font=font)
    draw.text((size - 12, size // 2 - 6), "L", fill=(255, 255, 0), font=font)
    if caption:
        draw.text((4, size - 14), caption, fill=(200, 200, 200), font=font)
    return canvas


def pick_slices(saliency: np.ndarray, n: int = 3) -> list[int]:
    """The slice through the map's maximum, then the slices with the most saliency, at least a few slices
    apart (n in all; canonical k indices)."""
    flat = saliency.reshape(saliency.shape[0], -1)
    mass = np.nansum(flat, axis=1)  # NaN counts as 0
    peak = int(np.argmax(np.nan_to_num(np.fmax.reduce(flat, axis=1), nan=0.0)))  # fmax skips NaN, copies nothing
    order = [peak] + [int(k) for k in np.argsort(-mass, kind="stable") if int(k) != peak]
    gap = max(1, saliency.shape[0] // (3 * n))
    chosen: list[int] = []
    for k in order:
        if all(abs(int(k) - c) >= gap for c in chosen):
            chosen.append(int(k))
        if len(chosen) == n:
            break
    return sorted(chosen)


def overlay_range(saliency: np.ndarray, percentile: float = OVERLAY_PERCENTILE) -> tuple[float, float]:
    """(threshold, maximum) of the overlay: the voxels at or above the ``percentile`` of the map are coloured,
    as the Slicer module and the web viewer colour them by default, but never a voxel of value 0 (`shown`)."""
    high = float(np.fmax.reduce(saliency, axis=None)) if saliency.size else math.nan  # NaN left out
    if math.isnan(high):  # empty, or nothing but NaN
        return 0.0, 0.0
    return float(np.nanpercentile(saliency, percentile)), high


def shown(values: np.ndarray, low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
    """(coloured?, strength in [0, 1]: 0 at the threshold, 1 at the maximum) of a slice of the map."""
    coloured = (values >= low) & (values > 0)
    strength = np.clip((values - low) / (high - low), 0, 1) if high > low else np.ones_like(values)
    return coloured, strength


def overlay_rgb(grey: np.ndarray, values: np.ndarray, low: float, high: float) -> np.ndarray:
    """A slice of the map over a grey slice ((H, W, 1) or (H, W, 3) in [0, 1]) as RGB in [0, 1]: the voxels at
    or above ``low`` (`overlay_range`) coloured, red at the threshold to white at ``high``; NaN not coloured."""
    coloured, s = shown(np.nan_to_num(values, nan=0.0), low, high)  # one slice, not a volume copy
    alpha = np.where(coloured, 0.3 + 0.55 * s, 0.0)[..., None]
    return grey * (1 - alpha) + hot(0.4 + 0.6 * s) * alpha


def write_overview(path: Path, ct: CTVolume, saliency: CTVolume, counterfactual: Optional[CTVolume],
                   title: str, window: tuple[float, float], *, overwrite: bool = True) -> list[int]:
    """Render the overview; returns the canonical slice indices shown."""
    ct_c, _ = to_canonical(ct)
    sal_c, _ = to_canonical(saliency)
    cf_c = to_canonical(counterfactual)[0] if counterfactual is not None else None
    slices = pick_slices(sal_c.voxels_hu)
    spacing_ji = (float(ct_c.spacing_mm[1]), float(ct_c.spacing_mm[0]))
    columns = ["CT", "saliency overlay"] + (["counterfactual", "difference"] if cf_c is not None else [])
    header = 44
    sheet = Image.new("RGB", (TILE * len(columns), header + 16 + TILE * len(slices)), (0, 0, 0))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    draw.text((6, 4), title, fill=(255, 255, 255), font=font)
    draw.text((6, 18), "Research use only - not for diagnosis. Radiological view: patient right on the left.",
              fill=(200, 200, 200), font=font)
    for c, name in enumerate(columns):
        draw.text((c * TILE + 6, header), name, fill=(255, 255, 255), font=font)
    low, high = overlay_range(sal_c.voxels_hu)
    for r, k in enumerate(slices):
        base = _grey(ct_c.voxels_hu[k], window)
        tiles = [base, overlay_rgb(base, sal_c.voxels_hu[k], low, high)]
        if cf_c is not None:
            tiles.append(_grey(cf_c.voxels_hu[k], window))
            tiles.append(_diverging(cf_c.voxels_hu[k] - ct_c.voxels_hu[k], max(window[1] / 4, 1.0)))
        for c, rgb in enumerate(tiles):
            sheet.paste(tile(rgb, spacing_ji, f"slice {k}"), (c * TILE, header + 16 + r * TILE))
    with atomic_path(Path(path), overwrite=overwrite) as tmp:
        sheet.save(tmp, format="PNG")
    return slices
