"""How well the saliency map points at a known lesion: hit, IoU and Dice (`ACATLogic.metrics`).

* hit (paper Sec. 4.4): the saliency maximum lies inside the lesion;
* IoU / Dice (Appendix H): the n most salient voxels against the lesion, n = the lesion's voxel count.

The lesion comes from a labelmap volume on the input's grid (any nonzero voxel) or from a segment of a
segmentation node (exported onto the input's grid by Slicer's segmentations logic).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

import slicer

from .hierarchy import removeNodeAndOwned
from .volume_nodes import sameGrid


def lesionMaskArray(maskNode, referenceNode, segmentId: Optional[str] = None) -> np.ndarray:
    """(K, J, I) bool lesion mask on ``referenceNode``'s grid, from a labelmap/scalar volume or a segmentation.

    ``segmentId``: for a segmentation, the segment to use (default: every segment together)."""
    if maskNode is None:
        raise ValueError("select a lesion segmentation or labelmap")
    if maskNode.IsA("vtkMRMLSegmentationNode"):
        return _segmentMask(maskNode, referenceNode, segmentId)
    if not maskNode.IsA("vtkMRMLScalarVolumeNode"):
        raise ValueError(f"'{maskNode.GetName()}' is neither a segmentation nor a labelmap volume")
    if not sameGrid(maskNode, referenceNode):
        raise ValueError(f"the labelmap '{maskNode.GetName()}' is not on the grid of '{referenceNode.GetName()}'; "
                         "use a segmentation node or resample the labelmap onto the CT first")
    return np.asarray(slicer.util.arrayFromVolume(maskNode)) != 0


def _segmentMask(segmentationNode, referenceNode, segmentId: Optional[str]) -> np.ndarray:
    import vtk

    scene = segmentationNode.GetScene()
    ids = vtk.vtkStringArray()
    if segmentId:
        ids.InsertNextValue(segmentId)
    else:
        segmentation = segmentationNode.GetSegmentation()
        for n in range(segmentation.GetNumberOfSegments()):
            ids.InsertNextValue(segmentation.GetNthSegmentID(n))
    if ids.GetNumberOfValues() == 0:
        raise ValueError(f"the segmentation '{segmentationNode.GetName()}' has no segment")
    tablesBefore = {node.GetID() for node in _colorTables(scene)}
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "ACAT lesion mask (temporary)")
    try:
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentationNode, ids, labelmap, referenceNode)
        if not ok or labelmap.GetImageData() is None:
            raise ValueError(f"cannot put the segmentation '{segmentationNode.GetName()}' on the CT's grid")
        return np.asarray(slicer.util.arrayFromVolume(labelmap)) != 0
    finally:
        # the export also made a display node and a colour table for the labelmap: remove all three
        removeNodeAndOwned(scene, labelmap)
        for node in _colorTables(scene):
            if node.GetID() not in tablesBefore:
                scene.RemoveNode(node)


def _colorTables(scene) -> list:
    return [scene.GetNthNodeByClass(n, "vtkMRMLColorTableNode")
            for n in range(scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode"))]


def localisationScore(saliencyNode, maskNode, referenceNode=None, segmentId: Optional[str] = None,
                      saliencyVoxels: Optional[np.ndarray] = None) -> dict:
    """{"hit": bool or None, "iou": float, "dice": float, "lesionVoxels": int}; nan / None without a lesion.

    ``saliencyVoxels``: the exact map (K, J, I), e.g. read from the results folder; default: the node's
    voxels (a display copy is quantised to 256 levels, which can tie the most salient voxels)."""
    from ACATLogic.metrics import iou_dice, saliency_hit  # see the package docstring

    if saliencyVoxels is None:
        saliencyVoxels = slicer.util.arrayFromVolume(saliencyNode)
    saliency = np.asarray(saliencyVoxels, dtype=np.float32)
    mask = lesionMaskArray(maskNode, referenceNode or saliencyNode, segmentId)
    voxels = int(mask.sum())
    if voxels == 0:
        return {"hit": None, "iou": math.nan, "dice": math.nan, "lesionVoxels": 0}
    iou, dice = iou_dice(saliency, mask)
    # the lesion mask is the only "territory" here: the hit asks whether the map's maximum over the whole
    # volume falls in the lesion (a maximum taken within the mask would always be a hit)
    hit = saliency_hit(saliency, mask.astype(np.int32), [1], within_territories=False)
    return {"hit": bool(hit), "iou": float(iou),
            "dice": float(dice), "lesionVoxels": voxels}
