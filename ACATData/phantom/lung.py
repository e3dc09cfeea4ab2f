"""Lung phantom (SIMULATED): COVID-19-like lesions painted on a real chest CT, with exact ground truth.

Stands in for MosMedData (Fontanella et al., ICML 2023, lung task: CT-0 versus CT-2..CT-4), which
cannot be obtained here. Every case is built from one real scan, Slicer's CTChest sample shipped in the
``slicerio`` package (128 x 128 x 34 voxels, 3.05 x 3.05 x 10 mm, HU) and its lung segmentation:

1. template (built once): the CT in canonical LPS layout (i -> Left, j -> Posterior, k -> Superior)
   and a lung label map (1 = left lung, 2 = right lung) mapped onto the CT grid in physical space;
2. patient: a random rigid + elastic deformation and a new voxel spacing (`deform`);
3. lesions (covid19 only): a MosMed severity (fraction of the lung volume involved) and many rounded,
   lobulated foci seeded mostly near the pleura, posteriorly and in the lower zones, grown together until
   their union covers exactly that fraction (distinct patches in CT-1/CT-2, confluent in CT-3/CT-4). They
   are painted as ground-glass opacity (GGO) added to the lung, not replacing it: mottled attenuation
   (smooth noise), vessels and bronchial walls still visible through it, ill-defined margins, a
   "crazy-paving" reticulation on some foci and a denser, uniform consolidated core, mostly dependent, in
   some foci (more of them in CT-3/CT-4);
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
from ACATData.sample_data import ctchest_path, ctchest_segmentation_path
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
        include_ct1: let the covid19 class also draw CT-1 (< 25 % involved). On by default since the CT-2+
            only task saturated (every model 1.000, docs/PHANTOM.md "Difficulty"); off gives the paper's
            CT-0 versus CT-2..CT-4 task.
        severity_weights: relative frequency of CT-1, CT-2, CT-3, CT-4 in the covid19 class (CT-1's weight
            is dropped unless ``include_ct1``). MosMedData has 684 / 125 / 45 / 2 such scans; the defaults
            keep that order with CT-1 most common but give CT-3/CT-4 more weight (0.55 / 0.30 / 0.12 /
            0.03), so that a few hundred cases still contain severe ones.
        involvement_margin: the target involvement is drawn at least this far inside the class range, so
            that the achieved value (exact up to one voxel) is never ambiguous between two classes.
        max_involvement: upper bound for CT-4 (a lung entirely opacified is not a useful case).

    Lesions (COVID-19 pneumonia on CT: multifocal, bilateral, peripheral and posterior-predominant
    ground-glass opacities with soft margins, mottled or crazy-paving texture, consolidation in some foci):
        n_foci_range: bounds (inclusive) on the number of foci; COVID-19 pneumonia is typically multifocal
            and bilateral, so CT-2+ always gets at least one focus in each lung.
        focus_volume_ml_range: the number of foci is the involved volume divided by a mean focus volume
            drawn from this range (then clipped to ``n_foci_range``): about 20-40 foci of 4-6 cm in a CT-2
            case of these 6-7 litre lungs, fewer and smaller ones in CT-1, more in CT-3/CT-4, where they
            merge.
        focus_radius_mm_range: distance over which a focus's growth score falls by one unit: its size
            relative to the other foci (all grow to the same score level).
        peripheral_seed_probability: probability that a focus is seeded in the outer ``peripheral_depth``
            of its lung; COVID-19 GGO is mostly subpleural. Depth is ranked within each lung (0 = on the
            pleura, 1 = deepest voxel, 0.5 = the lung's median depth), so "outer third" means the third
            of the lung's volume nearest to the pleura, whatever the lung's shape.
        peripheral_depth: that outer fraction (1/3).
        peripheral_weight: growth penalty per unit of depth rank, so that foci spread along the pleura
            before they grow towards the hilum. With 2, about 75 % of a CT-2 case's lesion volume (60-65 %
            for CT-3, 55 % for CT-4) lies in the outer half of its lung; 4 and more flattens the foci
            into a continuous subpleural rind.
        exclude_mediastinal_pleura: measure depth from the costal, diaphragmatic and apical pleura only
            (the lungs' boundary with the mediastinum is not "periphery" in radiology reports).
        posterior_seed_bias, inferior_seed_bias: seeds are drawn with weight
            ``exp(posterior_seed_bias * posterior_rank + inferior_seed_bias * inferior_rank)`` (ranks in
            (0, 1) within each lung: 1 = most posterior / lowest): posterior, lower-zone predominance.
        posterior_weight, inferior_weight: growth penalty per unit of anterior / superior rank (the same
            predominance in how the foci grow). With the defaults about 65 % of a CT-2 case's lesion
            volume lies in the posterior half of its lung.
        shape_noise_amplitude / shape_noise_scale_mm: smooth random field (cubic B-spline on a lattice of
            that spacing) added to the growth score: irregular, lobulated foci instead of spheres.
        edge_mm: width of the soft margin: the lesion's strength rises from 0 at ``edge_mm / 4`` outside
            the mask to 1/2 on its boundary (the mask is the half-strength level, as partial volume would
            make it) and 1 at ``2 * edge_mm / 3`` inside (mostly inside, so that the aerated lung next to
            a lesion keeps its voxels beyond the first in-plane neighbour). Measured from the boundary with
            aerated lung only: a lesion that reaches the pleura stays at full strength there.
        min_island_mm3: lesion fragments smaller than this (about a 1 cm ball) are dropped: a few thin
            lung edges score high by chance and would leave specks of one or two voxels.
        ggo_hu_range: HU of a focus's ground glass at full strength, between aerated lung (about -850)
            and soft tissue; the texture makes most of it fainter. Default -720 to -450 HU: faint ground
            glass (the earlier -600 to -250 made every case obvious).
        texture_range / texture_scale_mm: mottled attenuation: the lesion's strength is multiplied by a
            smooth random field (two scales: ``texture_scale_mm`` and three times that) mapped to this
            range.
        crazy_paving_probability / crazy_paving_scale_mm / crazy_paving_hu: per focus, a network of thin
            curved lines (the zero level of a smooth field at that scale, cells about twice as wide) that
            adds up to ``crazy_paving_hu`` on top of the ground glass.
        consolidation_hu_range: HU of consolidation (airless lung, about soft tissue).
        consolidation_probability: for CT-1, CT-2, CT-3, CT-4, the probability that a focus gets a
            consolidated core (its "kind" is then "consolidation", else "ggo").
        consolidation_core_mm_range: in such a focus, consolidation starts this deep inside the lesion
            (measured from aerated lung) ...
        consolidation_patch_level: ... where a smooth field plus a posterior (dependent) gradient exceeds
            this level (higher = fewer, smaller consolidated patches).
        blend_softness: foci that touch blend their HU and texture over a score difference of about this
            (a softmax of their scores), so confluent foci show no seams.
        The lesion is added to the lung, not painted over it: aerated lung gains a HU increment (its own
            texture stays), denser voxels (vessels, bronchial walls) the partial-volume fill that gives
            that increment at the lung's median HU, so they stay visible through ground glass and vanish
            only in consolidation.

    Patient and scanner:
        max_rotation_deg (about x, y, z), scale_range, max_translation_mm, elastic_mm_range: the
            deformation at ``deformation_strength`` 1 (0 = the template's own anatomy, 2 = twice as far).
        inplane_spacing_mm_choices, slice_spacing_mm_choices: output voxel size (cases stay small:
            at most about 156 x 156 x 67 voxels).
        noise_sigma_hu_range: standard deviation of the added noise (on top of the scan's own noise);
            10-30 HU, a low-dose chest CT's range.
        noise_correlation_voxels: in-plane Gaussian correlation length (sigma, voxels) of that noise, like
            a reconstruction kernel's.
        hu_gain_jitter, hu_offset_jitter_hu: calibration error ``hu * (1 + g) + o`` with ``|g|`` and ``|o|``
            at most these (water stays near 0, air moves by up to about 35 HU).
        vary_orientation: store each case with a random axis permutation and flips (one of 48), with the
            matching direction matrix; off = canonical LPS storage.
    """

    include_ct1: bool = True
    severity_weights: tuple[float, float, float, float] = (0.55, 0.30, 0.12, 0.03)
    involvement_margin: float = 0.03
    max_involvement: float = 0.92

    n_foci_range: tuple[int, int] = (4, 40)
    focus_volume_ml_range: tuple[float, float] = (40.0, 100.0)
    focus_radius_mm_range: tuple[float, float] = (8.0, 25.0)
    peripheral_seed_probability: float = 0.85
    peripheral_depth: float = 1.0 / 3.0
    peripheral_weight: float = 2.0
    exclude_mediastinal_pleura: bool = True
    posterior_seed_bias: float = 1.5
    inferior_seed_bias: float = 1.0
    posterior_weight: float = 0.5
    inferior_weight: float = 0.3
    shape_noise_amplitude: float = 0.6
    shape_noise_scale_mm: float = 15.0
    edge_mm: float = 8.0
    min_island_mm3: float = 500.0
    ggo_hu_range: tuple[float, float] = (-720.0, -450.0)
    consolidation_hu_range: tuple[float, float] = (-100.0, 40.0)
    consolidation_probability: tuple[float, float, float, float] = (0.0, 0.15, 0.35, 0.5)
    consolidation_core_mm_range: tuple[float, float] = (3.0, 12.0)
    consolidation_patch_level: float = 0.6
    texture_range: tuple[float, float] = (0.4, 1.0)
    texture_scale_mm: float = 6.0
    crazy_paving_probability: float = 0.3
    crazy_paving_scale_mm: float = 7.0
    crazy_paving_hu: float = 120.0
    blend_softness: float = 0.3

    deformation_strength: float = 1.0
    max_rotation_deg: tuple[float, float, float] = (4.0, 4.0, 6.0)
    scale_range: tuple[float, float] = (0.93, 1.07)
    max_translation_mm: float = 8.0
    elastic_mm_range: tuple[float, float] = (0.0, 6.0)
    inplane_spacing_mm_choices: tuple[float, ...] = (2.5, 3.0, 3.5)
    slice_spacing_mm_choices: tuple[float, ...] = (5.0, 7.5, 10.0)
    noise_sigma_hu_range: tuple[float, float] = (10.0, 30.0)
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
    mask: np.ndarray  # (K, J, I) uint8 focus ids (where ``alpha`` >= 1/2)
    alpha: np.ndarray  # (K, J, I) float32 lesion envelope 0..1 (soft margins)
    delta: np.ndarray  # (K, J, I) float32 HU the lesion adds to aerated lung (at the lung's median HU)
    target: float
    foci: list  # the foci that own voxels, "id" = their value in ``mask``
    dropped: list  # foci drawn but left without voxels


