"""Test helper: small, randomly initialised model bundles of the real architectures."""

from __future__ import annotations

from pathlib import Path

import torch

from ACATLogic.bundle import save_bundle
from ACATLogic.models import create_model
from ACATLogic.preprocess import InputSpec

SMALL_MTL = {"widths": [4, 4, 8, 8, 8, 8, 8], "hidden": 8}


def make_random_bundle(folder: Path, *, task: str = "brain_stroke", with_acat: bool = True, size: int = 64,
                       slices: int = 5, seed: int = 0, steps: int = 3) -> Path:
    """A bundle of tiny untrained models (seeded): for plumbing tests, never for accuracy."""
    torch.manual_seed(seed)
    if task == "brain_stroke":
        baseline = create_model("brain_mtl", **SMALL_MTL)
        acat = create_model("acat", backbone="brain_mtl", slice_hidden=8, **SMALL_MTL) if with_acat else None
        spec = InputSpec(slices=slices, size=(size, size), hu_window=(40.0, 80.0), alignment="brain_midline")
    else:
        baseline = create_model("lung_resnet_small")
        acat = create_model("acat", backbone="lung_resnet_small", slice_hidden=8) if with_acat else None
        spec = InputSpec(slices=slices, size=(size, size), hu_window=(-600.0, 1500.0), alignment="centre")
    models = {"baseline": baseline.eval(), "autoencoder": create_model("autoencoder").eval()}
    if acat is not None:
        acat.load_image_branch_from(baseline)
        models["acat"] = acat.eval()
    return save_bundle(folder, models=models, bundle_id=f"random-{task}", version="0.0.0", task=task, spec=spec,
                       training_data="none: random weights for tests", explanation={"variant": "residual", "steps": steps},
                       description="random weights (test helper)")
