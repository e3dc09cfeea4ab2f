"""The brain template of the SIMULATED stroke phantom: masks and vascular territories on a real head CT.

Built once per process from the real Cranium head CT (`ACATData.sample_data.load_cranium`: Debian
``invesalius-examples``, 108 x 256 x 256 voxels, 0.957 x 0.957 x 1.5 mm, canonical LPS layout: i ->
patient left, j -> posterior, k -> superior) and cached in memory (`brain_template`, ~4 s).

What the template holds, all on Cranium's grid (K, J, I):

* ``parenchyma``: brain tissue (cerebrum, cerebellum, brainstem) without CSF, bone or vessels.
  1. Bone = the largest 3D connected component of HU > 300 (the skull; the separate head holder of the
     scanner table is dropped).
  2. Intracranial = voxels enclosed by that bone in their axial slice: a ray from the voxel meets bone in
     at least 7 of 8 in-plane directions (4 axes, 4 diagonals). A plain per-slice hole fill fails here
     because thin frontal and temporal bone drops below 300 HU and leaves gaps in the ring; a ray test
     tolerates one gap.
  3. Parenchyma = intracranial, HU after a 1 mm Gaussian within [15, 60] (CSF and ventricles < 15,
     partial-volume bone, calcification and dense sinuses > 60), at least 2 voxels away from HU > 120,
     then an opening (erode 3x3x2 voxels, keep the largest component, dilate back inside the candidate)
     that cuts the thin bridges to orbits and skull-base soft tissue, and a 1-voxel closing.
  Cranium has a hypodense area at the right frontal convexity (HU < 15 next to thin bone); it falls
  outside the parenchyma mask, so no lesion is ever drawn there, and it is the same in every case.
* ``plane``: the mid-sagittal plane, the plane of best mirror symmetry of the intracranial cavity
  above the skull base (offset, yaw and roll found by coordinate search on a smoothed cavity mask).
  Symmetry of the skull cavity is steadier than a centroid, which an asymmetric brain or the right
  frontal hypodensity would pull sideways.
* ``territory_map``: the six supratentorial vascular territories (`TERRITORIES` ids), a coarse
  GEOMETRIC approximation of standard territory atlases, not an atlas. With ``a`` the antero-posterior
  and ``h`` the infero-superior position as fractions of the parenchyma's bounding box (0 = anterior /
  lowest) and ``d`` the distance to the mid-sagittal plane in mm:
  - infratentorial (no territory): posterior to the petrous ridge (a > 0.45) and below a tent-shaped
    tentorium, h = 0.42 at the incisura falling to 0.34 at the occipital pole in the midline and by a
    further 0.13 (front) to 0.07 (back) at 45 mm from the midline; and the brainstem (d < 15 mm,
    0.30 < a < 0.62, h < 0.45). Read off Cranium's sagittal and coronal slices.
  - PCA: the occipital lobe (a > 0.72 at h = 0.4, the boundary moving back to a = 0.84 at the vertex),
    the infero-medial temporal lobe (a > 0.40, d < 45 mm, within 0.08 of h above the tentorium), and
    the thalamus (d < 20 mm, 0.45 < a < 0.72, h < 0.58).
  - ACA: the medial strip d < 12 + 14 * clip((h - 0.35) / 0.6, 0, 1) mm (narrow at the base, ~26 mm at
    the vertex, where the ACA supplies the parasagittal convexity), anterior to a = 0.75, above the
    corpus callosum (h > 0.58) or in the medial frontal base (a < 0.33: gyrus rectus, orbitofrontal).
  - MCA: every other supratentorial voxel (the lateral convexity, insula, basal ganglia).
  The rules read a, h and d after a fixed smooth random displacement (std 4 mm, `WAVE_MM`), so the
  borders are wavy rather than planes. Left (ids 1, 3, 5) = the +x side of the plane (patient left,
  higher i), right (2, 4, 6) = the other side, exactly (the displacement never moves the plane).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from ACATLogic.volume import CTVolume

from .common import TERRITORIES

BONE_HU = 300.0
PARENCHYMA_HU = (15.0, 60.0)
NEAR_BONE_HU = 120.0
RAY_HITS_REQUIRED = 7  # of 8 in-plane directions
TERRITORY_ID = {name: tid for tid, name in TERRITORIES.items()}
#: std of the smooth random displacement (mm) that makes the territory borders wavy
WAVE_MM = 4.0
#: id stored for parenchyma outside every territory (infratentorial) in the combined anatomy label map
PARENCHYMA_ONLY = 7


@dataclass(frozen=True)
class MidSagittalPlane:
    """A plane in LPS mm: points p with ``normal . (p - point_mm) = 0``; ``normal`` points to patient left."""

    point_mm: tuple[float, float, float]
    normal: tuple[float, float, float]

    def signed_distance_mm(self, points_lps: np.ndarray) -> np.ndarray:
        """(N, 3) or (..., 3) LPS points in mm -> distance in mm, > 0 on the patient's left."""
        p = np.asarray(points_lps, dtype=np.float64)
        return (p - np.asarray(self.point_mm)) @ np.asarray(self.normal)

    def to_dict(self) -> dict:
        return {"point_mm": [float(v) for v in self.point_mm], "normal": [float(v) for v in self.normal]}