def _rank_in_lungs(lung_flat: np.ndarray, values: np.ndarray) -> np.ndarray:
    """float32 in (0, 1) per lung voxel: the fraction of its own lung's voxels with a smaller value."""
    out = np.zeros(values.size, dtype=np.float32)
    for side in LUNG_NAMES:
        sel = np.flatnonzero(lung_flat == side)
        order = np.argsort(values[sel], kind="stable")
        rank = np.empty(sel.size, dtype=np.float32)
        rank[order] = (np.arange(sel.size, dtype=np.float32) + 0.5) / max(sel.size, 1)
        out[sel] = rank
    return out


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _grow_lesions(rng: np.random.Generator, lung: np.ndarray, volume: CTVolume, severity: str,
                  lung_hu: float, params: LungParams) -> _Lesions:
    """`_grow_lesions_in_box` on the lungs' bounding box (plus a margin of 2 voxels), pasted back.

    About half the work of the whole grid; the margin keeps every distance to the lungs' outside exact and
    leaves room for the lesions' spill into the partial-volume voxels next to the lung mask.
    """
    nonzero = [np.flatnonzero(lung.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1))]
    start = [max(int(n[0]) - 2, 0) for n in nonzero]
    stop = [min(int(n[-1]) + 3, size) for n, size in zip(nonzero, lung.shape)]
    box = tuple(slice(a, b) for a, b in zip(start, stop))
    sub = CTVolume(np.ascontiguousarray(volume.voxels_hu[box]), volume.spacing_mm,
                   volume.index_to_lps(start[::-1]), volume.direction, {})
    lesions = _grow_lesions_in_box(rng, np.ascontiguousarray(lung[box]), sub, severity, lung_hu, params)
    out = []
    for part, dtype in ((lesions.mask, np.uint8), (lesions.alpha, np.float32), (lesions.delta, np.float32)):
        full = np.zeros(lung.shape, dtype=dtype)
        full[box] = part
        out.append(full)
    return _Lesions(*out, lesions.target, lesions.foci, lesions.dropped)


