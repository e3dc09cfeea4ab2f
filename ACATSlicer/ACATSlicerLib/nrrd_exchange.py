"""The NRRD files exchanged with the background ``acat explain`` process.

Written through `ACATLogic` (SimpleITK, float32 HU, LPS geometry to 17 digits, temporary name then
rename), so the child reads exactly the voxels and geometry that the scene holds. No patient data
goes into the file: only voxels, geometry and the modality.
"""

from __future__ import annotations

from pathlib import Path

from .volume_nodes import ctVolumeFromNode, geometryFromIjkToRas, ijkToRasArray


def writeInputNrrd(volumeNode, path) -> Path:
    """Write the node as ``path`` (.nrrd), atomically. Raises ValueError for a non-CT node."""
    from ACATLogic.io.itk_files import write_itk_file

    return write_itk_file(ctVolumeFromNode(volumeNode), Path(path), overwrite=True)


def readResultArray(path, referenceNode, tolerance_mm: float = 1e-3):
    """(K, J, I) float32 voxels of a result NRRD; ValueError unless it lies on ``referenceNode``'s grid."""
    import numpy as np

    from ACATLogic.io.itk_files import read_itk_file

    volume = read_itk_file(Path(path))
    spacing, origin, direction = geometryFromIjkToRas(ijkToRasArray(referenceNode))
    dims = referenceNode.GetImageData().GetDimensions()
    same = (tuple(volume.size_ijk) == tuple(dims) and np.allclose(volume.spacing_mm, spacing, atol=tolerance_mm)
            and np.allclose(volume.origin_mm, origin, atol=tolerance_mm)
            and np.allclose(volume.direction, direction, atol=1e-6))
    if not same:
        raise ValueError(f"{Path(path).name} is not on the grid of '{referenceNode.GetName()}'; "
                         "the results belong to another volume")
    return volume.voxels_hu
