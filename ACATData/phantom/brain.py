"""SIMULATED early ischaemic stroke on a real head CT: the brain half of the phantom benchmark.

Stands in for IST-3 (4 classes: no lesion, left, right, both hemispheres), which cannot be obtained.
Every case is the real Cranium head CT (`brain_template`) turned into a new "patient" by a random pose,
scale and elastic warp, resampled to a random scanner grid, with zero, one or two simulated lesions,
scanner noise, an HU calibration error and a random storage orientation. Everything is SIMULATED.

A case is a pure function of ``(seed, index, label, params)``. The random stream is split so that the
patient (pose, grid, noise, calibration, storage) depends on ``(seed, index, params)`` only and the
lesions come from a separate child stream: the same ``(seed, index)`` with label 0 is the lesion-free
twin of a lesion case, voxel for voxel outside the lesions (useful to check counterfactuals).

The lesion model (an early ischaemic change as seen on non-contrast CT within hours):

* a smooth irregular blob grown from a seed voxel (>= 3 mm inside the chosen territory on the chosen
  side) by score ``-q/2 + irregularity * n``, q the quadratic form of a random ellipsoid (elongation
  1-2, random axes) centred on the seed and n a Gaussian random field (correlation ~ half the lesion
  radius): the connected component of the seed among the best-scoring voxels of the territory, with
  the count adjusted so that the final mask hits the target volume;
* a soft edge: the blob blurred by ``lesion_edge_mm`` gives a weight s in [0, 1]; the lesion mask is
  where s >= 0.5 (the change exceeds half its maximum), inside the territory;
* loss of grey-white differentiation: parenchyma HU blended towards the local parenchymal mean
  (Gaussian ``grey_white_sigma_mm``) by ``grey_white_loss * s``;
* hypodensity: parenchyma HU lowered by ``A * s`` with A such that the mean drop over the mask equals
  the drawn contrast (``contrast_hu``, HU below the local normal parenchyma; the peak is A). CSF and
  bone inside the blob are left alone.

Left means the patient's left (+x in LPS) of the mid-sagittal plane, whatever the storage order of the
array: `PhantomCase.info` gives the plane in patient coordinates, and lesions are kept strictly on
their side of it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import SimpleITK as sitk
import torch

from ACATLogic.volume import CTVolume, canonical_reorientation, orientation_code

from .brain_template import PARENCHYMA_ONLY, TERRITORY_ID, BrainTemplate, MidSagittalPlane, brain_template
from .common import BRAIN_LABELS, TERRITORIES, PhantomCase, case_rng
from .deform import Deformation, _rotation, deform, random_deformation

SIZE_CLASSES = ("IS-1", "IS-2", "IS-3", "IS-4")
ARTERIES = ("MCA", "ACA", "PCA")
METADATA = {"modality": "CT", "series_description": "SIMULATED brain phantom", "source_format": "phantom"}
HU_RANGE = (-1024.0, 3071.0)  # a 12-bit scanner's range: calibration and noise never leave it
#: a lesion may take at most this fraction of its territory (on its side): a size class whose lower bound
#: does not fit is not drawn there, and the upper bound is capped
MAX_TERRITORY_FRACTION = 0.5
#: every signed axis permutation except the identity: (canonical axis of stored axis i, j, k; flips)
_STORAGE_ORDERS = [(p, f) for p in itertools.permutations(range(3)) for f in itertools.product((False, True), repeat=3)
                   if not (p == (0, 1, 2) and not any(f))]


@dataclass(frozen=True)
class BrainParams:
    """Every parameter the brain phantom varies. Ranges (lo, hi) are drawn uniformly per case or lesion.

    Attributes:
        lesion_contrast_hu: mean hypodensity of a lesion below the local normal parenchyma, HU. The
            default 15-30 HU was tuned so that the CPU baseline lands near the paper's accuracy on 600
            cases (docs/PHANTOM.md, "Difficulty"); 3-8 HU is the subtler hyperacute change (a few HU per
            hour of ischaemia), at which the baseline stays at chance with this data size.
        grey_white_loss: fraction by which the lesion's HU is blended towards its local mean (0 = none,
            1 = grey and white matter indistinguishable inside the lesion).
        grey_white_sigma_mm: Gaussian sigma of that local mean, mm (about a cortical ribbon and its
            underlying white matter).
        lesion_edge_mm: Gaussian sigma of the lesion's soft edge, mm.
        size_classes: the size classes that may be drawn (names from `SIZE_CLASSES`).
        size_class_weights: relative frequency of each class in ``size_classes``.
        size_class_ml: lesion volume range (ml) of each class in ``size_classes``. Default IS-1 1-5 ml
            (lacunar / small cortical), IS-2 5-20 (branch), IS-3 20-60 (partial territory), IS-4 60-150
            (most of a territory); drawn log-uniformly, capped by `MAX_TERRITORY_FRACTION`.
        artery_weights: relative frequency of MCA, ACA and PCA territories (MCA strokes dominate).
        lesion_irregularity: amplitude of the random field that roughens the ellipsoid (0 = ellipsoid).
        lesion_elongation: ratio of the long to the short axes of the lesion's ellipsoid.
        noise_sigma_hu: standard deviation of the added scanner noise, HU (on top of Cranium's own ~5-6 HU).
        noise_correlation_mm: Gaussian sigma of the noise's spatial correlation, mm.
        hu_offset_hu, hu_scale: a CT-number drift within typical daily QA tolerances (water +-4 HU): the
            scale acts about water (0 HU), so brain moves by < 0.5 HU and air by < 15 HU (it stays near
            -1000), and values are clipped to a 12-bit scanner's -1024..3071.
        deformation_strength: multiplies the pose and warp ranges of `random_deformation` (rotation up to
            8/5/12 degrees, scale 0.92-1.08, translation 8 mm, elastic 0-4 mm at 1.0; 0 = Cranium's pose).
        inplane_spacing_mm: pixel size range, mm (0.9-1.3 mm keeps a case about 190-270 pixels square).
        slice_spacing_mm: slice spacings to choose from, mm (Cranium itself has 1.5 mm).
        orientation_variation: store some cases with permuted/flipped axes and the matching direction matrix.
        orientation_probability: the fraction of cases stored that way (when the variation is on).
        class_proportions: share of none/left/right/both in a dataset (used by the dataset builder).
    """

    lesion_contrast_hu: tuple[float, float] = (15.0, 30.0)
    grey_white_loss: tuple[float, float] = (0.3, 0.8)
    grey_white_sigma_mm: float = 3.0
    lesion_edge_mm: float = 1.2
    size_classes: tuple[str, ...] = SIZE_CLASSES
    size_class_weights: tuple[float, ...] = (0.3, 0.3, 0.25, 0.15)
    size_class_ml: tuple[tuple[float, float], ...] = ((1.0, 5.0), (5.0, 20.0), (20.0, 60.0), (60.0, 150.0))
    artery_weights: tuple[float, float, float] = (0.7, 0.15, 0.15)
    lesion_irregularity: float = 0.8
    lesion_elongation: tuple[float, float] = (1.0, 2.0)
    noise_sigma_hu: tuple[float, float] = (1.0, 4.0)
    noise_correlation_mm: tuple[float, float] = (0.4, 1.2)
    hu_offset_hu: tuple[float, float] = (-4.0, 4.0)
    hu_scale: tuple[float, float] = (0.99, 1.01)
    deformation_strength: float = 1.0
    inplane_spacing_mm: tuple[float, float] = (0.9, 1.3)
    slice_spacing_mm: tuple[float, ...] = (1.5, 2.5, 3.0, 5.0)
    orientation_variation: bool = True
    orientation_probability: float = 0.5
    class_proportions: tuple[float, ...] = (0.46, 0.2, 0.2, 0.14)

    def to_dict(self) -> dict:
        """JSON-serialisable (tuples become lists)."""
        return json_ready(asdict(self))

    def validate(self) -> None:
        if len(self.size_classes) == 0 or len(self.size_class_weights) != len(self.size_classes) or \
                len(self.size_class_ml) != len(self.size_classes):
            raise ValueError("size_classes, size_class_weights and size_class_ml need one entry per class")
        if any(lo <= 0 or hi < lo for lo, hi in self.size_class_ml):
            raise ValueError(f"size_class_ml needs 0 < lo <= hi, got {self.size_class_ml}")
        if len(self.artery_weights) != 3 or min(self.artery_weights) < 0 or sum(self.artery_weights) <= 0:
            raise ValueError("artery_weights needs three non-negative weights (MCA, ACA, PCA)")
        if len(self.class_proportions) != len(BRAIN_LABELS):
            raise ValueError(f"class_proportions needs {len(BRAIN_LABELS)} values")
        if min(self.inplane_spacing_mm) <= 0 or min(self.slice_spacing_mm) <= 0:
            raise ValueError("spacings must be positive")


def json_ready(value):
    """Tuples -> lists and numpy scalars -> Python numbers, recursively (for json.dumps)."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_ready(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


# -- helpers ------------------------------------------------------------------------------------------

def gaussian_blur(x: np.ndarray, sigma_vox: Sequence[float]) -> np.ndarray:
    """(K, J, I) float32 -> the same, blurred by a separable Gaussian (sigma per axis k, j, i in voxels),
    edges replicated. Shifted sums only (no convolution kernels), so the result is bit-identical for any
    number of threads: a dataset does not depend on how many workers made it."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    for axis, sigma in enumerate(sigma_vox):
        if sigma < 0.2:  # narrower than a fifth of a voxel: the kernel is a delta
            continue
        r = int(math.ceil(3 * sigma))
        w = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
        w = (w / w.sum()).astype(np.float32)
        n = t.shape[axis]
        padded = t.index_select(axis, torch.arange(-r, n + r).clamp(0, n - 1))
        out = padded.narrow(axis, r, n) * float(w[r])
        pair = torch.empty_like(out)
        for tap in range(r):  # symmetric kernel: one multiply per pair of taps
            torch.add(padded.narrow(axis, tap, n), padded.narrow(axis, 2 * r - tap, n), out=pair)
            out.add_(pair, alpha=float(w[tap]))
        t = out
    return t.numpy()


def _gaussian_gain(sigma_vox: Sequence[float]) -> float:
    """Standard deviation of unit white noise after `gaussian_blur` with these sigmas (interior voxels)."""
    gain = 1.0
    for sigma in sigma_vox:
        if sigma < 0.2:
            continue
        r = int(math.ceil(3 * sigma))
        w = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
        gain *= float(np.sqrt(np.sum((w / w.sum()) ** 2)))
    return gain


def _axis_mm(volume: CTVolume, box: tuple[slice, slice, slice]) -> list[np.ndarray]:
    """LPS x, y, z (mm, float32) of a box (slices along k, j, i) of an identity-direction grid, as arrays
    of shapes (1, 1, I), (1, J, 1), (K, 1, 1) that broadcast to the box (no (K, J, I, 3) array)."""
    out = []
    for w in range(3):
        sl = box[2 - w]
        coords = volume.origin_mm[w] + volume.spacing_mm[w] * np.arange(sl.start, sl.stop)
        shape = [1, 1, 1]
        shape[2 - w] = len(coords)
        out.append(coords.astype(np.float32).reshape(shape))
    return out


def _side_distance(volume: CTVolume, plane: MidSagittalPlane, box: tuple[slice, slice, slice]) -> np.ndarray:
    """(K, J, I) float32 signed distance (mm) of a box's voxels to the plane, > 0 on the patient's left."""
    x, y, z = _axis_mm(volume, box)
    n, q = np.asarray(plane.normal, np.float32), np.asarray(plane.point_mm, np.float32)
    return (x - q[0]) * n[0] + (y - q[1]) * n[1] + (z - q[2]) * n[2]


def patient_plane(template: BrainTemplate, d: Deformation) -> MidSagittalPlane:
    """The template's mid-sagittal plane carried into the patient through the deformation's affine part.

    `deform` samples the template at ``p_t = s R (p - c) + c + t (+ elastic)``; the plane
    ``n . (p_t - q) = 0`` becomes ``(R^T n) . (p - q') = 0`` with ``q' = c + R^T (q - c - t) / s``.
    The elastic part (<= ``d.elastic_mm``) bends the true midline a little; lesions are clipped to
    their side of this plane, so the left/right ground truth is exact in patient coordinates."""
    src = template.volume
    c = src.origin_mm + src.spacing_mm * (np.array(src.size_ijk) - 1) / 2
    rot = _rotation(d.rotation_deg)
    n = rot.T @ np.asarray(template.plane.normal)
    q = c + rot.T @ (np.asarray(template.plane.point_mm) - c - np.asarray(d.translation_mm)) / d.scale
    return MidSagittalPlane(tuple(float(v) for v in q), tuple(float(v) for v in n / np.linalg.norm(n)))


def store(volume: CTVolume, arrays: list[np.ndarray], order: int) -> tuple[CTVolume, list[np.ndarray], dict]:
    """Store a canonical (identity-direction) volume and its masks in another axis order.

    ``order`` indexes `_STORAGE_ORDERS`: stored index axis a runs along canonical axis ``perm[a]``,
    reversed when ``flip[a]``. Same voxels, same patient positions: `to_canonical` undoes it exactly."""
    perm, flip = _STORAGE_ORDERS[order]
    direction = np.zeros((3, 3))
    for a in range(3):
        direction[perm[a], a] = -1.0 if flip[a] else 1.0
    r = canonical_reorientation(direction)
    size = np.array(volume.size_ijk)
    start = np.array([size[perm[a]] - 1 if flip[a] else 0 for a in range(3)])
    corner = np.zeros(3)
    corner[list(perm)] = start  # canonical index of stored voxel (0, 0, 0)
    stored = CTVolume(np.ascontiguousarray(r.undo(volume.voxels_hu)), volume.spacing_mm[list(perm)],
                      volume.index_to_lps(corner), direction, dict(volume.metadata), list(volume.warnings))
    info = {"varied": True, "code": orientation_code(direction), "canonical_axis_of_ijk": list(perm),
            "flipped": list(flip)}
    return stored, [np.ascontiguousarray(r.undo(a)) for a in arrays], info


# -- lesions ------------------------------------------------------------------------------------------

@dataclass
class _Patient:
    """The deformed template before lesions: canonical grid (K, J, I), identity direction."""

    volume: CTVolume
    labels: np.ndarray  # uint8 anatomy labels (territory ids, `PARENCHYMA_ONLY`, 0)
    plane: MidSagittalPlane

    @property
    def voxel_ml(self) -> float:
        return float(np.prod(self.volume.spacing_mm)) / 1000.0


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3x3 rotation (from a random unit quaternion)."""
    w, x, y, z = rng.standard_normal(4) / 1.0
    n = math.sqrt(w * w + x * x + y * y + z * z)
    w, x, y, z = w / n, x / n, y / n, z / n
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _seed_component(blob: np.ndarray, seed: tuple[int, int, int]) -> np.ndarray:
    """The 26-connected component of ``blob`` (K, J, I bool, True at ``seed``) that contains ``seed``."""
    labels = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(blob.astype(np.uint8)), True))
    return labels == labels[seed]


def _grow(score: np.ndarray, order: np.ndarray, seed: tuple[int, int, int], n: int) -> np.ndarray:
    """Region growing by score: the component of ``score >= t`` containing ``seed``, for the highest
    threshold t at which it has at least ``n`` voxels (to within 2%). ``order``: the admissible scores,
    descending; the seed's score is the highest. Galloping then bisection over the number of admitted
    voxels m (the component only grows with m): ~6-10 connected-component passes."""
    def component(m: int) -> np.ndarray:
        return _seed_component(score >= order[m - 1], seed)

    lo, hi = n - 1, n  # the component of m admitted voxels has at most m voxels
    comp = component(hi)
    while comp.sum() < n and hi < len(order):
        lo, hi = hi, min(len(order), int(hi * 1.25) + 1)
        comp = component(hi)
    while hi - lo > max(1, n // 50):
        mid = (lo + hi) // 2
        trial = component(mid)
        if trial.sum() >= n:
            hi, comp = mid, trial
        else:
            lo = mid
    if comp.sum() > 1.1 * n:  # admitting one more voxel merged the seed's blob with a bigger one
        comp = _geodesic_trim(comp, score, seed, n)
    return comp


def _geodesic_trim(comp: np.ndarray, score: np.ndarray, seed: tuple[int, int, int], n: int) -> np.ndarray:
    """The ``n`` voxels of ``comp`` geodesically nearest to ``seed`` (26-neighbour shells grown inside
    ``comp``; the last shell contributes its highest-score voxels). Connected, exactly n voxels."""
    nz = [np.flatnonzero(comp.any(axis=tuple(b for b in range(3) if b != a))) for a in range(3)]
    bbox = tuple(slice(int(v[0]), int(v[-1]) + 1) for v in nz)
    inside = comp[bbox]
    local_seed = tuple(seed[a] - bbox[a].start for a in range(3))
    current = np.zeros(inside.shape, dtype=bool)
    current[local_seed] = True
    while True:
        grown = current.copy()
        for axis in range(3):  # a 3x3x3 cube = three separable 3-voxel maxima
            g = grown.copy()
            lead = [slice(None)] * 3
            lag = [slice(None)] * 3
            lead[axis], lag[axis] = slice(1, None), slice(None, -1)
            g[tuple(lead)] |= grown[tuple(lag)]
            g[tuple(lag)] |= grown[tuple(lead)]
            grown = g
        grown &= inside
        if grown.sum() >= n or grown.sum() == current.sum():
            break
        current = grown
    shell = grown & ~current
    need = n - int(current.sum())
    if need > 0:
        values = score[bbox][shell]
        keep = np.zeros(len(values), dtype=bool)
        keep[np.argsort(-values, kind="stable")[:need]] = True
        idx = np.nonzero(shell)
        current[tuple(i[keep] for i in idx)] = True
    out = np.zeros(comp.shape, dtype=bool)
    out[bbox] = current
    return out


def _choose_lesion(rng: np.random.Generator, patient: _Patient, side: str, params: BrainParams,
                   side_distance: np.ndarray) -> tuple[int, int, float, np.ndarray]:
    """Draw the territory, size class and target volume of one lesion on ``side``.

    Returns (territory id, index into params.size_classes, target volume ml, allowed mask (K, J, I))."""
    weights = np.asarray(params.artery_weights, dtype=float)
    artery = ARTERIES[int(rng.choice(3, p=weights / weights.sum()))]
    class_w = np.asarray(params.size_class_weights, dtype=float)
    ranges = np.asarray(params.size_class_ml, dtype=float).reshape(-1, 2)
    # MCA first as the fallback: it is the largest territory, every size class fits there
    for name in (artery, "MCA", "PCA", "ACA"):
        tid = TERRITORY_ID[f"{name}_{side}"]
        # 0.1 mm off the plane: a voxel's side must not hinge on float32 rounding
        allowed = (patient.labels == tid) & ((side_distance > 0.1) if side == "left" else (side_distance < -0.1))
        capacity_ml = float(allowed.sum()) * patient.voxel_ml * MAX_TERRITORY_FRACTION
        fits = (ranges[:, 0] <= capacity_ml) & (class_w > 0)
        if fits.any():
            break
    else:
        raise RuntimeError(f"no territory on the {side} has room for a lesion (deformation too strong?)")
    p = np.where(fits, class_w, 0.0)
    c = int(rng.choice(len(p), p=p / p.sum()))
    lo, hi = ranges[c, 0], min(ranges[c, 1], capacity_ml)
    target_ml = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    return tid, c, target_ml, allowed


def _draw_lesion(rng: np.random.Generator, patient: _Patient, allowed: np.ndarray, target_ml: float,
                 params: BrainParams) -> tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray, dict]:
    """Shape one lesion: returns (box, soft weight s (box shape, float32), mask (box, bool), shape info)."""
    vol = patient.volume
    spacing_kji = vol.spacing_mm[::-1]
    # seed at least ~3 mm inside the allowed region: a seed on a speckle or a thin rim would strand the
    # lesion in a tiny connected component
    radius_ijk = [max(1, int(round(3.0 / s))) for s in vol.spacing_mm]
    nz = [np.flatnonzero(allowed.any(axis=tuple(b for b in range(3) if b != a))) for a in range(3)]
    bbox = tuple(slice(int(v[0]), int(v[-1]) + 1) for v in nz)
    core = np.zeros(allowed.shape, dtype=bool)
    core[bbox] = sitk.GetArrayFromImage(sitk.BinaryErode(sitk.GetImageFromArray(allowed[bbox].astype(np.uint8)),
                                                         radius_ijk)) > 0
    candidates = np.flatnonzero(core)
    if len(candidates) == 0:
        candidates = np.flatnonzero(allowed)
    seed = np.unravel_index(int(candidates[rng.integers(len(candidates))]), allowed.shape)
    elongation = float(rng.uniform(*params.lesion_elongation))
    r_eq = (3 * target_ml * 1000 / (4 * math.pi)) ** (1 / 3)
    radii = r_eq * np.array([elongation ** (2 / 3), elongation ** (-1 / 3), elongation ** (-1 / 3)])
    rot = _random_rotation(rng)
    # beyond 1.8 radii the ellipsoid term (-q/2 < -1.6) outweighs the random field almost always
    half_mm = 1.8 * radii[0] + 3 * params.lesion_edge_mm + 2 * float(spacing_kji.max())
    box = tuple(slice(max(0, int(seed[a] - half_mm / spacing_kji[a])),
                      min(allowed.shape[a], int(seed[a] + half_mm / spacing_kji[a]) + 1)) for a in range(3))
    region = allowed[box]
    seed_in_box = tuple(int(seed[a] - box[a].start) for a in range(3))
    # smooth random field on a coarse lattice (sigma ~ r_eq/2), upsampled: cheap for big lesions
    lattice_mm = max(r_eq / 4, float(spacing_kji.min()))
    coarse_shape = tuple(int(math.ceil(region.shape[a] * spacing_kji[a] / lattice_mm)) + 1 for a in range(3))
    field = gaussian_blur(rng.standard_normal(coarse_shape).astype(np.float32), (2.0, 2.0, 2.0))
    field = torch.nn.functional.interpolate(torch.from_numpy(field)[None, None], size=region.shape,
                                            mode="trilinear", align_corners=True)[0, 0].numpy()
    field /= max(float(field.std()), 1e-6)
    centre = vol.index_to_lps(np.array(seed[::-1], dtype=float))
    offset = [c - np.float32(m) for c, m in zip(_axis_mm(vol, box), centre)]
    q = np.zeros(region.shape, dtype=np.float32)
    for e in range(3):  # coordinate along ellipsoid axis e (mm), squared and scaled by its radius
        along = sum(offset[w] * np.float32(rot[w, e]) for w in range(3))
        q += (along / np.float32(radii[e])) ** 2
    score = np.where(region, -0.5 * q + params.lesion_irregularity * field, -np.inf).astype(np.float32)
    score[seed_in_box] = np.inf  # the seed is always part of its lesion
    sigma_vox = params.lesion_edge_mm / spacing_kji
    target_vox = target_ml / patient.voxel_ml
    order = np.sort(score[region].ravel())[::-1]
    n_voxels = target_vox
    best = None
    for _ in range(4):  # the soft edge trims thin parts: adjust N until the final mask has the target volume
        blob = _grow(score, order, seed_in_box, int(np.clip(round(n_voxels), 1, len(order))))
        s = gaussian_blur(blob.astype(np.float32), sigma_vox)
        mask = (s >= 0.5) & region
        got = int(mask.sum())
        if got and (best is None or abs(got - target_vox) < abs(int(best[1].sum()) - target_vox)):
            best = (s, mask)
        if abs(got / target_vox - 1) < 0.04 or blob.sum() >= len(order):
            break
        n_voxels = blob.sum() * target_vox / max(got, 0.5 * blob.sum())
    if best is None:  # a lesion thinner than its soft edge everywhere (not seen): keep the blob itself
        best = (np.maximum(s, blob.astype(np.float32)), blob & region)
    s, mask = best
    info = {"seed_lps_mm": vol.index_to_lps(np.array(seed[::-1], dtype=float)).tolist(),
            "elongation": elongation, "radii_mm": radii.tolist()}
    return box, s, mask, info


def _apply_lesion(hu: np.ndarray, parenchyma: np.ndarray, box, s: np.ndarray, mask: np.ndarray,
                  contrast_hu: float, gw_loss: float, params: BrainParams, spacing_kji: np.ndarray) -> float:
    """Blend the lesion towards its local mean and lower it (in place, parenchyma only). Returns the peak
    hypodensity A (HU) such that mean(A * s) over ``mask`` equals ``contrast_hu``."""
    peak = contrast_hu / max(float(s[mask].mean()), 1e-3)
    # work on the part of the box where the soft edge is not negligible, plus the local mean's reach
    sigma = params.grey_white_sigma_mm / spacing_kji
    touched = s > 1e-3
    inner = []
    for a in range(3):
        idx = np.flatnonzero(touched.any(axis=tuple(b for b in range(3) if b != a)))
        reach = int(math.ceil(3 * sigma[a]))
        inner.append(slice(max(0, idx[0] - reach), min(s.shape[a], idx[-1] + reach + 1)))
    inner = tuple(inner)
    sub = tuple(slice(box[a].start + inner[a].start, box[a].start + inner[a].stop) for a in range(3))
    h = hu[sub]
    w = s[inner]
    p = parenchyma[sub].astype(np.float32)
    local_mean = gaussian_blur(h * p, sigma) / np.maximum(gaussian_blur(p, sigma), 1e-3)
    hu[sub] = h + (gw_loss * w * (local_mean - h) - peak * w) * p
    return peak


# -- the case -----------------------------------------------------------------------------------------

def _sides(label: int) -> tuple[str, ...]:
    return {0: (), 1: ("left",), 2: ("right",), 3: ("left", "right")}[label]


def generate_brain_case(seed: int, index: int, label: int, params: BrainParams = BrainParams()) -> PhantomCase:
    """One SIMULATED stroke patient: deterministic in (seed, index, label, params).

    label: 0 none, 1 left, 2 right, 3 both (`BRAIN_LABELS`); one lesion per affected hemisphere.
    Returns a `PhantomCase` whose masks are (K, J, I) on the stored volume's grid: lesion_mask (lesion n
    = n, in the order of ``info["lesions"]``), organ_mask (brain parenchyma), territory_map (ids of
    `TERRITORIES`). ``info`` records every drawn parameter (JSON-serialisable).
    """
    if label not in range(len(BRAIN_LABELS)):
        raise ValueError(f"label must be 0..{len(BRAIN_LABELS) - 1} ({', '.join(BRAIN_LABELS)}), got {label}")
    params.validate()
    template = brain_template()
    rng = case_rng(seed, index)
    # 1. the patient: every draw happens whatever the parameters' switches, so that turning one off
    #    (e.g. the storage variation) leaves everything else identical
    k = params.deformation_strength
    d = random_deformation(rng, max_rotation_deg=(8 * k, 5 * k, 12 * k), scale_range=(1 - 0.08 * k, 1 + 0.08 * k),
                           max_translation_mm=8 * k, elastic_mm=(0.0, 4 * k))
    inplane = float(rng.uniform(*params.inplane_spacing_mm))
    slice_mm = float(params.slice_spacing_mm[int(rng.integers(len(params.slice_spacing_mm)))])
    noise_sigma = float(rng.uniform(*params.noise_sigma_hu))
    noise_corr = float(rng.uniform(*params.noise_correlation_mm))
    noise_seed = int(rng.integers(0, 2**63 - 1))
    hu_offset = float(rng.uniform(*params.hu_offset_hu))
    hu_scale = float(rng.uniform(*params.hu_scale))
    store_draw, order = float(rng.random()), int(rng.integers(len(_STORAGE_ORDERS)))
    lesion_rng = np.random.default_rng(int(rng.integers(0, 2**63 - 1)))

    src = template.volume
    # a private copy of the HU: torch refuses to wrap the cache's read-only array without a warning
    source = CTVolume(src.voxels_hu.copy(), src.spacing_mm, src.origin_mm, src.direction, dict(METADATA))
    volume, masks = deform(source, {"labels": template.anatomy_labels()}, d, spacing_mm=(inplane, inplane, slice_mm))
    patient = _Patient(volume, masks["labels"], patient_plane(template, d))
    hu = volume.voxels_hu
    parenchyma = patient.labels > 0
    spacing_kji = volume.spacing_mm[::-1]

    # 2. lesions (their own random stream)
    lesion_mask = np.zeros(hu.shape, dtype=np.uint8)
    lesions = []
    side_distance = None
    for n, side in enumerate(_sides(label), start=1):
        if side_distance is None:
            side_distance = _side_distance(volume, patient.plane, tuple(slice(0, s) for s in hu.shape))
        tid, c, target_ml, allowed = _choose_lesion(lesion_rng, patient, side, params, side_distance)
        box, s, mask, shape_info = _draw_lesion(lesion_rng, patient, allowed, target_ml, params)
        contrast = float(lesion_rng.uniform(*params.lesion_contrast_hu))
        gw_loss = float(lesion_rng.uniform(*params.grey_white_loss))
        peak = _apply_lesion(hu, parenchyma, box, s, mask, contrast, gw_loss, params, spacing_kji)
        lesion_mask[box][mask] = n
        kk, jj, ii = np.nonzero(lesion_mask == n)
        centroid = volume.index_to_lps(np.stack([ii, jj, kk], axis=1)).mean(axis=0)
        lesions.append({"id": n, "side": side, "territory": TERRITORIES[tid], "territory_id": tid,
                        "size_class": params.size_classes[c], "size_class_range_ml": list(params.size_class_ml[c]),
                        "target_volume_ml": target_ml, "volume_ml": float(len(kk)) * patient.voxel_ml,
                        "contrast_hu": contrast, "peak_contrast_hu": peak, "grey_white_loss": gw_loss,
                        "centroid_lps_mm": centroid.tolist(), **shape_info})

    # 3. scanner: correlated noise, then the HU calibration (about water), clipped to the scanner's range
    sigma_vox = noise_corr / spacing_kji
    white = np.random.default_rng(noise_seed).standard_normal(hu.shape, dtype=np.float32)
    hu += gaussian_blur(white, sigma_vox) * np.float32(noise_sigma / _gaussian_gain(sigma_vox))
    hu = np.clip(hu * np.float32(hu_scale) + np.float32(hu_offset), *HU_RANGE).astype(np.float32)
    volume = volume.with_voxels(hu)

    # 4. storage order
    arrays = [lesion_mask, parenchyma.astype(np.uint8),
              np.where(patient.labels == PARENCHYMA_ONLY, 0, patient.labels).astype(np.uint8)]
    orientation = {"varied": False, "code": "LPS", "canonical_axis_of_ijk": [0, 1, 2], "flipped": [False] * 3}
    if params.orientation_variation and store_draw < params.orientation_probability:
        volume, arrays, orientation = store(volume, arrays, order)

    info = {
        "simulated": True, "task": "brain_stroke", "label": label, "label_name": BRAIN_LABELS[label],
        "seed": int(seed), "index": int(index), "template": template.info["source"],
        "deformation": d.to_dict(), "spacing_mm": volume.spacing_mm.tolist(),
        "shape_kji": list(volume.voxels_hu.shape),
        "noise": {"sigma_hu": noise_sigma, "correlation_mm": noise_corr, "seed": noise_seed},
        "hu_calibration": {"offset_hu": hu_offset, "scale": hu_scale},
        "orientation": orientation, "midsagittal_plane_lps": patient.plane.to_dict(),
        "lesions": lesions,
    }
    return PhantomCase(volume, arrays[0], arrays[1], arrays[2], label, BRAIN_LABELS[label], json_ready(info))