def _grow_lesions_in_box(rng: np.random.Generator, lung: np.ndarray, volume: CTVolume, severity: str,
                         lung_hu: float, params: LungParams) -> _Lesions:
    """Seed foci, grow them together to the target involvement, and describe how they change HU.

    Args:
        lung: (K, J, I) uint8 lung labels on ``volume``'s canonical grid (identity direction).
        lung_hu: the lung's median HU before lesions (aerated lung, where ``delta`` is added in full).

    Growth is a level set of one score per lung voxel x and focus f:

        score_f(x) = b(x) - |x - seed_f| / R_f,
        b = shape_noise_amplitude * noise - peripheral_weight * depth_rank
            - posterior_weight * (1 - posterior_rank) - inferior_weight * (1 - inferior_rank)

    The lesion is {x : max_f score_f(x) > t}, with t chosen so that exactly round(target * lung voxels)
    voxels are above it: all foci grow at once until their union covers the target fraction (rounded,
    lobulated foci that stay apart in mild disease and become confluent in severe disease). Each voxel
    belongs to the focus with the largest score, so every focus owns at least the neighbourhood of its
    seed. Fragments under ``min_island_mm3`` are then dropped and the surviving foci renumbered 1..n.

    Appearance: an envelope (1/2 on the mask's boundary, 1 at ``2/3 edge_mm`` inside, 0 at ``edge_mm / 4``
    outside) times a mottled texture (``texture_range``: smooth noise at two scales), with a reticular
    "crazy-paving" network on some foci and a consolidated core (deeper than ``consolidation_core_mm_range``
    inside the lesion) in consolidation foci. Per-focus attenuations are blended across the boundaries
    between touching foci (softmax of their scores), so confluent foci show no seams.
    """
    lo, hi = SEVERITY_RANGES[severity]
    hi = min(hi, params.max_involvement)
    target = float(rng.uniform(lo + params.involvement_margin, hi - params.involvement_margin))
    grid = _LungVoxels.of(lung, volume.spacing_mm, params)
    foci = _grow_foci(rng, grid, target, severity, lung_hu, volume, params)
    mask = _lesion_mask(grid, foci, target, params)
    strength, signed = _soft_margin(grid, mask, params)
    delta = _attenuation(rng, grid, foci, strength, signed, lung_hu, volume, params)
    alpha = np.zeros(lung.size, dtype=np.float32)
    alpha[grid.flat] = strength
    mask, kept, dropped = _renumber_foci(mask, foci.drawn)
    return _Lesions(mask, alpha.reshape(grid.shape), delta.astype(np.float32), target, kept, dropped)


