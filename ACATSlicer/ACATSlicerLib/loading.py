"""Reading result maps off the GUI thread, into display copies that attach to a node at once.

A map of a 512 x 512 x 300 CT is 315 MB of float32 in a gzip NRRD: reading it takes seconds, so it is read in
a worker thread (`readMap`: SimpleITK and zlib release the GIL; no MRML is touched there), turned into the
copy the views need, wrapped in a ``vtkImageData`` there too, and only attached to a node on the GUI thread
(`attachImage`, a pointer swap):

* saliency and attention maps, values in [0, 1]: uint8, 0-255 (a quarter of the memory); the histogram
  of those 256 levels is counted once, so every percentile threshold afterwards is a table look-up
  (`percentileLevel`);
* a counterfactual, in HU: the input's own integer type when the input is stored as integers (a CT
  loaded from DICOM is int16), rounded to the HU; else float32;
* a difference map, counterfactual - input in HU: float32 (its changes are fractions of a HU), with its
  largest |value| for a symmetric window.

The files in the results folder stay exact (export copies them); these copies are for display.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import vtk
from vtk.util import numpy_support

from .volume_nodes import geometryFromIjkToRas, ijkToRasArray

SALIENCY, COUNTERFACTUAL, DIFFERENCE, ATTENTION = "saliency", "counterfactual", "difference", "attention"
LEVELS = 255  # a [0, 1] map is shown as 0..255


@dataclass(frozen=True)
class Grid:
    """The input's voxel grid, read on the GUI thread and handed to the worker (which touches no node)."""

    dims: tuple  # (I, J, K)
    ijkToRas: np.ndarray  # (4, 4)
    dtype: np.dtype  # the input's voxel type

    @classmethod
    def fromNode(cls, volumeNode) -> "Grid":
        from .volume_nodes import arrayView

        return cls(tuple(volumeNode.GetImageData().GetDimensions()), ijkToRasArray(volumeNode),
                   arrayView(volumeNode).dtype)


@dataclass
class LoadedMap:
    """One result map, ready to attach: ``image`` (vtkImageData holding ``voxels``), and for display
    ``histogram`` (counts of the 256 levels of a [0, 1] map) or ``extent`` (largest |difference|)."""

    kind: str
    key: str
    image: object
    voxels: np.ndarray
    histogram: Optional[np.ndarray] = None
    extent: float = 0.0


def mapPath(outDir, kind: str, key: str = "") -> Path:
    """The file a map comes from (a difference map from its counterfactual)."""
    if kind == SALIENCY:
        return Path(outDir) / "saliency.nrrd"
    stem = COUNTERFACTUAL if kind == DIFFERENCE else kind
    return Path(outDir) / f"{stem}_{key}.nrrd"


def readResultVoxels(path, grid: Grid, tolerance_mm: float = 1e-3) -> np.ndarray:
    """(K, J, I) float32 voxels of a result NRRD; ValueError unless it lies on ``grid``."""
    from ACATLogic.io.itk_files import read_itk_file

    volume = read_itk_file(Path(path))
    spacing, origin, direction = geometryFromIjkToRas(grid.ijkToRas)
    same = (tuple(volume.size_ijk) == tuple(grid.dims) and np.allclose(volume.spacing_mm, spacing, atol=tolerance_mm)
            and np.allclose(volume.origin_mm, origin, atol=tolerance_mm)
            and np.allclose(volume.direction, direction, atol=1e-6))
    if not same:
        raise ValueError(f"{Path(path).name} is not on the grid of the explained volume; "
                         "the results belong to another volume")
    return volume.voxels_hu


def quantise(voxels: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint8 0..255 (rounded; values outside clipped), slab by slab (no float temporary)."""
    out = np.empty(voxels.shape, np.uint8)
    for k in range(0, voxels.shape[0], 16):
        slab = np.clip(voxels[k:k + 16], 0.0, 1.0) * LEVELS
        np.rint(slab, out=slab)
        out[k:k + 16] = slab
    return out


def toInputType(voxels: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """HU voxels in the input's integer type (rounded, clipped to it), or float32 for a float input."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "iu":
        return np.ascontiguousarray(voxels, dtype=np.float32)
    info = np.iinfo(dtype)
    out = np.empty(voxels.shape, dtype)
    for k in range(0, voxels.shape[0], 16):
        out[k:k + 16] = np.clip(np.rint(voxels[k:k + 16]), info.min, info.max)
    return out


def percentileLevel(histogram: np.ndarray, percentile: float) -> int:
    """The level (0..255) of the ``percentile``-th percentile of a quantised map from its level counts:
    the sorted voxel at index floor(p/100 * (N - 1)), which is ``np.percentile(..., method="lower")``."""
    counts = np.cumsum(np.asarray(histogram, dtype=np.int64))
    total = int(counts[-1])
    if total == 0:
        return 0
    index = int(np.floor(min(max(float(percentile), 0.0), 100.0) / 100.0 * (total - 1)))
    return int(np.searchsorted(counts, index, side="right"))


def imageFromArray(voxels: np.ndarray):
    """A vtkImageData over ``voxels`` ((K, J, I), C order) without copying: the VTK array keeps a reference
    to the numpy array. Origin 0, spacing 1: a volume node's geometry lives in its IJK-to-RAS matrix."""
    voxels = np.ascontiguousarray(voxels)
    image = vtk.vtkImageData()
    image.SetDimensions(voxels.shape[2], voxels.shape[1], voxels.shape[0])
    scalars = numpy_support.numpy_to_vtk(voxels.reshape(-1), deep=False)
    scalars.SetName("ImageScalars")
    image.GetPointData().SetScalars(scalars)
    return image


def readMap(outDir, kind: str, key: str, grid: Grid, inputVoxels: Optional[np.ndarray] = None) -> LoadedMap:
    """Read one map for display (a worker thread may call this: it touches no MRML node). ``inputVoxels``:
    the input's (K, J, I) voxels, needed for a difference map."""
    voxels = readResultVoxels(mapPath(outDir, kind, key), grid)
    if kind in (SALIENCY, ATTENTION):
        shown = quantise(voxels)
        del voxels
        histogram = np.bincount(shown.reshape(-1), minlength=LEVELS + 1)
        return LoadedMap(kind, key, imageFromArray(shown), shown, histogram=histogram)
    if kind == COUNTERFACTUAL:
        shown = toInputType(voxels, grid.dtype)
        del voxels
        return LoadedMap(kind, key, imageFromArray(shown), shown)
    if kind == DIFFERENCE:
        if inputVoxels is None:
            raise ValueError("a difference map needs the input's voxels")
        for k in range(0, voxels.shape[0], 16):
            voxels[k:k + 16] -= inputVoxels[k:k + 16]
        extent = float(np.abs(voxels).max()) if voxels.size else 0.0
        return LoadedMap(kind, key, imageFromArray(voxels), voxels, extent=extent)
    raise ValueError(f"unknown kind of result map {kind!r}")
