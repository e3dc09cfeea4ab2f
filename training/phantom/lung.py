"""Lung phantom (SIMULATED): COVID-19-like lesions painted on a real chest CT, with exact ground truth.

Stands in for MosMedData (Fontanella et al., ICML 2023, lung task: CT-0 versus CT-2..CT-4), which
cannot be obtained here. Every case is built from one real scan, Slicer's CTChest sample shipped in the
``slicerio`` package (128 x 128 x 34 voxels, 3.05 x 3.05 x 10 mm, HU) and its lung segmentation:

1. template (built once): the CT in canonical LPS layout (i -> Left, j -> Posterior, k -> Superior)
   and a lung label map (1 = left lung, 2 = right lung) mapped onto the CT grid in physical space;
2. patient: a random rigid + elastic deformation and a new voxel spacing (`deform`);
3. lesions (covid19 only): a MosMed severity (fraction of the lung volume involved), several smooth
   irregular foci seeded mostly near the pleura and grown together until their union covers exactly
   that fraction, painted as ground-glass opacity (GGO) or consolidation with soft edges;
4. scanner: correlated noise and a HU calibration jitter;
5. storage: optionally another axis order / axis flips with the matching direction matrix (the same
   anatomy in patient coordinates).

The random draws come from independent streams derived from ``case_rng(seed, index)``: the patient
(deformation, spacing, noise level, calibration), the noise field, the lesions and the storage
orientation. Hence ``generate_lung_case(s, i, 0)`` is the exact healthy twin of
``generate_lung_case(s, i, 1)`` (same voxels wherever no lesion was painted), and switching the
orientation variation on or off changes nothing but the storage.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import SimpleITK as sitk

from ACATLogic.io.read import read_volume
from ACATLogic.sample_data import ctchest_path, ctchest_segmentation_path
from ACATLogic.volume import CTVolume, Reorientation, to_canonical

from .common import LUNG_LABELS, PhantomCase, case_rng
from .deform import deform, random_deformation

#: organ_mask values
LEFT_LUNG = 1
RIGHT_LUNG = 2
LUNG_NAMES = {LEFT_LUNG: "left", RIGHT_LUNG: "right"}

#: MosMedData severity classes: fraction of the lung volume involved, [low, high).
SEVERITY_RANGES: dict[str, tuple[float, float]] = {
    "CT-0": (0.0, 0.0),
    "CT-1": (0.0, 0.25),
    "CT-2": (0.25, 0.50),
    "CT-3": (0.50, 0.75),
    "CT-4": (0.75, 1.00),
}
COVID_SEVERITIES = ("CT-1", "CT-2", "CT-3", "CT-4")

#: HU of water-like soft tissue / fluid that fills the alveoli in a lesion (the "fill" end point).
TISSUE_HU = 40.0
#: HU written outside the scanner's field of view and by `deform` outside the source: air.
AIR_HU = -1024.0

METADATA = {"modality": "CT", "series_description": "SIMULATED lung phantom", "source_format": "phantom"}


# -- parameters ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class LungParams:
    """Everything a lung phantom dataset varies, with its range. Ranges are (low, high), drawn uniformly.

    Severity (MosMed: CT-0 none, CT-1 < 25 %, CT-2 25-50 %, CT-3 50-75 %, CT-4 > 75 % of the lung volume):
        include_ct1: let the covid19 class also draw CT-1. Off by default because the paper's binary task
            is CT-0 versus CT-2..CT-4 (mild cases are left out of both classes).
        severity_weights: relative frequency of CT-1, CT-2, CT-3, CT-4 in the covid19 class (CT-1's weight
            is dropped unless ``include_ct1``). MosMedData has 684 / 125 / 45 / 2 such scans; we keep the
            order (milder is more common) but give CT-3/CT-4 more weight, 0.6 / 0.3 / 0.1 without CT-1,
            so that a few hundred cases still contain severe ones.
        involvement_margin: the target involvement is drawn at least this far inside the class range, so
            that the achieved value (exact up to one voxel) is never ambiguous between two classes.
        max_involvement: upper bound for CT-4 (a lung entirely opacified is not a useful case).

    Lesions:
        n_foci_range: number of foci (inclusive); COVID-19 pneumonia is typically multifocal and bilateral,
            so CT-2+ always gets at least one focus in each lung.
        focus_radius_mm_range: distance over which a focus's growth score falls by one unit: larger foci
            take a larger share of the involved volume.
        peripheral_seed_probability: probability that a focus is seeded in the outer ``peripheral_depth``
            of its lung; COVID-19 GGO is mostly subpleural. Depth is ranked within each lung (0 = on the
            pleura, 1 = deepest voxel, 0.5 = the lung's median depth), so "outer third" means the third
            of the lung's volume nearest to the pleura, whatever the lung's shape.
        peripheral_depth: that outer fraction (1/3).
        peripheral_weight: growth penalty per unit of depth rank, so that foci spread along the pleura
            before they grow towards the hilum. With 4, 70-85 % of a CT-2 case's lesion volume (60-70 %
            for CT-3) lies in the outer half of its lung; 8 turns every case into one continuous
            subpleural rind (no longer multifocal), 1.5 leaves the foci about as central as the lung.
        exclude_mediastinal_pleura: measure depth from the costal, diaphragmatic and apical pleura only
            (the lungs' boundary with the mediastinum is not "periphery" in radiology reports).
        shape_noise_amplitude / shape_noise_scale_mm: smooth random field (cubic B-spline on a lattice of
            that spacing) added to the growth score: irregular, lobulated foci instead of spheres.
        edge_mm: width of the soft edge: the lesion fades from full strength to 0 over about this distance,
            and the mask's boundary is its half-strength level (as partial volume would make it).
        min_island_mm3: lesion fragments smaller than this (about a 1 cm ball) are dropped: a few thin
            lung edges score high by chance and would leave specks of one or two voxels.
        ggo_hu_range: target HU of ground-glass opacity, between aerated lung (about -850) and soft tissue.
        consolidation_hu_range: target HU of consolidation (airless lung, about soft tissue).
        consolidation_probability: per focus, consolidation instead of GGO.

    Patient and scanner:
        max_rotation_deg (about x, y, z), scale_range, max_translation_mm, elastic_mm_range: the
            deformation at ``deformation_strength`` 1 (0 = the template's own anatomy, 2 = twice as far).
        inplane_spacing_mm_choices, slice_spacing_mm_choices: output voxel size (cases stay small:
            at most about 156 x 156 x 67 voxels).
        noise_sigma_hu_range: standard deviation of the added noise (on top of the scan's own noise).
        noise_correlation_voxels: in-plane Gaussian correlation length (sigma, voxels) of that noise, like
            a reconstruction kernel's.
        hu_gain_jitter, hu_offset_jitter_hu: calibration error ``hu * (1 + g) + o`` with ``|g|`` and ``|o|``
            at most these (water stays near 0, air moves by up to about 35 HU).
        vary_orientation: store each case with a random axis permutation and flips (one of 48), with the
            matching direction matrix; off = canonical LPS storage.
    """

    include_ct1: bool = False
    severity_weights: tuple[float, float, float, float] = (0.4, 0.36, 0.18, 0.06)
    involvement_margin: float = 0.03
    max_involvement: float = 0.92

    n_foci_range: tuple[int, int] = (2, 8)
    focus_radius_mm_range: tuple[float, float] = (15.0, 45.0)
    peripheral_seed_probability: float = 0.85
    peripheral_depth: float = 1.0 / 3.0
    peripheral_weight: float = 4.0
    exclude_mediastinal_pleura: bool = True
    shape_noise_amplitude: float = 0.8
    shape_noise_scale_mm: float = 20.0
    edge_mm: float = 4.0
    min_island_mm3: float = 500.0
    ggo_hu_range: tuple[float, float] = (-700.0, -350.0)
    consolidation_hu_range: tuple[float, float] = (-100.0, 40.0)
    consolidation_probability: float = 0.2

    deformation_strength: float = 1.0
    max_rotation_deg: tuple[float, float, float] = (4.0, 4.0, 6.0)
    scale_range: tuple[float, float] = (0.93, 1.07)
    max_translation_mm: float = 8.0
    elastic_mm_range: tuple[float, float] = (0.0, 6.0)
    inplane_spacing_mm_choices: tuple[float, ...] = (2.5, 3.0, 3.5)
    slice_spacing_mm_choices: tuple[float, ...] = (5.0, 7.5, 10.0)
    noise_sigma_hu_range: tuple[float, float] = (5.0, 20.0)
    noise_correlation_voxels: float = 0.8
    hu_gain_jitter: float = 0.02
    hu_offset_jitter_hu: float = 15.0
    vary_orientation: bool = True

    def to_dict(self) -> dict:
        """JSON-ready (tuples become lists once serialised)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "LungParams":
        """Inverse of `to_dict` (lists are turned back into tuples); unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"unknown LungParams fields: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    def covid_severity_probabilities(self) -> dict[str, float]:
        """Probability of each severity within the covid19 class."""
        weights = dict(zip(COVID_SEVERITIES, self.severity_weights))
        if not self.include_ct1:
            weights.pop("CT-1")
        total = sum(weights.values())
        if total <= 0:
            raise ValueError("severity_weights give no covid19 severity a positive weight")
        return {k: w / total for k, w in weights.items()}


# -- template -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LungTemplate:
    """The real scan every case is made from (read-only arrays).

    Attributes:
        volume: CTChest in canonical LPS layout, (K, J, I) = (34, 128, 128) float32 HU; voxels outside the
            scanner's field of view (-3024) are set to air (-1024) so that resampling makes no dark rims.
        lung_mask: (K, J, I) uint8, 1 = left lung, 2 = right lung, 0 elsewhere.
    """

    volume: CTVolume
    lung_mask: np.ndarray


def _on_grid(mask_ijk: np.ndarray, ijk_to_lps: np.ndarray, volume: CTVolume) -> np.ndarray:
    """A mask (I, J, K) on the segmentation's grid -> (K, J, I) on ``volume``'s grid.

    Nearest neighbour in physical (LPS) space, so any segmentation geometry (another origin, spacing,
    axis order or extent than the CT's) lands on the right anatomy; outside the segmentation's grid = 0.
    """
    kk, jj, ii = np.meshgrid(*(np.arange(n) for n in volume.voxels_hu.shape), indexing="ij")
    ijk = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1)
    lps = volume.index_to_lps(ijk)
    lps_to_seg = np.linalg.inv(np.asarray(ijk_to_lps, dtype=np.float64))
    seg_idx = np.rint(lps @ lps_to_seg[:3, :3].T + lps_to_seg[:3, 3]).astype(np.int64)
    inside = np.all((seg_idx >= 0) & (seg_idx < np.array(mask_ijk.shape)), axis=1)
    out = np.zeros(ijk.shape[0], dtype=bool)
    out[inside] = mask_ijk[seg_idx[inside, 0], seg_idx[inside, 1], seg_idx[inside, 2]]
    return out.reshape(volume.voxels_hu.shape)


def _clean(mask: np.ndarray) -> np.ndarray:
    """Largest 6-connected component with its enclosed holes filled (bool (K, J, I)).

    The sample segmentation has a few stray voxels and pin-holes (vessels left out); a lung is one
    solid organ for the involvement percentage.
    """
    img = sitk.GetImageFromArray(mask.astype(np.uint8))
    largest = sitk.RelabelComponent(sitk.ConnectedComponent(img)) == 1
    return sitk.GetArrayFromImage(sitk.BinaryFillhole(largest)).astype(bool)


@functools.lru_cache(maxsize=1)
def lung_template() -> LungTemplate:
    """The canonical CTChest scan and its cleaned left/right lung label map (built once per process)."""
    import slicerio

    stored = read_volume(ctchest_path())
    canonical, _ = to_canonical(stored)
    voxels = np.maximum(canonical.voxels_hu, AIR_HU)  # outside-FOV padding (-3024) -> air
    volume = CTVolume(voxels, canonical.spacing_mm, canonical.origin_mm, canonical.direction, dict(METADATA))
    seg = slicerio.read_segmentation(str(ctchest_segmentation_path()))
    labels = np.zeros(volume.voxels_hu.shape, dtype=np.uint8)
    for value, name in ((LEFT_LUNG, "left lung"), (RIGHT_LUNG, "right lung")):
        mask = _clean(_on_grid(slicerio.segment_mask(seg, name), seg["ijkToLPS"], volume))
        labels[mask & (labels == 0)] = value
    # The segment names are the only left/right information: check them against the geometry.
    x_left, x_right = (float(volume.index_to_lps(np.argwhere(labels == v)[:, ::-1]).mean(axis=0)[0])
                       for v in (LEFT_LUNG, RIGHT_LUNG))
    if not (x_left > 0 > x_right):
        raise RuntimeError(f"CTChest lung segments are not where their names say (left x={x_left:.0f} mm, "
                           f"right x={x_right:.0f} mm; LPS +x is the patient's left)")
    volume.voxels_hu.flags.writeable = False
    labels.flags.writeable = False
    return LungTemplate(volume, labels)


# -- small numerical helpers (no scipy) ----------------------------------------------------------
def _depth_mm(inside: np.ndarray, spacing_mm: np.ndarray) -> np.ndarray:
    """(K, J, I) float32: distance in mm from each inside voxel to the nearest outside voxel (0 outside)."""
    img = sitk.GetImageFromArray((~inside).astype(np.uint8))
    img.SetSpacing([float(s) for s in spacing_mm])
    dist = sitk.SignedMaurerDistanceMap(img, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    return np.where(inside, sitk.GetArrayFromImage(dist), 0.0).astype(np.float32)


def _thoracic_cavity(inside: np.ndarray) -> np.ndarray:
    """(K, J, I) bool: the lungs plus whatever lies between them along each left-right row (i).

    On a canonical grid this fills the mediastinum, so that the distance to the cavity's outside is the
    distance to the costal, diaphragmatic and apical pleura only: "peripheral" COVID-19 opacities are
    subpleural along the chest wall, not around the heart.
    """
    n = inside.shape[2]
    has = inside.any(axis=2)
    first = np.argmax(inside, axis=2)
    last = n - 1 - np.argmax(inside[:, :, ::-1], axis=2)
    i = np.arange(n)[None, None, :]
    return has[..., None] & (i >= first[..., None]) & (i <= last[..., None])


def _bspline_matrix(n_fine: int, step: float) -> np.ndarray:
    """(n_fine, n_coarse) cubic B-spline weights from a lattice every ``step`` fine voxels to the voxels."""
    u = np.arange(n_fine) / step
    knots = np.arange(-1, int(np.ceil(u[-1])) + 3)
    t = np.abs(u[:, None] - knots[None, :])
    return np.where(t < 1, 2 / 3 - t**2 + t**3 / 2, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int, int], spacing_mm: np.ndarray,
                  scale_mm: float) -> np.ndarray:
    """(K, J, I) float32 smooth random field, zero mean, unit standard deviation, feature size ~scale_mm."""
    mats = [_bspline_matrix(n, max(scale_mm / s, 1.0)) for n, s in zip(shape, spacing_mm[::-1])]
    coarse = rng.standard_normal(tuple(m.shape[1] for m in mats))
    field = np.einsum("abc,ka,jb,ic->kji", coarse, *mats, optimize=True)
    field -= field.mean()
    return (field / max(float(field.std()), 1e-9)).astype(np.float32)


def _gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(np.ceil(3 * sigma)))
    x = np.arange(-radius, radius + 1)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def _blur_axis(a: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    """1-D convolution along ``axis`` with edge replication (a sum of shifted copies: small kernels)."""
    r = len(kernel) // 2
    pad = [(0, 0)] * a.ndim
    pad[axis] = (r, r)
    p = np.pad(a, pad, mode="edge")
    n = a.shape[axis]
    out = np.zeros_like(a)
    for t, w in enumerate(kernel):
        out += w * np.take(p, np.arange(t, t + n), axis=axis)
    return out


def _correlated_noise(rng: np.random.Generator, shape: tuple[int, int, int], sigma_hu: float,
                      correlation_voxels: float) -> np.ndarray:
    """(K, J, I) float32 Gaussian noise of standard deviation ``sigma_hu``, correlated in-plane (j, i)."""
    white = rng.standard_normal(shape, dtype=np.float32)
    if correlation_voxels <= 0:
        return white * np.float32(sigma_hu)
    kernel = _gaussian_kernel(correlation_voxels).astype(np.float32)
    smooth = _blur_axis(_blur_axis(white, kernel, 1), kernel, 2)
    # smoothing white noise divides its variance by sum(w^2) per axis: restore the requested sigma
    return smooth * np.float32(sigma_hu / float(np.sum(kernel.astype(np.float64) ** 2)))


# -- storage orientation -------------------------------------------------------------------------
def store_as(volume: CTVolume, r: Reorientation) -> CTVolume:
    """The canonical ``volume`` stored so that ``to_canonical`` finds ``r`` and gives it back exactly."""
    if not np.allclose(volume.direction, np.eye(3)):
        raise ValueError("store_as expects a canonical volume (identity direction)")
    size = np.array(volume.size_ijk)
    direction = np.zeros((3, 3))
    spacing = np.zeros(3)
    start = np.zeros(3)
    for w in range(3):
        a = r.source_axis[w]
        direction[w, a] = -1.0 if r.flip[w] else 1.0
        spacing[a] = volume.spacing_mm[w]
        start[w] = size[w] - 1 if r.flip[w] else 0
    voxels = np.ascontiguousarray(r.undo(volume.voxels_hu))
    return CTVolume(voxels, spacing, volume.index_to_lps(start), direction, dict(volume.metadata),
                    list(volume.warnings))


# -- lesions -------------------------------------------------------------------------------------
def _lung_median_hu(hu: np.ndarray, lung: np.ndarray) -> float:
    return float(np.median(hu[lung > 0]))


def _choose_severity(rng: np.random.Generator, label: int, severity: Optional[str], params: LungParams) -> str:
    if label not in (0, 1):
        raise ValueError(f"label must be 0 ({LUNG_LABELS[0]}) or 1 ({LUNG_LABELS[1]}), got {label}")
    if label == 0:
        if severity not in (None, "CT-0"):
            raise ValueError(f"a {LUNG_LABELS[0]} case has severity CT-0, not {severity}")
        return "CT-0"
    probs = params.covid_severity_probabilities()
    if severity is None:
        names = list(probs)
        return names[int(rng.choice(len(names), p=np.array(list(probs.values()))))]
    if severity not in COVID_SEVERITIES:
        raise ValueError(f"a {LUNG_LABELS[1]} case has severity CT-1..CT-4, not {severity}")
    if severity == "CT-1" and not params.include_ct1:
        raise ValueError("CT-1 is not part of the covid19 class unless LungParams(include_ct1=True)")
    return severity


@dataclass
class _Lesions:
    mask: np.ndarray  # (K, J, I) uint8 focus ids
    alpha: np.ndarray  # (K, J, I) float32 lesion strength 0..1 (soft edges)
    fill: np.ndarray  # (K, J, I) float32 fraction of the remaining air replaced by tissue at strength 1
    target: float
    foci: list  # the foci that own voxels, "id" = their value in ``mask``
    dropped: list  # foci drawn but left without voxels


def _depth_rank(lung: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """(K, J, I) float32 in (0, 1) inside each lung: the fraction of that lung's volume nearer the pleura.

    A rank rather than depth / max depth: "the outer third" then holds a third of the lung whatever its
    shape, and 0.5 is the lung's median depth.
    """
    out = np.zeros(lung.size, dtype=np.float32)
    flat_lung, flat_depth = lung.ravel(), depth.ravel()
    for side in LUNG_NAMES:
        sel = np.flatnonzero(flat_lung == side)
        order = np.argsort(flat_depth[sel], kind="stable")
        rank = np.empty(sel.size, dtype=np.float32)
        rank[order] = (np.arange(sel.size, dtype=np.float32) + 0.5) / max(sel.size, 1)
        out[sel] = rank
    return out.reshape(lung.shape)


def _grow_lesions(rng: np.random.Generator, lung: np.ndarray, volume: CTVolume, severity: str,
                  lung_hu: float, params: LungParams) -> _Lesions:
    """Seed foci, grow them together to the target involvement, and describe how they change HU.

    Args:
        lung: (K, J, I) uint8 lung labels on ``volume``'s canonical grid (identity direction).
        lung_hu: the lung's median HU before lesions (the "aerated lung" end point of the fill).

    Growth is a level set of one score per lung voxel x and focus f:

        score_f(x) = b(x) - |x - seed_f| / R_f,   b = shape_noise_amplitude * noise
                                                        - peripheral_weight * depth_rank

    The lesion is {x : max_f score_f(x) > t}, with t chosen so that exactly round(target * lung voxels)
    voxels are above it: all foci grow at once until their union covers the target fraction. Each
    voxel belongs to the focus with the largest score (a weighted Voronoi partition), so every focus
    owns at least the neighbourhood of its seed. Fragments under ``min_island_mm3`` are then dropped
    and the surviving foci renumbered 1..n.
    """
    lo, hi = SEVERITY_RANGES[severity]
    hi = min(hi, params.max_involvement)
    target = float(rng.uniform(lo + params.involvement_margin, hi - params.involvement_margin))
    shape = lung.shape
    spacing = volume.spacing_mm
    inside = lung > 0
    depth = _depth_mm(_thoracic_cavity(inside) if params.exclude_mediastinal_pleura else inside, spacing)
    depth = np.where(inside, depth, 0.0).astype(np.float32)
    rank = _depth_rank(lung, depth)
    noise = _smooth_field(rng, shape, spacing, params.shape_noise_scale_mm)

    flat = np.flatnonzero(inside)  # lung voxels, C order of (K, J, I)
    k, j, i = np.unravel_index(flat, shape)
    pos = np.stack([i * spacing[0], j * spacing[1], k * spacing[2]], axis=1).astype(np.float32)  # mm
    lung_flat = lung.ravel()[flat]
    rank_flat = rank.ravel()[flat]
    base_flat = (params.shape_noise_amplitude * noise.ravel()[flat]
                 - params.peripheral_weight * rank_flat).astype(np.float32)

    n_foci = int(rng.integers(params.n_foci_range[0], params.n_foci_range[1] + 1))
    volumes = np.array([np.sum(lung_flat == s) for s in LUNG_NAMES], dtype=np.float64)
    sides = [int(v) for v in rng.choice(list(LUNG_NAMES), size=n_foci, p=volumes / volumes.sum())]
    if severity != "CT-1" and n_foci >= 2:
        sides[:2] = [LEFT_LUNG, RIGHT_LUNG]  # COVID-19 pneumonia is bilateral: a focus in each lung
    drawn = []
    best = np.full(flat.size, -np.inf, dtype=np.float32)
    owner = np.zeros(flat.size, dtype=np.int64)
    radii = np.zeros(n_foci + 1, dtype=np.float32)
    fills = np.zeros(n_foci + 1, dtype=np.float32)
    for n, side in enumerate(sides, start=1):
        peripheral = bool(rng.random() < params.peripheral_seed_probability)
        candidates = np.flatnonzero((lung_flat == side) & (rank_flat < params.peripheral_depth)) \
            if peripheral else np.flatnonzero(lung_flat == side)
        seed_at = int(candidates[rng.integers(candidates.size)])
        radius = float(rng.uniform(*params.focus_radius_mm_range))
        consolidation = bool(rng.random() < params.consolidation_probability)
        target_hu = float(rng.uniform(*(params.consolidation_hu_range if consolidation else params.ggo_hu_range)))
        # fraction of the remaining air that the lesion replaces by tissue: lung at lung_hu -> target_hu
        fill = float(np.clip((target_hu - lung_hu) / (TISSUE_HU - lung_hu), 0.0, 1.0))
        dist = np.sqrt(np.sum((pos - pos[seed_at]) ** 2, axis=1))
        score = base_flat - dist / np.float32(radius)
        better = score > best
        best[better] = score[better]
        owner[better] = n
        radii[n], fills[n] = radius, fill
        drawn.append({
            "lung": LUNG_NAMES[side], "kind": "consolidation" if consolidation else "ggo",
            "target_hu": target_hu, "fill_fraction": fill, "radius_mm": radius,
            "seed_lps_mm": [float(v) for v in volume.index_to_lps([i[seed_at], j[seed_at], k[seed_at]])],
            "seed_depth_mm": float(depth.ravel()[flat[seed_at]]),
            "seed_depth_rank": float(rank_flat[seed_at]), "peripheral_seed": peripheral,
        })
    n_lesion = int(round(target * flat.size))
    in_lesion = np.zeros(flat.size, dtype=bool)
    threshold = np.inf
    if n_lesion > 0:
        chosen = np.argpartition(-best, n_lesion - 1)[:n_lesion]
        in_lesion[chosen] = True
        threshold = float(best[chosen].min())
    # soft edge: strength 1/2 on the mask's boundary, 1 at edge_mm / 2 inside, 0 at edge_mm / 2 outside
    # (the score falls by 1 per R_f mm away from a seed)
    ramp = np.clip(0.5 + (best - threshold) * radii[owner] / np.float32(params.edge_mm), 0.0, 1.0)
    strength = ramp * ramp * (3 - 2 * ramp)  # smoothstep
    strength = np.where(in_lesion, np.maximum(strength, 0.5), np.minimum(strength, 0.5))

    mask = np.zeros(lung.size, dtype=np.uint8)
    mask[flat[in_lesion]] = owner[in_lesion]
    mask = mask.reshape(shape)
    if params.min_island_mm3 > 0 and n_lesion > 0:
        # specks of a few voxels (thin lung edges that happen to score high) are not COVID-19 findings
        min_voxels = int(np.ceil(params.min_island_mm3 / float(np.prod(spacing))))
        components = sitk.ConnectedComponent(sitk.GetImageFromArray((mask > 0).astype(np.uint8)))
        kept = sitk.GetArrayFromImage(sitk.RelabelComponent(components, minimumObjectSize=min_voxels)) > 0
        mask[~kept] = 0
    alpha = np.zeros(lung.size, dtype=np.float32)
    alpha[flat] = strength
    alpha = alpha.reshape(shape)
    # the soft edge outside the mask only next to a lesion that was kept (not around dropped specks)
    near = _depth_mm(mask == 0, spacing) <= params.edge_mm
    alpha = np.where(mask > 0, alpha, np.where(near, alpha, 0.0)).astype(np.float32)
    fill_map = np.zeros(lung.size, dtype=np.float32)
    fill_map[flat] = fills[owner]

    # renumber the foci that own voxels 1..n (a focus can vanish: a deep seed, or a dropped speck)
    counts = np.bincount(mask.ravel(), minlength=n_foci + 1)
    renumber = np.zeros(n_foci + 1, dtype=np.uint8)
    foci = []
    for n in range(1, n_foci + 1):
        if counts[n] > 0:
            renumber[n] = len(foci) + 1
            foci.append({"id": len(foci) + 1, **drawn[n - 1], "voxels": int(counts[n])})
    dropped = [dict(d) for n, d in enumerate(drawn, start=1) if counts[n] == 0]
    return _Lesions(renumber[mask], alpha, fill_map.reshape(shape), target, foci, dropped)


# -- the generator -------------------------------------------------------------------------------
def generate_lung_case(seed: int, index: int, label: int, params: LungParams = LungParams(),
                       severity: Optional[str] = None) -> PhantomCase:
    """Case ``index`` of the lung phantom dataset ``seed`` (SIMULATED), deterministic in its arguments.

    Args:
        seed, index: which case (`case_rng`); cases are independent of each other.
        label: 0 = normal (CT-0), 1 = covid19 (CT-2..CT-4, or CT-1 too with ``params.include_ct1``).
        params: the ranges every random choice is drawn from.
        severity: force a MosMed class ("CT-0" for normal; "CT-1".."CT-4" for covid19), else drawn.

    Returns:
        A `PhantomCase`: ``volume`` (K, J, I) float32 integer-valued HU, LPS geometry (stored in a random
        axis order when ``params.vary_orientation``); ``lesion_mask`` (K, J, I) uint8 with value n = focus n
        (``info["lesions"][n - 1]``; foci that grow into each other keep separate ids, each voxel going to
        the focus that dominates it); ``organ_mask`` (K, J, I) uint8, 1 = left lung, 2 = right lung;
        ``territory_map`` None; ``info`` every drawn parameter, the severity and the involvement achieved
        (fractions of each lung's volume and of both), JSON-serialisable.
    """
    template = lung_template()
    streams = case_rng(seed, index).spawn(4)
    patient_rng, noise_rng, lesion_rng, storage_rng = streams
    sev = _choose_severity(lesion_rng, label, severity, params)

    # patient: pose, body size, breathing (elastic), and the scanner's voxel size and calibration
    s = params.deformation_strength
    d = random_deformation(
        patient_rng, max_rotation_deg=[m * s for m in params.max_rotation_deg],
        scale_range=[1 - (1 - params.scale_range[0]) * s, 1 + (params.scale_range[1] - 1) * s],
        max_translation_mm=params.max_translation_mm * s, elastic_mm=[e * s for e in params.elastic_mm_range])
    spacing = (float(patient_rng.choice(params.inplane_spacing_mm_choices)),) * 2 + \
        (float(patient_rng.choice(params.slice_spacing_mm_choices)),)
    noise_sigma = float(patient_rng.uniform(*params.noise_sigma_hu_range))
    gain = float(patient_rng.uniform(-params.hu_gain_jitter, params.hu_gain_jitter))
    offset = float(patient_rng.uniform(-params.hu_offset_jitter_hu, params.hu_offset_jitter_hu))

    # torch.from_numpy inside deform() wants a writable array; the template's stays read-only
    source = dataclasses.replace(template.volume, voxels_hu=template.volume.voxels_hu.copy())
    patient, masks = deform(source, {"lung": np.array(template.lung_mask)}, d, spacing_mm=spacing, fill_hu=AIR_HU)
    lung = masks["lung"]
    hu = patient.voxels_hu.astype(np.float32)
    lung_hu = _lung_median_hu(hu, lung)

    info: dict = {
        "simulated": True,
        "generator": "training.phantom.lung",
        "source": "Slicer CTChest sample (slicerio CTChest4.nrrd + Segmentation.seg.nrrd)",
        "seed": int(seed), "index": int(index), "label": int(label), "label_name": LUNG_LABELS[label],
        "severity": sev, "severity_range": list(SEVERITY_RANGES[sev]),
        "params": params.to_dict(),
        "deformation": d.to_dict(), "spacing_mm": list(spacing),
        "noise_sigma_hu": noise_sigma, "hu_gain": gain, "hu_offset_hu": offset,
        "lung_median_hu_before_lesions": lung_hu,
        "lesion_mask_values": "n = focus n (info['lesions'][n-1]); each voxel goes to its dominant focus",
    }

    if label == 1:
        lesions = _grow_lesions(lesion_rng, lung, patient, sev, lung_hu, params)
        # fill part of the air with tissue: aerated lung moves to the target HU, while vessels (already
        # near tissue HU) stay as they are, as they remain visible through ground glass
        hu = hu + lesions.alpha * lesions.fill * np.maximum(np.float32(TISSUE_HU) - hu, 0)
        lesion_mask = lesions.mask
        info["lesions"] = lesions.foci
        info["lesions_dropped"] = lesions.dropped
        info["target_involvement"] = lesions.target
    else:
        lesion_mask = np.zeros(lung.shape, dtype=np.uint8)
        info["lesions"] = []
        info["lesions_dropped"] = []
        info["target_involvement"] = 0.0
    involved = lesion_mask > 0
    info["involvement"] = {
        "total": float(involved.sum() / max(int((lung > 0).sum()), 1)),
        **{name: float((involved & (lung == v)).sum() / max(int((lung == v).sum()), 1))
           for v, name in LUNG_NAMES.items()},
    }
    info["involvement_percent"] = {k: 100.0 * v for k, v in info["involvement"].items()}
    info["lung_volume_ml"] = {name: float((lung == v).sum() * np.prod(spacing) / 1000.0)
                              for v, name in LUNG_NAMES.items()}

    # scanner: correlated noise, calibration error, integer HU like a scanner's int16 output
    hu = hu + _correlated_noise(noise_rng, hu.shape, noise_sigma, params.noise_correlation_voxels)
    hu = np.clip(np.rint(hu * np.float32(1 + gain) + np.float32(offset)), AIR_HU, 3071).astype(np.float32)
    volume = CTVolume(hu, patient.spacing_mm, patient.origin_mm, np.eye(3), dict(METADATA))
    organ_mask = lung.astype(np.uint8)

    # storage: another axis order / flips with the matching direction (same anatomy)
    if params.vary_orientation:
        r = Reorientation(tuple(int(a) for a in storage_rng.permutation(3)),
                          tuple(bool(f) for f in storage_rng.integers(0, 2, 3)))
    else:
        r = Reorientation((0, 1, 2), (False, False, False))
    if not r.is_identity:
        volume = store_as(volume, r)
        lesion_mask = np.ascontiguousarray(r.undo(lesion_mask))
        organ_mask = np.ascontiguousarray(r.undo(organ_mask))
    info["storage"] = {"source_axis": list(r.source_axis), "flip": list(r.flip),
                       "orientation_code": volume.orientation_code()}
    info["shape_kji"] = list(volume.voxels_hu.shape)
    return PhantomCase(volume=volume, lesion_mask=lesion_mask, organ_mask=organ_mask, territory_map=None,
                       label=int(label), label_name=LUNG_LABELS[label], info=info)