@dataclass
class _LungVoxels:
    """The lung voxels of a grid, as flat arrays (C order of (K, J, I)): where they are and how deep."""

    shape: tuple
    spacing: np.ndarray
    inside: np.ndarray  # (K, J, I) bool
    depth: np.ndarray  # (K, J, I) float32 mm from the lungs' outside (0 outside)
    flat: np.ndarray  # indices of the lung voxels in the raveled grid
    i: np.ndarray
    j: np.ndarray
    k: np.ndarray
    pos: list  # x, y, z in mm, float32
    lung_flat: np.ndarray  # the lung label of each voxel
    rank_flat: np.ndarray  # depth rank in its own lung, 0 = at the pleura
    posterior: np.ndarray  # 0 = most anterior, 1 = most posterior (in its own lung)
    inferior: np.ndarray  # 0 = apex, 1 = base

    @classmethod
    def of(cls, lung: np.ndarray, spacing: np.ndarray, params: LungParams) -> "_LungVoxels":
        shape = lung.shape
        inside = lung > 0
        depth = _depth_mm(_thoracic_cavity(inside) if params.exclude_mediastinal_pleura else inside, spacing)
        depth = np.where(inside, depth, 0.0).astype(np.float32)
        flat = np.flatnonzero(inside)  # lung voxels, C order of (K, J, I)
        k, j, i = np.unravel_index(flat, shape)
        pos = [(a * s).astype(np.float32) for a, s in zip((i, j, k), spacing)]  # x, y, z in mm
        lung_flat = lung.ravel()[flat]
        rank_flat = _rank_in_lungs(lung_flat, depth.ravel()[flat])
        posterior = _rank_in_lungs(lung_flat, j.astype(np.float32))  # 0 = most anterior, 1 = most posterior
        inferior = _rank_in_lungs(lung_flat, -k.astype(np.float32))  # 0 = apex, 1 = base
        return cls(shape, spacing, inside, depth, flat, i, j, k, pos, lung_flat, rank_flat, posterior, inferior)


