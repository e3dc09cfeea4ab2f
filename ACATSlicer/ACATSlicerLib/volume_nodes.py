"""vtkMRMLScalarVolumeNode <-> `ACATLogic.CTVolume`, with the patient geometry converted exactly.

Slicer keeps a volume's geometry as an IJK-to-RAS matrix; `CTVolume` keeps spacing, origin and a
direction matrix in LPS (DICOM/ITK). RAS and LPS differ by the sign of x and y, so

    IJKToRAS[:3, :3] = diag(-1, -1, 1) @ direction_lps @ diag(spacing_mm)
    IJKToRAS[:3, 3]  = diag(-1, -1, 1) @ origin_lps_mm

and the voxel array is the same (K, J, I) array in both. Patient left therefore stays patient left:
nothing is inferred from array order. A parent transform is not applied: result nodes are put under
the input's transform instead, so they stay aligned with it.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import vtk

import slicer

RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0])


def ijkToRasFromGeometry(spacing_mm, origin_lps_mm, direction_lps) -> np.ndarray:
    """(4, 4) IJK-to-RAS matrix from LPS geometry (spacing (3,) mm, origin (3,) mm, direction (3, 3))."""
    m = np.eye(4)
    m[:3, :3] = RAS_FROM_LPS @ np.asarray(direction_lps, float) @ np.diag(np.asarray(spacing_mm, float))
    m[:3, 3] = RAS_FROM_LPS @ np.asarray(origin_lps_mm, float)
    return m


def geometryFromIjkToRas(ijkToRas: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(spacing_mm (3,), origin_lps_mm (3,), direction_lps (3, 3)) from a (4, 4) IJK-to-RAS matrix."""
    m = np.asarray(ijkToRas, float)
    columns = RAS_FROM_LPS @ m[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)
    if np.any(spacing <= 0):
        raise ValueError("the volume has a zero voxel size")
    return spacing, RAS_FROM_LPS @ m[:3, 3], columns / spacing


def ijkToRasArray(volumeNode) -> np.ndarray:
    """The node's (4, 4) IJK-to-RAS matrix as numpy."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def checkCTVolumeNode(volumeNode) -> None:
    """Raise ValueError, with what to do, unless ``volumeNode`` is a 3D single-component scalar volume."""
    if volumeNode is None:
        raise ValueError("select an input CT volume first")
    if volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
        raise ValueError(f"'{volumeNode.GetName()}' is a labelmap (segmentation), not a CT image; "
                         "select the CT volume")
    if not volumeNode.IsA("vtkMRMLScalarVolumeNode") or volumeNode.IsA("vtkMRMLVectorVolumeNode"):
        raise ValueError(f"'{volumeNode.GetName()}' is not a scalar volume; select a CT volume")
    image = volumeNode.GetImageData()
    if image is None:
        raise ValueError(f"'{volumeNode.GetName()}' has no voxels loaded")
    if image.GetNumberOfScalarComponents() != 1:
        raise ValueError(f"'{volumeNode.GetName()}' has {image.GetNumberOfScalarComponents()} components "
                         "(a colour or vector image), not a CT volume")
    dims = image.GetDimensions()
    if min(dims) < 2:
        raise ValueError(f"'{volumeNode.GetName()}' is a 2D image ({dims[0]} x {dims[1]} x {dims[2]}); "
                         "ACAT needs a 3D CT volume with several slices")


def ctVolumeFromNode(volumeNode, modality: Optional[str] = "CT"):
    """The node's voxels (copied, float32; HU for a CT) and geometry as an `ACATLogic.CTVolume`.

    ``modality``: recorded in the volume's metadata (None for derived maps such as a saliency).

    Raises ValueError for a labelmap, a 2D image, a colour image or an empty node.
    """
    from ACATLogic.volume import CTVolume  # see the package docstring: ACATLogic may still be missing

    checkCTVolumeNode(volumeNode)
    voxels = np.array(slicer.util.arrayFromVolume(volumeNode), dtype=np.float32, copy=True)
    spacing, origin, direction = geometryFromIjkToRas(ijkToRasArray(volumeNode))
    return CTVolume(voxels, spacing, origin, direction, {"modality": modality} if modality else {})


def setGeometryFromVolumeNode(targetNode, referenceNode) -> None:
    """Give ``targetNode`` exactly the IJK-to-RAS matrix and parent transform of ``referenceNode``."""
    matrix = vtk.vtkMatrix4x4()
    referenceNode.GetIJKToRASMatrix(matrix)
    targetNode.SetIJKToRASMatrix(matrix)
    targetNode.SetAndObserveTransformNodeID(referenceNode.GetTransformNodeID())


def addVolumeNode(scene, voxels: np.ndarray, name: str, referenceNode=None, ijkToRas=None,
                  nodeClass: str = "vtkMRMLScalarVolumeNode"):
    """A new volume node holding ``voxels`` (K, J, I) on the grid of ``referenceNode`` (or ``ijkToRas``)."""
    node = scene.AddNewNodeByClass(nodeClass, name)
    updateVolumeNode(node, voxels, referenceNode, ijkToRas)
    node.CreateDefaultDisplayNodes()
    return node


def updateVolumeNode(node, voxels: np.ndarray, referenceNode=None, ijkToRas=None) -> None:
    """Replace the voxels (deep copy) and set the geometry of an existing node."""
    if referenceNode is not None:
        setGeometryFromVolumeNode(node, referenceNode)
    elif ijkToRas is not None:
        node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(np.asarray(ijkToRas, float)))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(voxels))


def addVolumeNodeFromCTVolume(scene, volume, name: str, nodeClass: str = "vtkMRMLScalarVolumeNode"):
    """A new node from an `ACATLogic.CTVolume` (its LPS geometry converted to RAS)."""
    ijkToRas = ijkToRasFromGeometry(volume.spacing_mm, volume.origin_mm, volume.direction)
    return addVolumeNode(scene, volume.voxels_hu, name, ijkToRas=ijkToRas, nodeClass=nodeClass)


def sameGrid(nodeA, nodeB, tolerance_mm: float = 1e-3) -> bool:
    """True when both nodes have the same voxel counts and IJK-to-RAS matrix (within tolerance)."""
    a, b = nodeA.GetImageData(), nodeB.GetImageData()
    if a is None or b is None or a.GetDimensions() != b.GetDimensions():
        return False
    return bool(np.allclose(ijkToRasArray(nodeA), ijkToRasArray(nodeB), atol=tolerance_mm))


def arrayView(volumeNode) -> np.ndarray:
    """The node's voxels as a (K, J, I) numpy view (no copy; it keeps the VTK array alive)."""
    return slicer.util.arrayFromVolume(volumeNode)
