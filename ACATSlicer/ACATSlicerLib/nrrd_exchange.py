"""The NRRD files exchanged with the background ``acat explain`` process: raw (uncompressed), written fast.

The input goes to the child as a raw NRRD of the node's own voxel type (int16 for a CT loaded from DICOM):
a header and the voxel bytes written straight from the node's array, no conversion, no compression - a
512 x 512 x 300 CT is 157 MB written in a fraction of a second, by a worker thread (`controller`), while a
gzip NRRD of it took seconds on the GUI thread. The geometry is written in LPS with 17 significant digits,
so the child (SimpleITK, through ACATLogic's reader) reads exactly the voxels and geometry the scene holds.
No patient data goes into the file: voxels and geometry only.

The results come back from the child's own files (`loading`).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

#: numpy voxel type -> NRRD type name
NRRD_TYPES = {np.dtype(t): name for t, name in (
    ("int8", "int8"), ("uint8", "uint8"), ("int16", "short"), ("uint16", "ushort"), ("int32", "int"),
    ("uint32", "uint"), ("float32", "float"), ("float64", "double"))}
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def writeNrrd(voxels: np.ndarray, ijkToRas: np.ndarray, path) -> Path:
    """Write (K, J, I) ``voxels`` as a raw NRRD in LPS space, atomically (temporary name, then rename).

    Any type of `NRRD_TYPES`; the bytes depend only on the voxels and the geometry (no dates, no
    compression), so the checksum of a regenerated file is stable. The array is written as it is, without
    a copy when it is contiguous."""
    voxels = np.asarray(voxels)
    kind = NRRD_TYPES.get(voxels.dtype.newbyteorder("="))
    if kind is None or voxels.ndim != 3:
        raise ValueError(f"writeNrrd takes a 3-D array of {', '.join(sorted(set(NRRD_TYPES.values())))} voxels, "
                         f"not {voxels.ndim}-D {voxels.dtype}")
    lps = _RAS_TO_LPS @ np.asarray(ijkToRas, dtype=float)
    vector = lambda v: "(" + ",".join(repr(float(x)) for x in v) + ")"  # noqa: E731
    k, j, i = voxels.shape
    little = voxels.dtype.byteorder == "<" or (voxels.dtype.byteorder in "=|" and sys.byteorder == "little")
    header = ("NRRD0004\n"
              f"type: {kind}\ndimension: 3\nspace: left-posterior-superior\nsizes: {i} {j} {k}\n"
              f"space directions: {' '.join(vector(lps[:3, axis]) for axis in range(3))}\n"
              f"kinds: domain domain domain\nendian: {'little' if little else 'big'}\nencoding: raw\n"
              f"space origin: {vector(lps[:3, 3])}\n\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(header.encode("ascii"))
            np.ascontiguousarray(voxels).tofile(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def writeInputNrrd(voxels: np.ndarray, ijkToRas: np.ndarray, path) -> Path:
    """The child's input: ``voxels`` (a view of the input node's array, (K, J, I)) and its IJK-to-RAS
    matrix, as a raw NRRD. Touches no MRML node, so a worker thread may call it."""
    return writeNrrd(voxels, ijkToRas, path)
