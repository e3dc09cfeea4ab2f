"""`CTVolume`: one CT scan in memory with exact patient geometry.

Conventions (the same as DICOM and ITK/SimpleITK, so no conversion happens on read or write):

* ``voxels_hu`` is a float32 array of Hounsfield units with axes ``(k, j, i)`` = (slice, row, column),
  the order of ``SimpleITK.GetArrayFromImage``.
* ``spacing_mm``, ``origin_mm`` and the columns of ``direction`` are given in index order ``(i, j, k)``.
* Patient coordinates are **LPS**: +x towards the patient's Left, +y Posterior, +z Superior.
  3D Slicer shows RAS; convert at the edge with `lps_to_ras` (negate x and y).
* The LPS position of voxel ``(i, j, k)`` is ``origin_mm + direction @ (spacing_mm * (i, j, k))``.

"Patient left" is therefore a fact of the geometry, never an array index: `to_canonical` reorders
and flips the array (no interpolation) so that i runs towards Left, j towards Posterior and k towards
Superior — the usual radiological axial layout — and `Reorientation.undo` maps any array computed on
the canonical grid (a saliency map, a counterfactual) back onto the input's own grid.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .errors import ACATInputError

#: Keys allowed in `CTVolume.metadata`. Anything that identifies a patient (name, ID, birth date,
#: accession number, dates) is deliberately absent; readers copy only these.
METADATA_KEYS = (
    "modality",
    "series_description",
    "series_instance_uid",
    "study_instance_uid",
    "slice_thickness_mm",
    "kvp",
    "manufacturer",
    "manufacturer_model",
    "convolution_kernel",
    "source_format",
    "series_selection",
)

_ORTHONORMAL_TOL = 1e-4


@dataclass
class CTVolume:
    """A CT volume in Hounsfield units with its patient geometry (LPS).

    Attributes:
        voxels_hu: (K, J, I) float32, Hounsfield units; axes are (slice, row, column).
        spacing_mm: (3,) voxel size along i, j, k in mm.
        origin_mm: (3,) LPS position of the centre of voxel (0, 0, 0) in mm.
        direction: (3, 3) columns are the LPS unit vectors of the i, j and k index axes.
        metadata: PHI-free description (keys in `METADATA_KEYS`).
        warnings: what the reader noticed and corrected (one sentence each).
    """

    voxels_hu: np.ndarray
    spacing_mm: np.ndarray
    origin_mm: np.ndarray
    direction: np.ndarray
    metadata: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.voxels_hu = np.asarray(self.voxels_hu)
        if self.voxels_hu.dtype != np.float32:
            self.voxels_hu = self.voxels_hu.astype(np.float32)
        if self.voxels_hu.ndim != 3:
            raise ACATInputError(f"a CT volume needs 3 dimensions, got an array of shape {self.voxels_hu.shape}")
        self.spacing_mm = np.asarray(self.spacing_mm, dtype=np.float64).reshape(3)
        self.origin_mm = np.asarray(self.origin_mm, dtype=np.float64).reshape(3)
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        if not np.all(np.isfinite(self.spacing_mm)) or np.any(self.spacing_mm <= 0):
            raise ACATInputError(f"voxel spacing must be positive, got {self.spacing_mm.tolist()} mm")
        if not np.all(np.isfinite(self.origin_mm)) or not np.all(np.isfinite(self.direction)):
            raise ACATInputError("the volume's origin or orientation contains NaN or infinity")
        if not np.allclose(self.direction.T @ self.direction, np.eye(3), atol=_ORTHONORMAL_TOL):
            raise ACATInputError(
                "the volume's axes are not perpendicular (a sheared grid); resample it to a regular grid first"
            )
        unknown = set(self.metadata) - set(METADATA_KEYS)
        if unknown:
            raise ValueError(f"metadata keys not allowed (possible PHI): {sorted(unknown)}")

    # -- geometry -------------------------------------------------------------------------------
    @property
    def size_ijk(self) -> tuple[int, int, int]:
        """Number of voxels along i (columns), j (rows) and k (slices)."""
        k, j, i = self.voxels_hu.shape
        return (i, j, k)

    def affine_lps(self) -> np.ndarray:
        """(4, 4) matrix mapping homogeneous (i, j, k, 1) to LPS millimetres."""
        a = np.eye(4)
        a[:3, :3] = self.direction * self.spacing_mm[None, :]
        a[:3, 3] = self.origin_mm
        return a

    def index_to_lps(self, ijk) -> np.ndarray:
        """(N, 3) or (3,) voxel indices (i, j, k) -> LPS positions in mm."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ (self.direction * self.spacing_mm[None, :]).T + self.origin_mm

    def lps_to_index(self, lps) -> np.ndarray:
        """(N, 3) or (3,) LPS positions in mm -> continuous voxel indices (i, j, k)."""
        lps = np.asarray(lps, dtype=np.float64)
        return (lps - self.origin_mm) @ self.direction / self.spacing_mm

    def orientation_code(self) -> str:
        """Three letters: the patient direction each index axis (i, j, k) points to, e.g. "LPS"."""
        return orientation_code(self.direction)

    # -- building from and handing to other libraries ---------------------------------------------
    @classmethod
    def from_array(cls, array, affine=None, *, spacing=None, origin=None, direction=None, axes: str = "kji",
                   coordinates: str = "LPS", metadata: Optional[dict] = None) -> "CTVolume":
        """A volume from a numpy array of HU and its geometry: a 4 x 4 ``affine``, or ``spacing`` (+ ``origin``,
        ``direction``; default 0 and the identity).

        Args:
            array: 3D HU values. ``axes="kji"`` (default): (slice, row, column), as here and in SimpleITK's
                ``GetArrayFromImage``; ``axes="ijk"``: (column, row, slice), as nibabel's ``get_fdata()``.
            affine: (4, 4) mapping the voxel index (i, j, k, 1) to millimetres - nibabel's ``img.affine``
                (with ``coordinates="RAS"``) or `affine_lps`. No shear: its columns must be perpendicular.
            spacing, origin, direction: in (i, j, k) order, as the attributes of this class.
            coordinates: "LPS" (DICOM, ITK, default) or "RAS" (NIfTI / nibabel, 3D Slicer): converted to LPS.
            metadata: PHI-free description (keys in `METADATA_KEYS`); default {"source_format": "array"}.

        Example::

            nii = nibabel.load("head.nii.gz")
            volume = CTVolume.from_array(nii.get_fdata(), nii.affine, axes="ijk", coordinates="RAS")
            volume = CTVolume.from_array(hu, spacing=(0.5, 0.5, 2.0))          # (K, J, I), at the origin
        """
        voxels = np.asarray(array)
        if voxels.ndim != 3:
            raise ACATInputError(f"a CT volume needs 3 dimensions, got an array of shape {voxels.shape}")
        if axes not in ("kji", "ijk"):
            raise ValueError(f"axes must be 'kji' or 'ijk', not {axes!r}")
        if coordinates not in ("LPS", "RAS"):
            raise ValueError(f"coordinates must be 'LPS' or 'RAS', not {coordinates!r}")
        if axes == "ijk":
            voxels = voxels.transpose(2, 1, 0)
        if affine is not None:
            if spacing is not None or origin is not None or direction is not None:
                raise ValueError("give either an affine or spacing/origin/direction, not both")
            affine = np.asarray(affine, dtype=np.float64)
            if affine.shape != (4, 4):
                raise ValueError(f"the affine must be 4 x 4, not {affine.shape}")
            linear = affine[:3, :3]
            spacing = np.linalg.norm(linear, axis=0)
            if np.any(spacing <= 0):
                raise ACATInputError(f"the affine has a zero-length axis (voxel size {spacing.tolist()} mm)")
            direction, origin = linear / spacing, affine[:3, 3]
        else:
            if spacing is None:
                raise ValueError("give the voxel spacing (or an affine)")
            origin = np.zeros(3) if origin is None else origin
            direction = np.eye(3) if direction is None else direction
        direction = np.array(direction, dtype=np.float64).reshape(3, 3)
        origin = np.array(origin, dtype=np.float64).reshape(3)
        if coordinates == "RAS":
            direction, origin = lps_to_ras(direction), lps_to_ras(origin[None])[0]
        return cls(np.ascontiguousarray(voxels, dtype=np.float32), spacing, origin, direction + 0.0,
                   dict(metadata) if metadata is not None else {"source_format": "array"})

    @classmethod
    def from_sitk(cls, image, metadata: Optional[dict] = None) -> "CTVolume":
        """A volume from a 3D scalar ``SimpleITK.Image`` of HU (geometry as is: ITK is LPS too)."""
        import SimpleITK as sitk

        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
            raise ACATInputError(f"a CT volume is a 3D image of one value per voxel, not {image.GetDimension()}D "
                                 f"with {image.GetNumberOfComponentsPerPixel()} components")
        return cls(sitk.GetArrayFromImage(image).astype(np.float32, copy=False), image.GetSpacing(),
                   image.GetOrigin(), np.reshape(image.GetDirection(), (3, 3)),
                   dict(metadata) if metadata is not None else {"source_format": "SimpleITK"})

    def to_sitk(self):
        """The volume as a float32 ``SimpleITK.Image`` with the same geometry (a copy of the voxels)."""
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(self.voxels_hu, isVector=False)
        image.SetSpacing([float(v) for v in self.spacing_mm])
        image.SetOrigin([float(v) for v in self.origin_mm])
        image.SetDirection([float(v) for v in self.direction.reshape(-1)])
        return image

    def with_voxels(self, voxels_hu: np.ndarray) -> "CTVolume":
        """A copy with other voxels on the same grid (same shape required)."""
        if voxels_hu.shape != self.voxels_hu.shape:
            raise ValueError(f"shape {voxels_hu.shape} does not match the volume's {self.voxels_hu.shape}")
        return dataclasses.replace(self, voxels_hu=voxels_hu, metadata=dict(self.metadata), warnings=list(self.warnings))