@dataclass
class _Foci:
    """The foci drawn and, per lung voxel, the best score, the focus owning it, and the softmax over foci of
    their attributes (ggo HU, consolidation flag, flag * consolidation HU, flag * core depth, crazy paving)."""

    drawn: list
    best: np.ndarray
    owner: np.ndarray
    soft: np.ndarray  # (5, lung voxels)


def _grow_foci(rng: np.random.Generator, grid: _LungVoxels, target: float, severity: str, lung_hu: float,
               volume: CTVolume, params: LungParams) -> _Foci:
    """Seed as many foci as the involved volume needs and score every lung voxel for each (the level set of
    `_grow_lesions_in_box`)."""
    shape, spacing, flat, lung_flat = grid.shape, grid.spacing, grid.flat, grid.lung_flat
    rank_flat, posterior, inferior, pos = grid.rank_flat, grid.posterior, grid.inferior, grid.pos
    i, j, k = grid.i, grid.j, grid.k
    noise = _smooth_field(rng, shape, spacing, params.shape_noise_scale_mm)
    base_flat = (params.shape_noise_amplitude * noise.ravel()[flat]
                 - params.peripheral_weight * rank_flat
                 - params.posterior_weight * (1 - posterior)
                 - params.inferior_weight * (1 - inferior)).astype(np.float32)
    seed_weight = np.exp(params.posterior_seed_bias * posterior + params.inferior_seed_bias * inferior)

    # as many foci as the involved volume needs for foci of about focus_volume_ml each
    lung_ml = flat.size * float(np.prod(spacing)) / 1000.0
    focus_ml = float(rng.uniform(*params.focus_volume_ml_range))
    n_foci = int(np.clip(round(target * lung_ml / focus_ml), params.n_foci_range[0], params.n_foci_range[1]))
    volumes = np.array([np.sum(lung_flat == s) for s in LUNG_NAMES], dtype=np.float64)
    sides = [int(v) for v in rng.choice(list(LUNG_NAMES), size=n_foci, p=volumes / volumes.sum())]
    if severity != "CT-1" and n_foci >= 2:
        sides[:2] = [LEFT_LUNG, RIGHT_LUNG]  # COVID-19 pneumonia is bilateral: a focus in each lung
    p_consolidation = dict(zip(COVID_SEVERITIES, params.consolidation_probability))[severity]
    drawn = []
    best = np.full(flat.size, -np.inf, dtype=np.float32)
    owner = np.zeros(flat.size, dtype=np.int64)
    # softmax over foci of their per-voxel attributes (streamed): ggo HU, consolidation flag,
    # flag * consolidation HU, flag * core depth, crazy paving flag
    soft_sum = np.zeros(flat.size, dtype=np.float32)
    soft = np.zeros((5, flat.size), dtype=np.float32)
    inv_tau = np.float32(1.0 / params.blend_softness)
    for n, side in enumerate(sides, start=1):
        peripheral = bool(rng.random() < params.peripheral_seed_probability)
        candidates = np.flatnonzero((lung_flat == side) & (rank_flat < params.peripheral_depth)) \
            if peripheral else np.flatnonzero(lung_flat == side)
        w = seed_weight[candidates]
        seed_at = int(candidates[min(int(np.searchsorted(np.cumsum(w), rng.random() * w.sum())),
                                     candidates.size - 1)])
        radius = float(rng.uniform(*params.focus_radius_mm_range))
        consolidation = bool(rng.random() < p_consolidation)
        crazy = bool(rng.random() < params.crazy_paving_probability)
        g_hu = float(rng.uniform(*params.ggo_hu_range))
        c_hu = float(rng.uniform(*params.consolidation_hu_range))
        c_mm = float(rng.uniform(*params.consolidation_core_mm_range))
        dist = np.square(pos[0] - pos[0][seed_at])
        dist += np.square(pos[1] - pos[1][seed_at])
        dist += np.square(pos[2] - pos[2][seed_at])
        score = base_flat - np.sqrt(dist) * np.float32(1.0 / radius)
        better = score > best
        # streamed softmax: rescale the running sums where the maximum moves up
        if n > 1:
            rescale = np.exp(np.minimum(best - score, 0) * inv_tau)
            soft_sum *= rescale
            soft *= rescale
        best[better] = score[better]
        owner[better] = n
        e = np.exp((score - best) * inv_tau)
        soft_sum += e
        attributes = (g_hu, float(consolidation), c_hu * consolidation, c_mm * consolidation, float(crazy))
        for a, value in enumerate(attributes):
            if value:
                soft[a] += e * np.float32(value)
        peak_hu = c_hu if consolidation else g_hu
        drawn.append({
            "lung": LUNG_NAMES[side], "kind": "consolidation" if consolidation else "ggo",
            "target_hu": peak_hu, "ggo_hu": g_hu, "consolidation_hu": c_hu if consolidation else None,
            "consolidation_core_mm": c_mm if consolidation else None, "crazy_paving": crazy,
            "fill_fraction": float(np.clip((peak_hu - lung_hu) / (TISSUE_HU - lung_hu), 0.0, 1.0)),
            "radius_mm": radius,
            "seed_lps_mm": [float(v) for v in volume.index_to_lps([i[seed_at], j[seed_at], k[seed_at]])],
            "seed_depth_mm": float(grid.depth.ravel()[flat[seed_at]]),
            "seed_depth_rank": float(rank_flat[seed_at]), "seed_posterior_rank": float(posterior[seed_at]),
            "peripheral_seed": peripheral,
        })
    soft /= soft_sum
    return _Foci(drawn, best, owner, soft)


