"""Left and right are anatomical, end to end: volume -> preprocessing -> model -> maps -> volume.

A classifier is trained here to tell a bright blob on the patient's left from one on the right (in the
model's canonical input, columns >= W/2 are the patient's left). The same anatomy stored with a mirrored
direction matrix must give the same prediction and the same saliency in patient space; mirrored anatomy
must swap the prediction.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from ACATLogic import CTVolume, to_canonical
from ACATLogic.bundle import load_bundle, save_bundle
from ACATLogic.explain import Explainer
from ACATLogic.models.registry import register_model
from ACATLogic.preprocess import InputSpec

from toy import ShuffleAutoencoder, TinyScanClassifier, blob_scans, train

SIZE, SLICES = 32, 3


@register_model("test_toy_lr")
class ToyLR(TinyScanClassifier):
    """Pools the two image halves separately (like the brain model's hemispheres): it knows sides."""

    def __init__(self, width: int = 6):
        super().__init__(num_classes=2, width=width)
        self.class_names = ("right", "left")  # label 1 = blob in columns >= W/2 = patient left
        self.config = {"width": width}
        self.head = nn.Linear(2 * width, 2)

    def forward(self, x):
        b, s, _, h, w = x.shape
        f = torch.relu(self.conv2(torch.relu(self.conv1(x.flatten(0, 1)))))
        halves = torch.cat([f[..., : w // 2].amax(dim=(2, 3)), f[..., w // 2:].amax(dim=(2, 3))], dim=1)
        return self.head(halves.view(b, s, -1).mean(dim=1))

    def attention_maps(self):
        return {}


@register_model("test_shuffle_ae")
class ToyAE(ShuffleAutoencoder):
    config: dict = {}


def _phantom(blob_side: str) -> CTVolume:
    """An elliptical 'head' (30 HU) in air with a bright blob (+400 HU) on one side; canonical LPS."""
    k, j, i = 9, 48, 40
    vox = np.full((k, j, i), -1000.0, np.float32)
    jj, ii = np.mgrid[0:j, 0:i]
    head = ((jj - 23.5) / 20) ** 2 + ((ii - 19.5) / 16) ** 2 <= 1
    vox[:, head] = 30.0
    centre_i = 27 if blob_side == "left" else 12  # i runs towards the patient's left
    blob = (jj - 22) ** 2 + (ii - centre_i) ** 2 <= 9
    vox[:, blob] = 400.0
    return CTVolume(vox, (4.0, 4.0, 5.0), (-78.0, -94.0, 0.0), np.eye(3), {"modality": "CT"})


@pytest.fixture(scope="module")
def lr_bundle(tmp_path_factory):
    torch.manual_seed(0)
    x, y, _ = blob_scans(64, size=SIZE, slices=SLICES, seed=11, side="both")
    saved = torch.get_num_threads()
    torch.set_num_threads(2)  # the same float sums, so the same toy model, whatever the machine or test worker
    try:
        model = train(ToyLR(), x, y, steps=120)
    finally:
        torch.set_num_threads(saved)
    xt, yt, _ = blob_scans(48, size=SIZE, slices=SLICES, seed=12, side="both")
    assert (model(xt).argmax(1) == yt).float().mean() >= 0.95
    spec = InputSpec(slices=SLICES, size=(SIZE, SIZE), hu_window=(0.0, 1000.0), alignment="brain_midline")
    folder = tmp_path_factory.mktemp("lr") / "bundle"
    save_bundle(folder, models={"baseline": model, "autoencoder": ToyAE()}, bundle_id="test-lr", version="0",
                task="brain_stroke", spec=spec, training_data="synthetic blobs (test)",
                explanation={"alpha": 1.0, "steps": 10, "step_size": 0.5})
    return load_bundle(folder)


def _mirror_storage(volume: CTVolume) -> CTVolume:
    """Same anatomy, i axis stored reversed (direction column negated, origin at the other end)."""
    size_i = volume.voxels_hu.shape[2]
    origin = volume.index_to_lps([size_i - 1, 0, 0])
    direction = volume.direction.copy()
    direction[:, 0] *= -1
    return CTVolume(volume.voxels_hu[:, :, ::-1].copy(), volume.spacing_mm, origin, direction, dict(volume.metadata))


def test_same_anatomy_mirrored_storage_same_answer(lr_bundle):
    explainer = Explainer(lr_bundle, device="cpu")
    anatomy = _phantom("left")
    stored = _mirror_storage(anatomy)
    assert stored.orientation_code() == "RPS"
    # the toy head has no skull for the brain mask to find: the map covers the whole grid
    a = explainer.explain(anatomy, organ_mask=False)
    b = explainer.explain(stored, organ_mask=False)
    assert a.label == b.label == "left"
    assert a.probabilities["left"] == pytest.approx(b.probabilities["left"], abs=1e-5)
    # same saliency in patient space: compare on the canonical grid
    sal_a = to_canonical(a.saliency)[0].voxels_hu
    sal_b = to_canonical(b.saliency)[0].voxels_hu
    np.testing.assert_allclose(sal_a, sal_b, atol=1e-4)
    # and the saliency sits on the patient's left (LPS x > 0) where the blob is
    k, j, i = np.unravel_index(np.argmax(a.saliency.voxels_hu), a.saliency.voxels_hu.shape)
    assert a.saliency.index_to_lps([i, j, k])[0] > 0
    k, j, i = np.unravel_index(np.argmax(b.saliency.voxels_hu), b.saliency.voxels_hu.shape)
    assert b.saliency.index_to_lps([i, j, k])[0] > 0


def test_mirrored_anatomy_swaps_left_and_right(lr_bundle):
    explainer = Explainer(lr_bundle, device="cpu")
    left = explainer.explain(_phantom("left"))
    right = explainer.explain(_phantom("right"))
    assert left.label == "left" and right.label == "right"
    assert right.probabilities["right"] > 0.9 and left.probabilities["left"] > 0.9


def test_outputs_are_on_the_input_grid(lr_bundle):
    stored = _mirror_storage(_phantom("left"))
    result = Explainer(lr_bundle, device="cpu").explain(stored)
    for vol in [result.saliency, *result.counterfactuals.values()]:
        assert vol.voxels_hu.shape == stored.voxels_hu.shape
        np.testing.assert_array_equal(vol.spacing_mm, stored.spacing_mm)
        np.testing.assert_array_equal(vol.origin_mm, stored.origin_mm)
        np.testing.assert_array_equal(vol.direction, stored.direction)
    # the counterfactual towards "right" dims the left blob (and nothing far from it)
    cf = to_canonical(result.counterfactuals["right"])[0].voxels_hu
    original = to_canonical(stored)[0].voxels_hu
    assert (original - cf)[:, 19:26, 24:31].mean() > 50  # HU removed at the blob
    assert np.abs(original - cf)[:, :, :8].max() < 20  # far right of the head: untouched
    assert set(result.counterfactuals) == {"left", "right"}
    assert result.reached_step["right"] is not None
