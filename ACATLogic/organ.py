"""The organ a map is about, found in the CT itself: brain parenchyma inside the skull, or the lungs.

Computed on the models' own input (windowed slices on the model grid, `ACATLogic.preprocess`), so the
Explainer and the training pipeline (which caches only those slices) restrict maps by the same rule.
Never from ground truth: only thresholds and morphology on the image.

* ``"brain"`` (window level 40, width 80, i.e. 0-80 HU): the skull is every pixel at 90 % of the window or
  more (>= 72 HU at these settings; cortical bone is far above it, parenchyma at 20-45 HU far below). A
  1-pixel dilation closes thin spots of the temporal squama; the cavity is what the dilated skull
  encloses in each slice (the part no 4-connected path from the slice border reaches), grown back by
  the dilation without entering the skull. Slices where the skull is not a closed ring (below the skull
  base, the vertex) give no cavity, and so no mask: the paper's brain lesions are supratentorial. Air
  cells of the skull base that bone encloses in-plane stay in (the window reads every HU <= 0 as 0, so
  they cannot be told from the darkest lesion there): 2.6 % of the mask on the Cranium head CT.
* ``"lungs"`` (any window reaching -1000..-300 HU): the air below -300 HU (aerated lung and ground glass)
  that no 4-connected path through air links to the slice border (so not the air around the patient, nor
  the gap to the table), holes filled, then closed with a radius of 2 pixels so that consolidation
  against the lung wall (-100..+40 HU) stays inside.
* ``"none"``: every pixel.

`organ_mask` works slice by slice (ITK's hole filling, torch max-pooling for dilation; no scipy).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

ORGANS = ("brain", "lungs", "none")
SKULL_FRACTION = 0.9  # of the brain window: >= 72 HU for the 0-80 HU window
LUNG_HU = -300.0
LUNG_CLOSING_PX = 2


def _dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """(N, H, W) bool -> dilated by a (2r+1)^2 square."""
    if radius <= 0:
        return mask
    return F.max_pool2d(mask[:, None].float(), 2 * radius + 1, stride=1, padding=radius)[:, 0] > 0


def _erode(mask: torch.Tensor, radius: int) -> torch.Tensor:
    return ~_dilate(~mask, radius)


def fill_holes(mask: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool -> the mask plus everything it encloses in each slice (the background is 4-connected,
    so a diagonal gap does not open a hole to the outside). ITK's BinaryFillhole, slice by slice."""
    import SimpleITK as sitk

    array = mask.detach().cpu().numpy().astype(np.uint8)
    out = np.empty_like(array)
    for n in range(array.shape[0]):
        image = sitk.GetImageFromArray(array[n])
        out[n] = sitk.GetArrayFromImage(sitk.BinaryFillhole(image, fullyConnected=False, foregroundValue=1))
    return torch.from_numpy(out.astype(bool)).to(mask.device)


def _reach_from_border(free: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool: the ``free`` pixels a 4-connected path inside ``free`` links to the slice border."""
    return ~fill_holes(~free)


def _hu(images: torch.Tensor, hu_window) -> torch.Tensor:
    level, width = float(hu_window[0]), float(hu_window[1])
    return images * width + (level - width / 2)


def brain_mask(images: torch.Tensor, hu_window) -> torch.Tensor:
    """(N, H, W) windowed slices in [0, 1] -> (N, H, W) bool: inside the skull, not the skull."""
    skull = images >= SKULL_FRACTION
    thick = _dilate(skull, 1)
    enclosed = ~_reach_from_border(~thick)  # the dilated skull and what it encloses
    return _dilate(enclosed & ~thick, 1) & enclosed & ~skull


def lung_mask(images: torch.Tensor, hu_window) -> torch.Tensor:
    """(N, H, W) windowed slices in [0, 1] -> (N, H, W) bool: the lungs (with their opacities)."""
    air = _hu(images, hu_window) < LUNG_HU
    outside = _reach_from_border(air)  # the air around the patient, and what touches it
    inner = fill_holes(air & ~outside)
    closed = _erode(_dilate(inner, LUNG_CLOSING_PX), LUNG_CLOSING_PX)
    return (closed | inner) & ~outside


def organ_mask(images: torch.Tensor, organ: str, hu_window) -> torch.Tensor:
    """images: (..., H, W) windowed in [0, 1] -> bool of the same shape (``organ`` in `ORGANS`)."""
    if organ not in ORGANS:
        raise ValueError(f"organ must be one of {ORGANS}, not {organ!r}")
    if organ == "none":
        return torch.ones_like(images, dtype=torch.bool)
    lead = images.shape[:-2]
    flat = images.detach().float().reshape(-1, *images.shape[-2:]).cpu()
    mask = brain_mask(flat, hu_window) if organ == "brain" else lung_mask(flat, hu_window)
    return mask.reshape(*lead, *images.shape[-2:]).to(images.device)