def orientation_code(direction: np.ndarray) -> str:
    """The dominant patient direction (L/R, P/A, S/I) of each column of an LPS direction matrix."""
    letters = (("R", "L"), ("A", "P"), ("I", "S"))
    code = []
    for col in np.asarray(direction).T:
        axis = int(np.argmax(np.abs(col)))
        code.append(letters[axis][1 if col[axis] > 0 else 0])
    return "".join(code)


def lps_to_ras(points_or_matrix: np.ndarray) -> np.ndarray:
    """Negate the first two rows (x, y): LPS <-> RAS, for points (N, 3) or direction matrices (3, 3)."""
    m = np.array(points_or_matrix, dtype=np.float64, copy=True)
    if m.shape == (3, 3):
        m[:2, :] *= -1
    else:
        m[..., :2] *= -1
    return m


@dataclass(frozen=True)
class Reorientation:
    """An axis permutation plus flips taking an array on the input grid to the canonical grid.

    ``source_axis[w]`` is the input index axis (0=i, 1=j, 2=k) that becomes canonical axis ``w``
    (0 -> towards Left, 1 -> Posterior, 2 -> Superior); ``flip[w]`` says whether it is reversed.
    """

    source_axis: tuple[int, int, int]
    flip: tuple[bool, bool, bool]

    @property
    def is_identity(self) -> bool:
        return self.source_axis == (0, 1, 2) and not any(self.flip)

    def apply(self, array: np.ndarray) -> np.ndarray:
        """(..., K, J, I) on the input grid -> (..., K', J', I') on the canonical grid (a view)."""
        nd = array.ndim
        flipped_axes = [nd - 1 - self.source_axis[w] for w in range(3) if self.flip[w]]
        out = np.flip(array, axis=flipped_axes) if flipped_axes else array
        lead = list(range(nd - 3))
        # canonical numpy axis (nd-3+n) holds world axis w = 2 - n, read from input numpy axis nd-1-source_axis[w]
        order = lead + [nd - 1 - self.source_axis[2 - n] for n in range(3)]
        return out.transpose(order)

    def undo(self, array: np.ndarray) -> np.ndarray:
        """Inverse of `apply`: (..., K', J', I') canonical -> (..., K, J, I) on the input grid."""
        nd = array.ndim
        lead = list(range(nd - 3))
        order = lead + [nd - 1 - self.source_axis[2 - n] for n in range(3)]
        inverse = np.argsort(order)
        out = array.transpose(inverse)
        flipped_axes = [nd - 1 - self.source_axis[w] for w in range(3) if self.flip[w]]
        return np.flip(out, axis=flipped_axes) if flipped_axes else out


