"""From a CT volume to the models' input, and from model-space maps back to the input's own grid.

The models see ``(B, S, 1, H, W)`` float32 in [0, 1]: S axial slices of the *canonical* volume (columns
towards the patient's left, rows towards posterior; see `ACATLogic.volume`), resampled in-plane onto an
H x W grid and windowed (``hu_window = (level, width)``). The in-plane grid is placed by a rigid 2D
transform, the same for every slice of a scan, recorded in `SliceGeometry`:

* ``alignment="brain_midline"``: the head is centred and its mid-sagittal line turned upright, so that the
  columns ``[W//2:]`` hold the patient's left hemisphere (the brain model reads hemispheres). The head is
  the tissue mask (> -200 HU) summed over slices; its centroid is the centre, its principal (longest)
  axis - antero-posterior in a head - gives the rotation. The transform is a proper rotation: it never
  mirrors, so patient left stays patient left.
* ``alignment="centre"``: the body (> -500 HU) is centred, no rotation (the lung model).

The field of view is the mask's extent times ``fov_margin``, with square model pixels.

**Covering every slice.** The scan-level classifier reads S uniformly spaced slices. To explain *every*
input slice, the K canonical slices are split into ``ceil(K / S)`` interleaved chunks - chunk c takes
slices ``c, c + step, c + 2 step, ...`` with ``step = ceil(K / S)`` (the last index repeats when K is not
a multiple) - and each chunk is one uniformly spaced sample of the whole scan, explained as a scan of its
own. Maps come back slice by slice (repeats averaged) and are resampled in-plane onto the canonical grid
with bilinear interpolation, then un-reoriented onto the input grid. With ``coverage="sampled"`` only
the S slices nearest to ``linspace(0, K-1, S)`` are used and maps are linearly interpolated along k.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ACATInputError
from .volume import CTVolume, Reorientation, to_canonical

Alignment = Literal["brain_midline", "centre"]


@dataclass(frozen=True)
class InputSpec:
    """What a model expects (stored in the model card's ``input``)."""

    slices: int = 11
    size: tuple[int, int] = (128, 128)  # (H, W)
    hu_window: tuple[float, float] = (40.0, 80.0)  # (level, width) in HU
    alignment: Alignment = "brain_midline"
    fov_margin: float = 1.1
    #: the organ maps are restricted to (`ACATLogic.organ`): "brain", "lungs" or "none"; left empty (as in
    #: a card written before it existed) it is "brain" for a brain_midline model and "none" otherwise
    organ: str = ""

    def __post_init__(self) -> None:
        if not self.organ:
            object.__setattr__(self, "organ", "brain" if self.alignment == "brain_midline" else "none")

    @classmethod
    def from_dict(cls, d: dict) -> "InputSpec":
        alignment = d.get("alignment", "brain_midline")
        return cls(slices=int(d["slices"]), size=(int(d["size"][0]), int(d["size"][1])),
                   hu_window=(float(d["hu_window"][0]), float(d["hu_window"][1])),
                   alignment=alignment, fov_margin=float(d.get("fov_margin", 1.1)),
                   organ=str(d.get("organ", "")))

    def to_dict(self) -> dict:
        return {"slices": self.slices, "size": list(self.size), "hu_window": list(self.hu_window),
                "alignment": self.alignment, "fov_margin": self.fov_margin, "organ": self.organ,
                "orientation": "canonical LPS axial: columns towards the patient's left, rows posterior, "
                               "slices inferior to superior"}

    def window(self, hu: np.ndarray | torch.Tensor):
        """HU -> [0, 1] (clipped)."""
        level, width = self.hu_window
        low = level - width / 2
        if isinstance(hu, torch.Tensor):
            return ((hu - low) / width).clamp(0.0, 1.0)
        return np.clip((hu - low) / width, 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class SliceGeometry:
    """Rigid in-plane transform between model pixels (u = column, v = row) and canonical voxels (i, j).

    ``p_mm = centre_mm + R(angle) @ ((u - (W-1)/2) * pixel_mm, (v - (H-1)/2) * pixel_mm)``, where p_mm is
    the in-plane position in canonical mm (x = i * spacing_i, y = j * spacing_j) and R has columns
    (cos a, -sin a) for u and (sin a, cos a) for v: a rotation by ``angle_deg``, never a mirror.
    """

    centre_mm: tuple[float, float]
    angle_deg: float
    pixel_mm: float
    size: tuple[int, int]  # (H, W)
    spacing_ij: tuple[float, float]
    canonical_size_ij: tuple[int, int]

    def _rotation(self) -> np.ndarray:
        a = math.radians(self.angle_deg)
        return np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])

    def model_to_voxel(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = self.size
        offs = np.stack([(np.asarray(u, float) - (w - 1) / 2) * self.pixel_mm,
                         (np.asarray(v, float) - (h - 1) / 2) * self.pixel_mm])
        p = np.asarray(self.centre_mm)[:, None] + self._rotation() @ offs.reshape(2, -1)
        p = p.reshape((2,) + np.shape(u))
        return p[0] / self.spacing_ij[0], p[1] / self.spacing_ij[1]

    def voxel_to_model(self, i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = self.size
        p = np.stack([np.asarray(i, float) * self.spacing_ij[0], np.asarray(j, float) * self.spacing_ij[1]])
        offs = self._rotation().T @ (p.reshape(2, -1) - np.asarray(self.centre_mm)[:, None])
        offs = offs.reshape((2,) + np.shape(i))
        return offs[0] / self.pixel_mm + (w - 1) / 2, offs[1] / self.pixel_mm + (h - 1) / 2

    def to_dict(self) -> dict:
        return asdict(self)


def estimate_geometry(canonical: CTVolume, spec: InputSpec) -> SliceGeometry:
    """Centre, rotation and field of view of the model grid on the canonical slices (module docstring)."""
    threshold = -200.0 if spec.alignment == "brain_midline" else -500.0
    mask = _tissue_fraction(canonical.voxels_hu, threshold)  # (J, I): fraction of slices with tissue
    footprint = _largest_component(mask > 0.05)  # drops the table / head rest, which are separate
    sx, sy = float(canonical.spacing_mm[0]), float(canonical.spacing_mm[1])
    n_j, n_i = footprint.shape
    if footprint.sum() < 16:
        raise ACATInputError("no body found in the scan (almost no voxel above -200 HU); is this a CT in HU?")
    jj, ii = np.nonzero(footprint)
    weights = mask[jj, ii]
    pts = np.stack([ii * sx, jj * sy], axis=1)
    centre = np.average(pts, axis=0, weights=weights)
    angle = 0.0
    if spec.alignment == "brain_midline":
        cov = np.cov((pts - centre).T, aweights=weights)
        evals, evecs = np.linalg.eigh(cov)
        major = evecs[:, int(np.argmax(evals))]  # the head's antero-posterior axis
        if evals.max() > 1.05 * evals.min():
            if major[1] < 0:
                major = -major
            angle = float(np.degrees(np.arctan2(major[0], major[1])))
    a = math.radians(angle)
    rot = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
    local = (pts - centre) @ rot  # coordinates along the model's u and v axes
    half = float(np.abs(local).max()) * spec.fov_margin
    h, w = spec.size
    pixel_mm = 2 * half / (max(h, w) - 1)
    return SliceGeometry((float(centre[0]), float(centre[1])), angle, pixel_mm, (h, w), (sx, sy), (n_i, n_j))


#: slices handled at once where a whole-volume temporary would otherwise be made (bounds peak memory)
SLAB = 32


def _tissue_fraction(hu: np.ndarray, threshold: float) -> np.ndarray:
    """(K, J, I) -> (J, I) float64: the fraction of slices above ``threshold``, slab by slab (no (K, J, I)
    boolean temporary); equal to ``(hu > threshold).mean(axis=0)``, as the counts are exact integers."""
    count = np.zeros(hu.shape[1:], np.int64)
    for start in range(0, hu.shape[0], SLAB):
        count += np.count_nonzero(hu[start:start + SLAB] > threshold, axis=0)
    return count / hu.shape[0]


def _largest_component(footprint: np.ndarray) -> np.ndarray:
    """The largest 8-connected region of a 2D boolean mask (SimpleITK's labelling)."""
    import SimpleITK as sitk

    if not footprint.any():
        return footprint
    labels = sitk.RelabelComponent(sitk.ConnectedComponent(sitk.GetImageFromArray(footprint.astype(np.uint8)),
                                                           True))
    return sitk.GetArrayFromImage(labels) == 1


def chunk_indices(n_slices: int, s: int, coverage: str = "all") -> np.ndarray:
    """(C, S) canonical slice indices: interleaved chunks covering every slice, or one uniform sample."""
    if coverage == "sampled":
        return np.rint(np.linspace(0, n_slices - 1, s)).astype(np.int64)[None]
    if coverage != "all":
        raise ValueError(f"coverage must be 'all' or 'sampled', not {coverage!r}")
    step = max(1, math.ceil(n_slices / s))
    idx = np.arange(step)[:, None] + step * np.arange(s)[None, :]
    return np.minimum(idx, n_slices - 1)


@functools.lru_cache(maxsize=4)
def _model_grid(geometry: SliceGeometry) -> torch.Tensor:
    """(1, H, W, 2) grid_sample coordinates (x=i, y=j normalised, align_corners=True) of model pixels."""
    h, w = geometry.size
    v, u = np.meshgrid(np.arange(h, dtype=float), np.arange(w, dtype=float), indexing="ij")
    i, j = geometry.model_to_voxel(u, v)
    n_i, n_j = geometry.canonical_size_ij
    gx = 2 * i / max(n_i - 1, 1) - 1
    gy = 2 * j / max(n_j - 1, 1) - 1
    return torch.from_numpy(np.stack([gx, gy], axis=-1)[None].astype(np.float32))


@functools.lru_cache(maxsize=4)  # one explanation maps a dozen volumes back through the same grid
def _canonical_grid(geometry: SliceGeometry) -> torch.Tensor:
    """(1, J, I, 2) grid_sample coordinates of canonical voxels in model space."""
    n_i, n_j = geometry.canonical_size_ij
    h, w = geometry.size
    jj, ii = np.meshgrid(np.arange(n_j, dtype=float), np.arange(n_i, dtype=float), indexing="ij")
    u, v = geometry.voxel_to_model(ii, jj)
    gx = 2 * u / (w - 1) - 1
    gy = 2 * v / (h - 1) - 1
    return torch.from_numpy(np.stack([gx, gy], axis=-1)[None].astype(np.float32))


@dataclass
class PreparedScan:
    """A volume made ready for the models, with everything needed to map results back.

    Attributes:
        images: (C, S, 1, H, W) float32 in [0, 1]: C chunks ("scans") of S slices each.
        slice_index: (C, S) canonical slice index of each model slice.
    """

    source: CTVolume
    canonical: CTVolume
    reorientation: Reorientation
    geometry: SliceGeometry
    spec: InputSpec
    slice_index: np.ndarray
    images: torch.Tensor
    coverage: str = "all"
    notes: list = field(default_factory=list)

    def to_canonical_slices(self, maps: torch.Tensor) -> np.ndarray:
        """(C, S, H, W) per-model-slice maps -> (K, H, W) per canonical slice (repeats averaged;
        with ``coverage="sampled"``, linear interpolation along k)."""
        maps = maps.detach().float().cpu().numpy()
        k = self.canonical.voxels_hu.shape[0]
        h, w = maps.shape[-2:]
        if self.coverage == "sampled":
            idx = self.slice_index[0]
            uniq, first = np.unique(idx, return_index=True)
            sampled = maps[0][first]
            out = np.empty((k, h, w), np.float32)
            for kk in range(k):
                pos = np.interp(kk, uniq, np.arange(len(uniq)))
                lo = int(np.floor(pos))
                hi = min(lo + 1, len(uniq) - 1)
                f = pos - lo
                out[kk] = (1 - f) * sampled[lo] + f * sampled[hi]
            return out
        total = np.zeros((k, h, w), np.float64)
        count = np.zeros(k, np.int64)
        np.add.at(total, self.slice_index.reshape(-1), maps.reshape(-1, h, w))
        np.add.at(count, self.slice_index.reshape(-1), 1)
        return (total / np.maximum(count, 1)[:, None, None]).astype(np.float32)

    def to_model_grid(self, array: np.ndarray, mode: str = "nearest") -> torch.Tensor:
        """(K, J, I) on the *input* grid (a mask, a map) -> (C, S, H, W) float32 on the model's slices, the
        way the scan itself was sampled (``mode`` "nearest" for labels, "bilinear" for values)."""
        canonical = np.ascontiguousarray(self.reorientation.apply(np.asarray(array, dtype=np.float32)))
        needed = canonical[self.slice_index.reshape(-1)]
        sampled = F.grid_sample(torch.from_numpy(needed)[None], _model_grid(self.geometry), mode=mode,
                                padding_mode="zeros", align_corners=True)[0]
        return sampled.reshape(*self.slice_index.shape, *self.spec.size)

    def to_input_grid(self, maps: torch.Tensor) -> np.ndarray:
        """(C, S, H, W) model-space maps -> (K, J, I) float32 on the *input* volume's own grid (bilinear
        in-plane; zero outside the model's field of view). A new array the caller may change in place."""
        # The K slices go in as the channels of one image: every slice shares the in-plane grid, so
        # grid_sample reads one (J, I) grid instead of K expanded copies of it, and computes the
        # interpolation weights once per voxel (the same arithmetic per channel as per batch item).
        per_slice = torch.from_numpy(self.to_canonical_slices(maps))[None]  # (1, K, H, W)
        canonical = F.grid_sample(per_slice, _canonical_grid(self.geometry), mode="bilinear",
                                  padding_mode="zeros", align_corners=True)[0]  # (K, J, I)
        return np.ascontiguousarray(self.reorientation.undo(canonical.numpy()))


#: what a scan of the model's body part measures in its header's geometry (mm): the body's largest in-plane
#: extent (the Cranium head CT: 246, the CTChest scan: 377; wide enough for a child's head or a head-and-neck scan
#: with the shoulders) and the least coverage along the slices (162 / 340) that a whole-organ model can read.
#: Outside these the spacing in the header, or the scan itself, is suspect.
BODY_EXTENT_MM = {"brain": ("head", 100.0, 500.0, 60.0), "lungs": ("chest", 150.0, 800.0, 100.0)}


def extent_notes(canonical: CTVolume, geometry: SliceGeometry, spec: InputSpec) -> list[str]:
    """Warnings (one line each) when the scan's size is implausible for the model's body part: a wrong pixel
    or slice spacing in the header, or a partial scan the model would read as a whole one."""
    if spec.organ not in BODY_EXTENT_MM:
        return []
    part, low, high, min_z = BODY_EXTENT_MM[spec.organ]
    notes = []
    across = geometry.pixel_mm * (max(geometry.size) - 1) / spec.fov_margin
    if not low <= across <= high:
        notes.append(f"the scan's body measures {across:.0f} mm across by the header's pixel spacing, where a {part} "
                     f"measures {low:.0f}-{high:.0f} mm: check the pixel spacing and that this is a {part} CT; if not, "
                     "the result is meaningless")
    along = canonical.voxels_hu.shape[0] * float(canonical.spacing_mm[2])
    if along < min_z:
        notes.append(f"the scan covers only {along:.0f} mm along its slices; the model reads {spec.slices} slices "
                     f"spread over a whole {part} (at least {min_z:.0f} mm): a partial scan may be misread")
    return notes


def prepare(volume: CTVolume, spec: InputSpec, coverage: str = "all") -> PreparedScan:
    """Canonicalise, place the model grid, window and resample every needed slice (module docstring)."""
    canonical, reorientation = to_canonical(volume)
    geometry = estimate_geometry(canonical, spec)
    idx = chunk_indices(canonical.voxels_hu.shape[0], spec.slices, coverage)
    needed = np.unique(idx)
    # Slab by slab (bounded temporaries on a thin-slice scan); the slices of a slab are the channels of
    # one image, all sampled through the one in-plane grid (see `PreparedScan.to_input_grid`).
    grid = _model_grid(geometry)
    resampled = torch.empty((len(needed), 1, *spec.size), dtype=torch.float32)  # (N, 1, H, W)
    for start in range(0, len(needed), SLAB):
        windowed = torch.from_numpy(spec.window(canonical.voxels_hu[needed[start:start + SLAB]]))[None]
        resampled[start:start + SLAB, 0] = F.grid_sample(windowed, grid, mode="bilinear", padding_mode="zeros",
                                                         align_corners=True)[0]
    lookup = {int(k): n for n, k in enumerate(needed)}
    order = torch.as_tensor([lookup[int(k)] for k in idx.reshape(-1)])
    images = resampled[order].reshape(idx.shape[0], idx.shape[1], 1, *spec.size).contiguous()
    notes = extent_notes(canonical, geometry, spec)
    if abs(geometry.angle_deg) > 25:
        notes.append(f"the head appears rotated by {geometry.angle_deg:.0f} degrees in-plane; check the "
                     "midline alignment in the overview")
    return PreparedScan(volume, canonical, reorientation, geometry, spec, idx, images, coverage, notes)