def _lesion_mask(grid: _LungVoxels, foci: _Foci, target: float, params: LungParams) -> np.ndarray:
    """(K, J, I) uint8 focus ids: the round(target * lung voxels) best-scoring voxels, specks dropped."""
    flat = grid.flat
    n_lesion = int(round(target * flat.size))
    in_lesion = np.zeros(flat.size, dtype=bool)
    if n_lesion > 0:
        chosen = np.argpartition(-foci.best, n_lesion - 1)[:n_lesion]
        in_lesion[chosen] = True
    mask = np.zeros(int(np.prod(grid.shape)), dtype=np.uint8)
    mask[flat[in_lesion]] = foci.owner[in_lesion]
    mask = mask.reshape(grid.shape)
    if params.min_island_mm3 > 0 and n_lesion > 0:
        # specks of a few voxels (thin lung edges that happen to score high) are not COVID-19 findings
        min_voxels = int(np.ceil(params.min_island_mm3 / float(np.prod(grid.spacing))))
        components = sitk.ConnectedComponent(sitk.GetImageFromArray((mask > 0).astype(np.uint8)))
        kept = sitk.GetArrayFromImage(sitk.RelabelComponent(components, minimumObjectSize=min_voxels)) > 0
        mask[~kept] = 0
    return mask


