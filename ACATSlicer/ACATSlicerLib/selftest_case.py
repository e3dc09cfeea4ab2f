"""A generated head CT and a tiny random model: what the module's self-test explains.

Neither is real data or a trained model: the CT is a skull-like ellipsoid of brain tissue with a
brighter blob in the patient's LEFT hemisphere, the model has random weights. They exercise the whole
path (file exchange, background run, result nodes, display) in seconds, on any computer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .volume_nodes import ijkToRasFromGeometry

LESION_HU = 70.0  # the blob in the patient's left hemisphere (brain tissue is 35 HU)


def syntheticHeadCT(slices: int = 12, size: int = 48, spacing_mm=(4.0, 4.0, 5.0)) -> tuple[np.ndarray, np.ndarray]:
    """((K, J, I) float32 HU, (4, 4) IJK-to-RAS). Axial, i towards the patient's left (LPS identity);
    air -1000 HU, skull 1000 HU, brain 35 HU and a 70 HU blob centred in the patient's left hemisphere."""
    k, j, i = np.meshgrid(np.linspace(-1, 1, slices), np.linspace(-1, 1, size), np.linspace(-1, 1, size),
                          indexing="ij")
    r = (i / 0.8) ** 2 + (j / 0.9) ** 2 + (k / 1.2) ** 2
    voxels = np.full(r.shape, -1000.0, dtype=np.float32)
    voxels[r < 1.0] = 1000.0
    voxels[r < 0.8] = 35.0
    voxels[(i - 0.4) ** 2 + j ** 2 + (k / 2) ** 2 < 0.04] = LESION_HU  # i > 0: towards the patient's left
    extent = np.asarray(spacing_mm) * (np.array([size, size, slices]) - 1)
    origin_lps = -extent / 2
    return voxels, ijkToRasFromGeometry(spacing_mm, origin_lps, np.eye(3))


def makeTinyBundle(folder, steps: int = 3) -> Path:
    """A random-weight brain bundle (baseline + autoencoder, 32 x 32 x 3 input) written to ``folder``.
    Unseeded: the self-test checks the plumbing, not the numbers."""
    from ACATLogic.bundle import save_bundle
    from ACATLogic.models import create_model
    from ACATLogic.preprocess import InputSpec

    models = {"baseline": create_model("brain_mtl", widths=[4, 4, 4, 8, 8, 8, 8], hidden=8).eval(),
              "autoencoder": create_model("autoencoder").eval()}
    spec = InputSpec(slices=3, size=(32, 32), hu_window=(40.0, 80.0), alignment="brain_midline")
    return save_bundle(Path(folder), models=models, bundle_id="selftest-random", version="0.0.0", task="brain_stroke",
                       spec=spec, training_data="none: random weights for the module self-test",
                       explanation={"steps": steps}, description="random weights: tests the plumbing only")
