"""The autoencoder gate of issue 15 (`training.autoencoder_fitness`): the three numbers on real (toy) models,
and the gate refusing a deliberately undertrained autoencoder while passing a faithful one."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ACATLogic.models import create_model
from training.autoencoder_fitness import GATE, contrast, fitness, problems

from toy import TinyScanClassifier, blob_scans, train


class Exact(nn.Module):
    """Reconstructs its input exactly (pixel-unshuffle and back)."""

    def forward(self, x):
        flat = x.flatten(0, 1)
        return F.pixel_shuffle(F.pixel_unshuffle(flat, 4), 4).view_as(x)


class HalfContrast(nn.Module):
    """Keeps the background (0.7) and halves every departure from it: a known contrast loss."""

    def forward(self, x):
        return 0.7 + 0.5 * (x - 0.7)


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    x, y, centres = blob_scans(48, seed=3)
    x = 1.0 - x  # dark disks on a 0.7 background: hypodense "lesions", as the gate measures them
    model = train(TinyScanClassifier(), x, y, steps=120).eval()
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() >= 0.95  # a classifier that reads the blobs
    rr, cc = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    lesions = []
    for (r, c), label in zip(centres.tolist(), y.tolist()):
        if label == 0:
            lesions.append(None)
            continue
        disk = ((rr - r) ** 2 + (cc - c) ** 2) <= 9
        lesions.append(np.broadcast_to(disk, (3, 1, 32, 32)).copy())
    return model, x.numpy(), lesions


def test_a_faithful_autoencoder_passes(toy):
    model, images, lesions = toy
    numbers = fitness(model, Exact(), images, lesions)
    assert numbers["n"] == 48 and numbers["n_lesion_scans"] == sum(m is not None for m in lesions) > 10
    assert numbers["agreement"] == 1.0 and numbers["probability_change"] < 1e-5
    assert numbers["lesion_contrast_kept"] == pytest.approx(1.0, abs=1e-5)
    assert problems(numbers) == []


def test_contrast_kept_is_the_ratio_of_lesion_to_ring_contrast(toy):
    model, images, lesions = toy
    numbers = fitness(model, HalfContrast(), images, lesions)
    assert numbers["lesion_contrast_kept"] == pytest.approx(0.5, abs=1e-4)
    assert "lesion_contrast_kept 0.500 (needs >= 0.7)" in problems(numbers)
    # by hand on one scan: mean inside the lesion minus mean of the ring around it
    n = next(i for i, m in enumerate(lesions) if m is not None)
    x, m = torch.from_numpy(images[n, :, 0]), torch.from_numpy(lesions[n][:, 0])
    assert contrast(HalfContrast()(x), m) / contrast(x, m) == pytest.approx(0.5, abs=1e-5)


def test_a_deliberately_undertrained_autoencoder_is_refused(toy):
    model, images, lesions = toy
    torch.manual_seed(1)
    autoencoder = create_model("autoencoder", channels=[4, 8, 8], strides=[1, 2, 2])
    x = torch.from_numpy(images)
    opt = torch.optim.Adam(autoencoder.parameters(), lr=1e-3)
    for _ in range(3):  # three steps: far from converged
        opt.zero_grad()
        F.mse_loss(autoencoder(x), x).backward()
        opt.step()
    with torch.no_grad():
        numbers = fitness(model, autoencoder.eval(), images, lesions)
    failed = problems(numbers)
    assert numbers["lesion_contrast_kept"] < 0.7 and any(f.startswith("lesion_contrast_kept") for f in failed)
    assert numbers["agreement"] < 0.95 or numbers["probability_change"] > 0.05
    assert len(failed) >= 2


def test_the_gate_holds_the_issues_bars_and_never_passes_an_empty_measurement():
    assert GATE == (("agreement", ">=", 0.95), ("probability_change", "<=", 0.05), ("lesion_contrast_kept", ">=", 0.70))
    assert problems({"agreement": math.nan}) == ["no validation scan was measured"]
    # a contrast that could not be measured (no lesion scans) is not held against it; the others are
    assert problems({"agreement": 0.96, "probability_change": 0.04, "lesion_contrast_kept": math.nan}) == []
    assert problems({"agreement": 0.94, "probability_change": 0.06, "lesion_contrast_kept": 0.9}) == [
        "agreement 0.940 (needs >= 0.95)", "probability_change 0.060 (needs <= 0.05)"]


def test_the_blur_probe_smooths_and_keeps_flat_images():
    from training.autoencoder_fitness import GaussianBlur

    blur = GaussianBlur(1.0)
    assert blur.kernel.sum().item() == pytest.approx(1.0) and blur.radius == 3
    flat = torch.full((2, 3, 1, 16, 16), 0.4)
    assert torch.allclose(blur(flat), flat, atol=1e-6)  # replicate padding: a flat image is unchanged
    spike = torch.zeros(1, 1, 1, 15, 15)
    spike[..., 7, 7] = 1.0
    out = blur(spike)
    assert out.sum().item() == pytest.approx(1.0, abs=1e-5) and out.max().item() < 0.2  # spread, mass kept
    assert out.shape == spike.shape


def test_a_classifier_that_reads_the_disks_survives_a_mild_blur(toy):
    from training.autoencoder_fitness import GaussianBlur

    model, images, lesions = toy
    numbers = fitness(model, GaussianBlur(0.5), images, lesions)
    assert numbers["agreement"] >= 0.95 and numbers["lesion_contrast_kept"] > 0.8