def _soft_margin(grid: _LungVoxels, mask: np.ndarray, params: LungParams) -> tuple[np.ndarray, np.ndarray]:
    """(strength 0..1, signed distance in mm) per lung voxel: 1/2 on the mask's boundary, rising inside.

    The distance is to the boundary between lesion and aerated lung (the pleura is no boundary: a subpleural
    lesion stays dense up to the chest wall): > 0 inside the mask, < 0 outside, shifted by half an in-plane
    voxel so that the mask's boundary (half strength) is at 0."""
    flat, spacing, inside = grid.flat, grid.spacing, grid.inside
    in_mask = mask.ravel()[flat] > 0
    if in_mask.any():
        lesion_img = sitk.GetImageFromArray((mask > 0).astype(np.uint8))
        lesion_img.SetSpacing([float(v) for v in spacing])
        open_img = sitk.GetImageFromArray(((mask > 0) | ~inside).astype(np.uint8))
        open_img.SetSpacing([float(v) for v in spacing])
        kwargs = dict(insideIsPositive=True, squaredDistance=False, useImageSpacing=True)
        into = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(open_img, **kwargs)).ravel()[flat]
        out_of = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(lesion_img, **kwargs)).ravel()[flat]
        signed = np.where(in_mask, into, out_of).astype(np.float32) + np.float32(0.5 * float(np.min(spacing[:2])))
    else:
        signed = np.full(flat.size, -np.inf, dtype=np.float32)
    edge = np.float32(params.edge_mm)
    strength = np.where(signed >= 0, 0.5 + 0.5 * _smoothstep(signed / (edge * 2 / 3)),
                        0.5 * _smoothstep(1 + signed / (edge / 4)))
    strength = np.where(in_mask, np.maximum(strength, 0.5), np.minimum(strength, 0.49)).astype(np.float32)
    return strength, signed


