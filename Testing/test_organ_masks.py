"""The organ masks (`ACATLogic.organ`) on real scans: Cranium (head) and Slicer's CTChest (lungs).

Thresholds stated here, checked on the models' own 64 x 64 input grid:
* brain: covers >= 90 % of the parenchyma that the phantom's template finds in Cranium (an independent
  3-D rule on the full-resolution scan), holds no skull pixel (>= 72 HU in the brain window), at most 3 %
  air (< -200 HU: the skull base's air cells enclosed by bone) and nothing at the slice border;
* lungs: covers >= 90 % of Slicer's own lung segmentation of CTChest, >= 75 % of the mask lies in that
  segmentation, no bone (> 300 HU) and nothing at the slice border (the air around the patient).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ACATLogic.io import read_volume
from ACATLogic.organ import fill_holes, organ_mask
from ACATLogic.preprocess import InputSpec, prepare

BRAIN = InputSpec(slices=11, size=(64, 64), hu_window=(40.0, 80.0), alignment="brain_midline")
LUNG = InputSpec(slices=11, size=(64, 64), hu_window=(-600.0, 1500.0), alignment="centre", organ="lungs")


def _hu_on_model_grid(prepared) -> torch.Tensor:
    return prepared.to_model_grid(prepared.source.voxels_hu, mode="bilinear")


def test_fill_holes_uses_four_connected_background():
    ring = torch.zeros(1, 9, 9, dtype=torch.bool)
    ring[0, 2, 2:7] = ring[0, 6, 2:7] = ring[0, 2:7, 2] = ring[0, 2:7, 6] = True
    filled = fill_holes(ring)
    assert filled[0, 3:6, 3:6].all() and not filled[0, 0].any()
    # a diagonal gap (corners missing) still encloses: the background does not leak through corners
    ring[0, 2, 2] = False
    assert fill_holes(ring)[0, 4, 4]
    # an edge gap opens the hole
    ring[0, 2, 4] = False
    assert not fill_holes(ring)[0, 4, 4]


def test_brain_mask_on_real_head_ct(cranium):
    from ACATData.phantom.brain_template import brain_template

    template = brain_template()
    prepared = prepare(template.volume, BRAIN, coverage="all")
    mask = organ_mask(prepared.images[:, :, 0], "brain", BRAIN.hu_window)
    truth = prepared.to_model_grid(template.parenchyma > 0) > 0.5
    hu = _hu_on_model_grid(prepared)
    covered = (mask & truth).sum() / truth.sum()
    assert covered >= 0.90, float(covered)
    assert not (mask & (prepared.images[:, :, 0] >= 0.9)).any()  # no skull pixel
    # air: only the skull base's air cells that bone encloses in-plane (the brain window reads all of
    # HU <= 0 as 0, so air and the darkest lesion look alike there): 2.6 % of the mask on Cranium
    assert (mask & (hu < -200)).sum() <= 0.03 * mask.sum()
    assert not mask[..., 0, :].any() and not mask[..., :, 0].any()
    # the skull base and the vertex: slices without a closed skull ring get no mask, not the whole slice
    per_slice = mask.flatten(2).float().mean(-1)
    assert per_slice.max() < 0.6


def test_lung_mask_on_real_chest_ct(ctchest_path):
    from ACATData.phantom.lung import LEFT_LUNG, RIGHT_LUNG, lung_template

    template = lung_template()
    prepared = prepare(template.volume, LUNG, coverage="all")
    mask = organ_mask(prepared.images[:, :, 0], "lungs", LUNG.hu_window)
    labels = prepared.to_model_grid(template.lung_mask)
    truth = (labels == LEFT_LUNG) | (labels == RIGHT_LUNG)
    hu = _hu_on_model_grid(prepared)
    assert (mask & truth).sum() / truth.sum() >= 0.90
    assert (mask & truth).sum() / mask.sum() >= 0.75
    assert (mask & (hu > 300)).sum() <= 0.002 * mask.sum()
    assert not mask[..., 0, :].any() and not mask[..., :, 0].any()


def test_organ_none_and_bad_name():
    x = torch.rand(2, 3, 1, 16, 16)
    assert organ_mask(x, "none", (40, 80)).all()
    with pytest.raises(ValueError, match="organ"):
        organ_mask(x, "liver", (40, 80))


def test_the_explainer_restricts_maps_to_the_organ(cranium):
    """A real explanation of the real head CT: the map is zero wherever the mask says "no brain"."""
    from bundles import make_random_bundle
    from ACATLogic.bundle import load_bundle
    from ACATLogic.explain import Explainer
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        bundle = load_bundle(make_random_bundle(Path(tmp) / "b", task="brain_stroke", slices=5, size=32, with_acat=False))
        explanation = Explainer(bundle, device="cpu").explain(cranium, method="gradient")
        sal = explanation.saliency.voxels_hu
        assert explanation.parameters["organ_mask"] is True and explanation.parameters["organ"] == "brain"
        assert sal.max() > 0.9  # the peak (1 on the model grid) survives the bilinear mapping back
        bone, air = cranium.voxels_hu >= 300, cranium.voxels_hu < -500
        # only the model pixels straddling the skull's inner table bleed into bone when mapped back
        # (measured: 3.5 % of bone voxels above 0.05 with the mask, 49 % without)
        assert (sal[bone] > 0.05).mean() < 0.06 and (sal[air] > 0.05).mean() < 0.005
        plain = Explainer(bundle, device="cpu").explain(cranium, method="gradient", organ_mask=False)
        assert (plain.saliency.voxels_hu[bone] > 0.05).mean() > 0.3


def test_a_scan_whose_size_does_not_fit_its_body_part_is_flagged(cranium, ctchest_path):
    """A head or chest of a plausible size gets no note; a header spacing five times too large (a 1.2 m head),
    or a scan of 4 slices (6 mm of a head), gets a one-line warning that says what to check."""
    from ACATLogic.volume import CTVolume

    assert prepare(cranium, BRAIN, coverage="sampled").notes == []
    assert prepare(read_volume(ctchest_path), LUNG, coverage="sampled").notes == []
    scaled = CTVolume(cranium.voxels_hu, tuple(5 * float(s) for s in cranium.spacing_mm), cranium.origin_mm,
                      cranium.direction, dict(cranium.metadata))
    notes = prepare(scaled, BRAIN, coverage="sampled").notes
    assert len(notes) == 1 and "measures 1232 mm across" in notes[0] and "check the pixel spacing" in notes[0]
    thin = CTVolume(cranium.voxels_hu[50:54], cranium.spacing_mm, cranium.index_to_lps([0, 0, 50]),
                    cranium.direction, dict(cranium.metadata))
    notes = prepare(thin, BRAIN, coverage="sampled").notes
    assert len(notes) == 1 and "covers only 6 mm along its slices" in notes[0], notes
