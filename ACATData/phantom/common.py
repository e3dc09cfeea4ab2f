"""What every phantom generator returns, and the random helpers they share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ACATLogic.volume import CTVolume

BRAIN_LABELS = ("none", "left", "right", "both")
LUNG_LABELS = ("normal", "covid19")
#: brain vascular territories: id -> name (0 = outside every territory)
TERRITORIES = {1: "MCA_left", 2: "MCA_right", 3: "ACA_left", 4: "ACA_right", 5: "PCA_left", 6: "PCA_right"}


@dataclass
class PhantomCase:
    """One simulated patient. Every mask is on ``volume``'s grid, (K, J, I) like ``volume.voxels_hu``.

    Attributes:
        volume: the CT in HU with its LPS geometry (generators vary orientation, spacing, pose).
        lesion_mask: uint8, 0 = no lesion, n = lesion number n (1-based, see info["lesions"]).
        organ_mask: uint8, 1 inside the brain parenchyma (brain) or the lungs (lung).
        territory_map: uint8 territory ids (`TERRITORIES`) for the brain; None for the lung.
        label: class index; label_name: its name.
        info: every simulation parameter, JSON-serialisable (the ground truth's provenance).
    """

    volume: CTVolume
    lesion_mask: np.ndarray
    organ_mask: np.ndarray
    territory_map: Optional[np.ndarray]
    label: int
    label_name: str
    info: dict = field(default_factory=dict)


def case_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of case ``index`` in a dataset made with ``seed``: independent of the others, so
    cases can be made in parallel and in any order with identical results."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))