def _attenuation(rng: np.random.Generator, grid: _LungVoxels, foci: _Foci, strength: np.ndarray,
                 signed: np.ndarray, lung_hu: float, volume: CTVolume, params: LungParams) -> np.ndarray:
    """(K, J, I) float32 HU the lesions add to aerated lung: envelope times texture.

    Texture: mottled attenuation (fine + medium smooth noise -> texture_range), a reticular network (thin
    ridges along the zero level of another smooth field: "crazy paving"), and a consolidated core in
    consolidation foci (denser, more uniform: vessels no longer visible)."""
    shape, spacing, flat, posterior = grid.shape, grid.spacing, grid.flat, grid.posterior
    s = params.texture_scale_mm
    coarse = _smooth_field(rng, shape, spacing, 3 * s).ravel()[flat]
    mottle = 0.8 * _smooth_field(rng, shape, spacing, s).ravel()[flat] + 0.6 * coarse
    u = 1.0 / (1.0 + np.exp(-1.7 * mottle))  # ~ normal CDF: about uniform in (0, 1)
    tex = (params.texture_range[0] + (params.texture_range[1] - params.texture_range[0]) * u).astype(np.float32)
    reticular = _smooth_field(rng, shape, spacing, params.crazy_paving_scale_mm).ravel()[flat]
    lines = np.exp(-(reticular / np.float32(0.35)) ** 2)
    ggo, cons_w, cons_hu_w, core_w, paving = foci.soft
    cons_hu = cons_hu_w / np.maximum(cons_w, np.float32(1e-6))
    core_mm = core_w / np.maximum(cons_w, np.float32(1e-6))
    # consolidation: deeper than core_mm inside the lesion, in patches, more often in the dependent (posterior) lung
    patches = _smooth_field(rng, shape, spacing, params.shape_noise_scale_mm).ravel()[flat] + 2.0 * (posterior - 0.5)
    c = (cons_w * _smoothstep((signed + np.float32(4.0) * coarse - core_mm) / np.float32(6.0))
         * _smoothstep(patches - np.float32(params.consolidation_patch_level) + np.float32(0.5)))
    peak = ggo + c * (cons_hu - ggo)
    tex = tex + c * (1 - tex) * np.float32(0.7)
    d = (peak - np.float32(lung_hu)) * tex + paving * (1 - c) * lines * np.float32(params.crazy_paving_hu)
    delta = np.zeros(int(np.prod(shape)), dtype=np.float32)
    delta[flat] = strength * np.maximum(d, 0.0)
    delta = delta.reshape(shape)
    # air-containing voxels just outside the (nearest-neighbour) lung mask are partly lung: they take the
    # lesion of their neighbours, else they show as a dark dotted rim along a dense subpleural lesion
    spilled = sitk.GetArrayFromImage(sitk.GrayscaleDilate(sitk.GetImageFromArray(delta), [1, 1, 1]))
    return np.where(~grid.inside & (volume.voxels_hu < -200), spilled, delta)


def _renumber_foci(mask: np.ndarray, drawn: list) -> tuple[np.ndarray, list, list]:
    """(mask, foci, dropped): the foci that own voxels renumbered 1..n (a focus can vanish: a deep seed, or
    a dropped speck), each with its voxel count; the ones left without voxels."""
    n_foci = len(drawn)
    counts = np.bincount(mask.ravel(), minlength=n_foci + 1)
    renumber = np.zeros(n_foci + 1, dtype=np.uint8)
    foci = []
    for n in range(1, n_foci + 1):
        if counts[n] > 0:
            renumber[n] = len(foci) + 1
            foci.append({"id": len(foci) + 1, **drawn[n - 1], "voxels": int(counts[n])})
    dropped = [dict(d) for n, d in enumerate(drawn, start=1) if counts[n] == 0]
    return renumber[mask], foci, dropped


def _apply_lesions(hu: np.ndarray, delta: np.ndarray, lung_hu: float) -> np.ndarray:
    """HU with the lesions added: ground glass adds to the lung, it does not replace it.

    Aerated lung (at or below the lung's median HU) gets ``delta`` in full, so its own texture stays;
    denser voxels (vessels, bronchial walls, dependent lung) get the partial-volume fill that gives
    ``delta`` at the median, ``f * (TISSUE_HU - hu)`` with ``f = delta / (TISSUE_HU - lung_hu)``: they stay
    brighter than the ground glass around them (visible through it), and are hidden only where the
    lesion reaches soft-tissue HU (consolidation). Monotone in ``hu``, never negative.
    """
    fill = delta / np.float32(max(TISSUE_HU - lung_hu, 1.0))
    return hu + np.minimum(delta, fill * np.maximum(np.float32(TISSUE_HU) - hu, 0))


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
        "generator": "ACATData.phantom.lung",
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
        # add tissue to the aerated lung; vessels and bronchial walls stay visible through ground glass
        hu = _apply_lesions(hu, lesions.delta, lung_hu)
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