@dataclass
class BrainTemplate:
    """Cranium with its brain masks. Arrays are (K, J, I) on ``volume``'s grid and read-only (shared cache).

    Attributes:
        volume: the canonical Cranium CT (identity direction), HU.
        parenchyma: uint8 brain parenchyma mask.
        territory_map: uint8 territory ids (`TERRITORIES`), 0 outside the supratentorial parenchyma.
        plane: the mid-sagittal plane (LPS mm).
        info: measured volumes (ml) and the thresholds used, JSON-serialisable.
    """

    volume: CTVolume
    parenchyma: np.ndarray
    territory_map: np.ndarray
    plane: MidSagittalPlane
    info: dict = field(default_factory=dict)

    def anatomy_labels(self) -> np.ndarray:
        """uint8 (K, J, I): territory id 1..6, `PARENCHYMA_ONLY` for other parenchyma, 0 elsewhere.
        One map instead of two so that a deformation resamples it in a single pass."""
        labels = self.territory_map.copy()
        labels[(self.parenchyma > 0) & (labels == 0)] = PARENCHYMA_ONLY
        return labels


def _sitk(array: np.ndarray, spacing_mm=None) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    if spacing_mm is not None:
        image.SetSpacing(tuple(float(s) for s in spacing_mm))
    return image


def _ahead(b: np.ndarray, axis: int, reverse: bool) -> np.ndarray:
    """True where ``b`` is True at or beyond the voxel along +axis (or -axis when ``reverse``)."""
    if reverse:
        return np.flip(np.logical_or.accumulate(np.flip(b, axis), axis=axis), axis)
    return np.logical_or.accumulate(b, axis=axis)


def _ahead_diagonal(b: np.ndarray, anti: bool, reverse: bool) -> np.ndarray:
    """`_ahead` along an in-plane diagonal of (K, J, I): shear the diagonals into columns, scan, unshear."""
    _, nj, ni = b.shape
    jj = np.arange(nj)[:, None]
    ii = np.arange(ni)[None, :]
    cols = ii + jj if anti else ii - jj + nj - 1
    sheared = np.zeros((b.shape[0], nj, ni + nj), dtype=bool)
    sheared[:, jj, cols] = b
    return _ahead(sheared, 1, reverse)[:, jj, cols]