def canonical_reorientation(direction: np.ndarray) -> Reorientation:
    """The permutation and flips that best align the index axes with L, P, S (no resampling)."""
    d = np.asarray(direction, dtype=np.float64)
    best = max(itertools.permutations(range(3)), key=lambda p: sum(abs(d[w, p[w]]) for w in range(3)))
    flip = tuple(bool(d[w, best[w]] < 0) for w in range(3))
    return Reorientation(tuple(int(a) for a in best), flip)


def to_canonical(volume: CTVolume) -> tuple[CTVolume, Reorientation]:
    """Reorder/flip the voxels so that i -> Left, j -> Posterior, k -> Superior (axial, "LPS").

    Exact: only whole-axis permutations and flips, so every voxel keeps its value and its position in
    the patient. A residual obliquity (e.g. a tilted head) stays in ``direction``.

    Returns the canonical volume and the `Reorientation` whose ``undo`` maps arrays back.
    """
    r = canonical_reorientation(volume.direction)
    if r.is_identity:
        return volume, r
    size = np.array(volume.size_ijk)
    start_index = np.zeros(3)
    for w in range(3):
        if r.flip[w]:
            start_index[r.source_axis[w]] = size[r.source_axis[w]] - 1
    origin = volume.index_to_lps(start_index)
    direction = np.stack(
        [volume.direction[:, r.source_axis[w]] * (-1.0 if r.flip[w] else 1.0) for w in range(3)], axis=1
    ) + 0.0  # no negative zeros in printed matrices
    spacing = np.array([volume.spacing_mm[r.source_axis[w]] for w in range(3)])
    voxels = np.ascontiguousarray(r.apply(volume.voxels_hu))
    out = CTVolume(voxels, spacing, origin, direction, dict(volume.metadata), list(volume.warnings))
    return out, r
