"""Reading result maps off the GUI thread, into display copies that attach to a node at once.

A map of a 512 x 512 x 300 CT is 315 MB of float32 in a gzip NRRD: reading it takes seconds, so it is read in
a worker thread (`readMap`: zlib releases the GIL; no MRML is touched there), turned into the copy the views
need, wrapped in a ``vtkImageData`` there too, and only attached to a node on the GUI thread (`attachImage`, a
pointer swap). The float map itself is never held whole: its geometry is checked from the header, then its
voxels are decompressed slab by slab (`resultSlabs`, a few slices at
a time, through ``zlib`` with a bounded output) straight into the display copy, so reading a map costs its
display copy plus one slab. A file that is not the plain attached raw/gzip NRRD the child writes is read
whole by ACATLogic's reader instead.

* saliency and attention maps, values in [0, 1]: uint8, 0-255 (a quarter of the memory), and the
  histogram of those 256 levels is counted once, so every percentile threshold afterwards is a table
  look-up (`percentileLevel`). A saliency map's levels are logarithmic (`quantise`: each level 1.8 % above
  the one below from 0.01 up, steps of 0.00018 below): linear levels were too coarse for a whitened map,
  which is peaky (its 95th percentile at 0.005 of its maximum on the demo): levels 0 and 1 held most of the
  brain, and the default "top 5 %" coloured 8.7 % of the voxels (5.03 % now; a map's decision gradient
  5.45 % then, 5.00 % now; a log level is as fine as a linear one up to 0.2, and 4.6 times coarser at the
  maximum). A percentile is the same on any increasing scale, and the heat colours spread over the orders
  of magnitude that the shown part of such a map spans. An attention mask (a sigmoid, 0.4 to 1 on the demo,
  not peaky) keeps linear levels, which are the finer ones there (its top 5 % coloured 6.2 % with linear
  levels, 11.4 % with log ones); `levelValue` turns either back into map values;
* a counterfactual, in HU: the input's own integer type when the input is stored as integers (a CT
  loaded from DICOM is int16), rounded to the HU; else float32;
* a difference map, counterfactual - input in HU: float32 (its changes are fractions of a HU), with its
  largest |value| for a symmetric window.

The files in the results folder stay exact (export copies them); these copies are for display.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import vtk
from vtk.util import numpy_support

from .volume_nodes import geometryFromIjkToRas, ijkToRasArray

SALIENCY, COUNTERFACTUAL, DIFFERENCE, ATTENTION = "saliency", "counterfactual", "difference", "attention"
LEVELS = 255  # a [0, 1] map is shown as 0..255; a saliency map logarithmically (`quantise`):
LOG_FLOOR = 1e-2  # level = LEVELS * log(1 + v / LOG_FLOOR) / log(1 + 1 / LOG_FLOOR)
_LOG_RANGE = float(np.log1p(1.0 / LOG_FLOOR))


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


SLAB = 4  # slices decoded at a time: 4 MB of float32 for 512 x 512 slices (a few such temporaries at once)
_NRRD_TYPES = {"float": "f4", "double": "f8", "short": "i2", "signed short": "i2", "short int": "i2", "int16": "i2",
               "ushort": "u2", "unsigned short": "u2", "uint16": "u2", "int": "i4", "signed int": "i4", "int32": "i4",
               "uint": "u4", "unsigned int": "u4", "uint32": "u4", "uchar": "u1", "unsigned char": "u1", "uint8": "u1",
               "signed char": "i1", "int8": "i1"}


def _sameGeometry(spacing, origin, direction, grid: Grid, tolerance_mm: float = 1e-3) -> bool:
    gridSpacing, gridOrigin, gridDirection = geometryFromIjkToRas(grid.ijkToRas)
    return (np.allclose(spacing, gridSpacing, atol=tolerance_mm) and np.allclose(origin, gridOrigin, atol=tolerance_mm)
            and np.allclose(direction, gridDirection, atol=1e-6))


def _vectors(text: str) -> list:
    return [[float(x) for x in v.split(",")] for v in re.findall(r"\(([^)]*)\)", text)]


def _plainNrrdLayout(path, shape: tuple):
    """(data offset, numpy dtype, gzip?, (spacing, origin, direction) in LPS) of an attached 3-D NRRD holding
    ``shape`` ((K, J, I)) voxels, raw or gzip, with its space geometry - what ``acat explain`` writes through
    ACATLogic; None for anything else (detached data, skips, other encodings, sizes or spaces)."""
    with open(path, "rb") as fh:
        head = fh.read(65536)
    end = head.find(b"\n\n")
    if not head.startswith(b"NRRD000") or end < 0:
        return None
    fields = {}
    for line in head[:end].decode("latin-1").splitlines()[1:]:
        if line.startswith("#") or ":=" in line:
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip().lower()] = value.strip()
    kind = _NRRD_TYPES.get(fields.get("type", "").lower())
    encoding = fields.get("encoding", "").lower()
    sizes = tuple(int(n) for n in fields.get("sizes", "").split() if n.isdigit())
    flip = {"left-posterior-superior": 1.0, "lps": 1.0, "right-anterior-superior": -1.0, "ras": -1.0}.get(
        fields.get("space", "").lower())
    try:
        columns = np.array(_vectors(fields.get("space directions", "")), float).T  # column n: axis n
        origin = np.array(_vectors(fields.get("space origin", ""))[0], float)
    except (ValueError, IndexError):
        return None
    if (kind is None or encoding not in ("raw", "gzip", "gz") or sizes != tuple(shape[::-1]) or flip is None
            or fields.get("dimension") != "3" or columns.shape != (3, 3) or origin.shape != (3,)
            or any(k in fields for k in ("data file", "datafile", "byte skip", "byteskip", "line skip", "lineskip"))):
        return None
    toLps = np.diag([flip, flip, 1.0])
    columns, origin = toLps @ columns, toLps @ origin
    spacing = np.linalg.norm(columns, axis=0)
    if np.any(spacing <= 0):
        return None
    order = ">" if fields.get("endian", "little").lower() == "big" else "<"
    return end + 2, np.dtype(order + kind), encoding != "raw", (spacing, origin, columns / spacing)


def resultSlabs(path, grid: Grid) -> Iterator[tuple]:
    """(k0, (n, J, I) float32) slabs of the map at ``path``, in order, after checking that it lies on ``grid``
    (ValueError otherwise, or when the file holds too few voxels). Only one slab is in memory at a time."""
    shape = tuple(grid.dims[::-1])
    layout = _plainNrrdLayout(path, shape)
    if layout is None:  # not the child's plain NRRD: ACATLogic's reader, whole (it checks the grid too)
        voxels = readResultVoxels(path, grid)
        for k in range(0, shape[0], SLAB):
            yield k, voxels[k:k + SLAB]
        return
    offset, dtype, compressed, geometry = layout
    if not _sameGeometry(*geometry, grid):
        raise ValueError(f"{Path(path).name} is not on the grid of the explained volume; "
                         "the results belong to another volume")
    sliceBytes = shape[1] * shape[2] * dtype.itemsize
    decoder = zlib.decompressobj(zlib.MAX_WBITS | 32) if compressed else None  # gzip or zlib header
    with open(path, "rb") as fh:
        fh.seek(offset)
        for k in range(0, shape[0], SLAB):
            want = sliceBytes * min(SLAB, shape[0] - k)
            data = _readBytes(fh, decoder, want)
            if len(data) != want:
                raise ValueError(f"{Path(path).name} is truncated: fewer voxels than its header says")
            yield k, np.frombuffer(data, dtype).reshape(-1, shape[1], shape[2]).astype(np.float32, copy=False)


def _readBytes(fh, decoder, want: int) -> bytearray:
    """The next ``want`` voxel bytes of the open file (through ``decoder`` when gzip), never more: a map of
    zeros compresses a hundredfold and more, so the output of each step is bounded, not its input."""
    if decoder is None:
        return bytearray(fh.read(want))
    out = bytearray()
    while len(out) < want and not decoder.eof:
        data = decoder.unconsumed_tail or fh.read(1 << 20)
        more = decoder.decompress(data, want - len(out))  # b"" at the file's end: what zlib still holds
        if not data and not more:
            break
        out += more
    return out


def logarithmic(kind: str) -> bool:
    """Whether a map of this kind is shown on logarithmic levels (saliency) or linear ones (attention)."""
    return kind == SALIENCY


def quantise(voxels: np.ndarray, logarithmic: bool = True) -> np.ndarray:
    """[0, 1] float -> uint8 0..255 on the logarithmic scale above, or linear (rounded; values outside [0, 1]
    clipped; 0 stays 0, 1 is 255), slab by slab (no whole float temporary). Increasing: the order of voxels,
    so every percentile and the maximum, is kept up to ties within a level."""
    out = np.empty(voxels.shape, np.uint8)
    for k in range(0, voxels.shape[0], 16):
        slab = np.clip(voxels[k:k + 16], 0.0, 1.0, dtype=np.float32)
        if logarithmic:
            slab *= 1.0 / LOG_FLOOR
            np.log1p(slab, out=slab)
            slab *= LEVELS / _LOG_RANGE
        else:
            slab *= LEVELS
        np.rint(slab, out=slab)
        out[k:k + 16] = slab
    return out


def levelValue(levels, logarithmic: bool = True) -> np.ndarray:
    """The map value a level stands for (the inverse of `quantise`, before rounding)."""
    levels = np.asarray(levels, dtype=np.float64)
    if not logarithmic:
        return levels / LEVELS
    return LOG_FLOOR * np.expm1(levels * (_LOG_RANGE / LEVELS))


def levelCounts(levels: np.ndarray) -> np.ndarray:
    """Counts of the 256 levels of a uint8 map, slab by slab: ``np.bincount`` widens its input to int64, which
    on a whole 512 x 512 x 300 map is 630 MB - four times the CT - for a moment."""
    levels = np.atleast_1d(np.asarray(levels, dtype=np.uint8))
    counts = np.zeros(LEVELS + 1, np.int64)
    for k in range(0, levels.shape[0], SLAB):
        counts += np.bincount(levels[k:k + SLAB].reshape(-1), minlength=LEVELS + 1)
    return counts


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
    if kind not in (SALIENCY, ATTENTION, COUNTERFACTUAL, DIFFERENCE):
        raise ValueError(f"unknown kind of result map {kind!r}")
    if kind == DIFFERENCE and inputVoxels is None:
        raise ValueError("a difference map needs the input's voxels")
    shape = tuple(grid.dims[::-1])
    dtype = {SALIENCY: np.uint8, ATTENTION: np.uint8, DIFFERENCE: np.float32}.get(kind)
    if dtype is None:  # a counterfactual: the input's own type when it is integer, else float32
        dtype = grid.dtype if np.dtype(grid.dtype).kind in "iu" else np.float32
    shown = np.empty(shape, dtype)
    for k, slab in resultSlabs(mapPath(outDir, kind, key), grid):
        n = slab.shape[0]
        if kind in (SALIENCY, ATTENTION):
            shown[k:k + n] = quantise(slab, logarithmic(kind))
        elif kind == COUNTERFACTUAL:
            shown[k:k + n] = toInputType(slab, dtype)
        else:
            shown[k:k + n] = slab - inputVoxels[k:k + n]
    if kind in (SALIENCY, ATTENTION):
        histogram = levelCounts(shown)
        return LoadedMap(kind, key, imageFromArray(shown), shown, histogram=histogram)
    if kind == DIFFERENCE:
        extent = float(np.abs(shown).max()) if shown.size else 0.0
        return LoadedMap(kind, key, imageFromArray(shown), shown, extent=extent)
    return LoadedMap(kind, key, imageFromArray(shown), shown)