def intracranial_mask(hu: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K, J, I) HU -> (skull bone, intracranial cavity) boolean masks (see the module docstring)."""
    labels = sitk.RelabelComponent(sitk.ConnectedComponent(_sitk((hu > BONE_HU).astype(np.uint8))),
                                   sortByObjectSize=True)
    bone = sitk.GetArrayFromImage(labels) == 1
    hits = np.zeros(hu.shape, dtype=np.uint8)
    for reverse in (False, True):
        hits += _ahead(bone, 1, reverse)
        hits += _ahead(bone, 2, reverse)
        hits += _ahead_diagonal(bone, False, reverse)
        hits += _ahead_diagonal(bone, True, reverse)
    return bone, (hits >= RAY_HITS_REQUIRED) & ~bone


def parenchyma_mask(hu: np.ndarray, spacing_mm, cavity: np.ndarray) -> np.ndarray:
    """(K, J, I) bool brain parenchyma inside ``cavity`` (see the module docstring)."""
    smooth = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(_sitk(hu, spacing_mm), 1.0))
    near_bone = sitk.GetArrayFromImage(sitk.BinaryDilate(_sitk((hu > NEAR_BONE_HU).astype(np.uint8)), (2, 2, 1)))
    candidate = _sitk((cavity & (smooth >= PARENCHYMA_HU[0]) & (smooth <= PARENCHYMA_HU[1])
                       & (near_bone == 0)).astype(np.uint8))
    core = sitk.RelabelComponent(sitk.ConnectedComponent(sitk.BinaryErode(candidate, (3, 3, 2))),
                                 sortByObjectSize=True) == 1
    brain = sitk.BinaryDilate(core, (3, 3, 2)) & candidate
    brain = sitk.BinaryMorphologicalClosing(brain, (1, 1, 1)) & _sitk(cavity.astype(np.uint8))
    return sitk.GetArrayFromImage(brain).astype(bool)


def _voxel_lps(volume: CTVolume, mask: np.ndarray) -> np.ndarray:
    """(N, 3) LPS mm of the True voxels of a (K, J, I) mask."""
    k, j, i = np.nonzero(mask)
    return volume.index_to_lps(np.stack([i, j, k], axis=1))


def estimate_midsagittal_plane(volume: CTVolume, cavity: np.ndarray, parenchyma: np.ndarray) -> MidSagittalPlane:
    """The plane of best mirror symmetry of the supratentorial intracranial cavity (LPS mm).

    Score = mean of the 2 mm-smoothed cavity mask at the mirror images of ~20k cavity points; offset
    (+-20 mm), yaw and roll (+-10 degrees) are refined by coordinate search with shrinking steps.
    """
    ks = np.nonzero(parenchyma.any(axis=(1, 2)))[0]
    upper = cavity.copy()
    upper[: ks[0] + int(0.45 * (ks[-1] - ks[0]))] = False  # above the skull base: a clean, closed vault
    smooth = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(
        _sitk(upper.astype(np.float32), volume.spacing_mm), 2.0))
    points = _voxel_lps(volume, upper)[:: max(1, int(upper.sum()) // 20000)]
    centre = points.mean(axis=0)
    shape = np.array(upper.shape[::-1])  # (I, J, K)

    def score(x0: float, yaw: float, roll: float) -> float:
        n = np.array([1.0, np.tan(np.radians(yaw)), np.tan(np.radians(roll))])
        n /= np.linalg.norm(n)
        q = np.array([x0, centre[1], centre[2]])
        mirrored = points - 2 * ((points - q) @ n)[:, None] * n[None, :]
        idx = np.rint(volume.lps_to_index(mirrored)).astype(int)
        inside = np.all((idx >= 0) & (idx < shape), axis=1)
        i, j, k = idx[inside].T
        return float(smooth[k, j, i].sum() / len(points))

    best = [float(centre[0]), 0.0, 0.0]
    limits = [(centre[0] - 20, centre[0] + 20), (-10.0, 10.0), (-10.0, 10.0)]
    for step in (4.0, 2.0, 1.0, 0.5, 0.25):
        for _ in range(2):
            for p in range(3):
                trials = [best[p] + s * step for s in (-2, -1, 0, 1, 2)]
                trials = [t for t in trials if limits[p][0] <= t <= limits[p][1]]
                values = [score(*[t if q == p else best[q] for q in range(3)]) for t in trials]
                best[p] = trials[int(np.argmax(values))]
    n = np.array([1.0, np.tan(np.radians(best[1])), np.tan(np.radians(best[2]))])
    n /= np.linalg.norm(n)
    return MidSagittalPlane((best[0], float(centre[1]), float(centre[2])), tuple(float(v) for v in n))


def smooth_displacement_mm(volume: CTVolume, points_lps: np.ndarray, *, amplitude_mm: float = WAVE_MM,
                           lattice_mm: float = 12.0, seed: int = 20230723) -> np.ndarray:
    """(N, 3) LPS points -> (N, 3) smooth random displacements, mm (std ``amplitude_mm`` per component).

    A fixed random lattice (every ``lattice_mm``, smoothed by [1, 2, 1] / 4 along each axis) interpolated
    trilinearly: deterministic, so the territory map is the same in every process."""
    extent = volume.spacing_mm * (np.array(volume.size_ijk) - 1)
    n = np.ceil(extent / lattice_mm).astype(int) + 3
    coarse = np.random.default_rng(seed).standard_normal((3, n[2], n[1], n[0]))
    for axis in (1, 2, 3):
        coarse = (np.roll(coarse, 1, axis) + 2 * coarse + np.roll(coarse, -1, axis)) / 4
    coarse *= amplitude_mm / coarse.std(axis=(1, 2, 3), keepdims=True)
    # lattice node 1 sits on the volume's first voxel; grid_sample wants x, y, z in [-1, 1] over the nodes
    pos = (volume.lps_to_index(points_lps) * volume.spacing_mm / lattice_mm + 1) / (n - 1) * 2 - 1
    grid = torch.from_numpy(pos.astype(np.float32)).reshape(1, -1, 1, 1, 3)
    out = F.grid_sample(torch.from_numpy(coarse.astype(np.float32))[None], grid, mode="bilinear",
                        align_corners=True)
    return out[0, :, :, 0, 0].T.numpy().astype(np.float64)


def territory_labels(volume: CTVolume, parenchyma: np.ndarray, plane: MidSagittalPlane) -> np.ndarray:
    """uint8 (K, J, I) territory ids from the geometric rules of the module docstring."""
    k, j, i = np.nonzero(parenchyma)
    pts = volume.index_to_lps(np.stack([i, j, k], axis=1))
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    a = (pts[:, 1] - lo[1]) / (hi[1] - lo[1])  # 0 anterior .. 1 posterior
    h = (pts[:, 2] - lo[2]) / (hi[2] - lo[2])  # 0 lowest .. 1 vertex
    sd = plane.signed_distance_mm(pts)
    d = np.abs(sd)
    back = np.clip((a - 0.45) / 0.55, 0.0, 1.0)  # 0 at the petrous ridge .. 1 at the occipital pole
    # tent-shaped: highest at the incisura, lower towards the occiput and, more steeply, laterally
    tentorium = 0.42 - 0.08 * back - (0.13 - 0.06 * back) * np.clip(d / 45.0, 0.0, 1.0)
    infratentorial = ((a > 0.45) & (h < tentorium)) | ((d < 15) & (a > 0.30) & (a < 0.62) & (h < 0.45))
    # the territory rules read slightly wavy coordinates: straight cut planes would give every lesion that
    # reaches a territory border a ruler-straight edge, a tell-tale no real infarct has
    wave = smooth_displacement_mm(volume, pts)
    a = a + wave[:, 1] / (hi[1] - lo[1])
    h = h + wave[:, 2] / (hi[2] - lo[2])
    d = np.maximum(d + wave[:, 0], 0.0)
    back = np.clip((a - 0.45) / 0.55, 0.0, 1.0)
    tentorium = 0.42 - 0.08 * back - (0.13 - 0.06 * back) * np.clip(d / 45.0, 0.0, 1.0)
    occipital = a > 0.72 + 0.12 * np.clip((h - 0.4) / 0.6, 0.0, 1.0)
    inferior_temporal = (a > 0.40) & (h < tentorium + 0.08) & (d < 45)  # the lateral temporal cortex is MCA
    thalamus = (d < 20) & (a > 0.45) & (a < 0.72) & (h < 0.58)
    pca = occipital | inferior_temporal | thalamus
    aca_width = 12.0 + 14.0 * np.clip((h - 0.35) / 0.6, 0.0, 1.0)
    aca = ~pca & (d < aca_width) & (a < 0.75) & ((h > 0.58) | (a < 0.33))
    left = sd > 0
    ids = np.where(aca, np.where(left, 3, 4), np.where(pca, np.where(left, 5, 6), np.where(left, 1, 2)))
    ids[infratentorial] = 0
    out = np.zeros(parenchyma.shape, dtype=np.uint8)
    out[k, j, i] = ids
    return out


@functools.lru_cache(maxsize=1)
def brain_template() -> BrainTemplate:
    """The Cranium brain template (built on first call, ~4 s, then shared; do not modify its arrays)."""
    from ACATData.sample_data import load_cranium

    volume = load_cranium()
    hu = volume.voxels_hu
    _, cavity = intracranial_mask(hu)
    parenchyma = parenchyma_mask(hu, volume.spacing_mm, cavity)
    plane = estimate_midsagittal_plane(volume, cavity, parenchyma)
    territories = territory_labels(volume, parenchyma, plane)
    voxel_ml = float(np.prod(volume.spacing_mm)) / 1000.0
    info = {
        "source": "Cranium head CT, Debian package invesalius-examples (real anatomy)",
        "parenchyma_ml": float(parenchyma.sum() * voxel_ml),
        "territory_ml": {name: float((territories == tid).sum() * voxel_ml) for tid, name in TERRITORIES.items()},
        "midsagittal_plane": plane.to_dict(),
        "thresholds_hu": {"bone": BONE_HU, "parenchyma": list(PARENCHYMA_HU), "near_bone": NEAR_BONE_HU},
    }
    parenchyma = parenchyma.astype(np.uint8)
    for array in (parenchyma, territories):
        array.flags.writeable = False
    return BrainTemplate(volume, parenchyma, territories, plane, info)
