"""Showing the saliency map as a heat overlay on the CT in every slice view.

The saliency volume is the foreground layer over the input (background) in each slice view, with a
heat colour table and an opacity. A percentile threshold hides the weak part of the map: with the
default 95, only the top 5% of voxels are coloured; the rest is transparent (the display node's
lower threshold), so the CT shows through unchanged.
"""

from __future__ import annotations

import numpy as np

import slicer

HEAT_COLORS = ("PET-Heat", "Warm1", "Iron")  # the first one present in the scene is used
DIVERGING_COLORS = ("DivergingBlueRed", "fMRI")  # for difference maps: negative blue, positive red
DEFAULT_PERCENTILE = 95.0
DEFAULT_OPACITY = 0.5


def colorNodeId(scene, names) -> str:
    """ID of the first colour node with one of ``names``; RuntimeError if none is in the scene."""
    for name in names:
        node = scene.GetFirstNode(name, "vtkMRMLColorNode")
        if node is not None:
            return node.GetID()
    raise RuntimeError(f"none of the colour tables {list(names)} is loaded; is the Colors module present?")


def percentileThreshold(voxels: np.ndarray, percentile: float) -> float:
    """The value below which ``percentile`` % of the voxels lie (linear interpolation)."""
    return float(np.percentile(np.asarray(voxels), min(max(float(percentile), 0.0), 100.0)))


def applySaliencyThreshold(saliencyNode, percentile: float = DEFAULT_PERCENTILE) -> float:
    """Colour only the voxels at or above the ``percentile``-th percentile; returns that value.

    The window reaches half the shown range below the threshold and above the maximum: with a heat
    table (black -> orange -> yellow -> white) the weakest shown voxels are orange, never black (which
    would hide the CT under an opaque dark patch), and the strongest pale yellow, whatever the
    threshold."""
    voxels = slicer.util.arrayFromVolume(saliencyNode)
    threshold = percentileThreshold(voxels, percentile)
    top = float(voxels.max())
    if top <= threshold:  # a flat map (or the 100th percentile): keep a visible, non-empty range
        top = threshold + 1e-6
    margin = 0.5 * (top - threshold)
    display = saliencyNode.GetDisplayNode()
    with slicer.util.NodeModify(display):
        display.SetAutoWindowLevel(False)
        display.SetWindowLevelMinMax(threshold - margin, top + margin)
        display.SetAutoThreshold(False)
        display.SetApplyThreshold(True)
        display.SetLowerThreshold(threshold)
        display.SetUpperThreshold(top + 1.0)
    return threshold


def styleSaliencyNode(scene, saliencyNode, percentile: float = DEFAULT_PERCENTILE) -> float:
    """Heat colours + percentile threshold on the saliency node's display node; returns the threshold."""
    if saliencyNode.GetDisplayNode() is None:
        saliencyNode.CreateDefaultDisplayNodes()
    saliencyNode.GetDisplayNode().SetAndObserveColorNodeID(colorNodeId(scene, HEAT_COLORS))
    return applySaliencyThreshold(saliencyNode, percentile)


def styleDifferenceNode(scene, differenceNode) -> None:
    """Symmetric window around 0 HU with a diverging colour table (blue: HU removed, red: added)."""
    voxels = slicer.util.arrayFromVolume(differenceNode)
    extent = max(float(np.abs(voxels).max()), 1e-3)
    display = differenceNode.GetDisplayNode()
    with slicer.util.NodeModify(display):
        display.SetAndObserveColorNodeID(colorNodeId(scene, DIVERGING_COLORS))
        display.SetAutoWindowLevel(False)
        display.SetWindowLevelMinMax(-extent, extent)


def copyWindowLevel(sourceNode, targetNode) -> None:
    """Show ``targetNode`` (a counterfactual, in HU) with the input's window/level and colours."""
    source, target = sourceNode.GetDisplayNode(), targetNode.GetDisplayNode()
    if source is None or target is None:
        return
    with slicer.util.NodeModify(target):
        target.SetAndObserveColorNodeID(source.GetColorNodeID())
        target.SetAutoWindowLevel(False)
        target.SetWindowLevelMinMax(source.GetWindowLevelMin(), source.GetWindowLevelMax())


def sliceCompositeNodes(scene) -> list:
    return [scene.GetNthNodeByClass(n, "vtkMRMLSliceCompositeNode")
            for n in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))]


def showOverlay(scene, backgroundNode, foregroundNode, opacity: float = DEFAULT_OPACITY) -> int:
    """Background + foreground + opacity in every slice view; returns how many views were set."""
    composites = sliceCompositeNodes(scene)
    for composite in composites:
        with slicer.util.NodeModify(composite):
            composite.SetBackgroundVolumeID(backgroundNode.GetID() if backgroundNode else None)
            composite.SetForegroundVolumeID(foregroundNode.GetID() if foregroundNode else None)
            composite.SetForegroundOpacity(min(max(float(opacity), 0.0), 1.0))
    return len(composites)


def setOverlayOpacity(scene, opacity: float, foregroundNode=None) -> None:
    """Change the foreground opacity in the views that show ``foregroundNode`` (all views if None)."""
    for composite in sliceCompositeNodes(scene):
        if foregroundNode is None or composite.GetForegroundVolumeID() == foregroundNode.GetID():
            composite.SetForegroundOpacity(min(max(float(opacity), 0.0), 1.0))
