"""Showing the saliency map as a heat overlay on the CT in the slice views that show the CT.

The saliency volume is the foreground layer over the input (background) in each slice view that shows the
input, with a heat colour table and an opacity. A percentile threshold hides the weak part of the map: with
the default 95, only the top 5% of voxels are coloured; the rest is transparent (the display node's lower
threshold), so the CT shows through unchanged. A voxel of value 0 is never coloured.

A result map is a uint8 display copy (`loading`) whose 256-level histogram was counted once when it was
read, so moving the threshold slider is a table look-up, not a percentile over the whole volume.
"""

from __future__ import annotations

import numpy as np

import slicer

HEAT_COLORS = ("PET-Heat", "Warm1", "Iron")  # the first one present in the scene is used
DIVERGING_COLORS = ("DivergingBlueRed", "fMRI")  # for difference maps: negative blue, positive red
DEFAULT_PERCENTILE = 95.0  # = ACATLogic.options.OVERLAY_PERCENTILE (tested), not imported: see the package docstring
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


def histogramOf(voxels: np.ndarray) -> np.ndarray:
    """Counts of the 256 levels of a uint8 map (what `loading.readMap` counts once per map)."""
    from .loading import levelCounts

    return levelCounts(voxels)


def levelThreshold(histogram: np.ndarray, percentile: float) -> tuple[float, float]:
    """(lowest level coloured, highest level present) of a uint8 map for ``percentile``; the lowest is at
    least 1: a voxel of value 0 never gets a colour (on a map that is 0 outside the organ, the 95th
    percentile itself can be 0)."""
    from .loading import percentileLevel

    threshold = max(percentileLevel(histogram, percentile), 1)
    present = np.nonzero(np.asarray(histogram))[0]
    top = float(present[-1]) if len(present) else 0.0
    return float(threshold), top


def setLevelThreshold(display, histogram: np.ndarray, percentile: float) -> float:
    """Apply the percentile threshold of a uint8 map to its display node; returns the threshold level."""
    threshold, top = levelThreshold(histogram, percentile)
    return _setThreshold(display, threshold, top)


def applySaliencyThreshold(saliencyNode, percentile: float = DEFAULT_PERCENTILE, histogram=None) -> float:
    """Colour only the voxels at or above the ``percentile``-th percentile; returns that value.

    ``histogram``: the map's level counts (`histogramOf`), counted once per map; without it a uint8 map
    is counted now, and a float map gets the exact percentile (both over the whole volume: slow on a
    large CT, for maps made outside `loading` only)."""
    if histogram is None:
        voxels = slicer.util.arrayFromVolume(saliencyNode)
        if voxels.dtype == np.uint8:
            histogram = histogramOf(voxels)
        else:
            threshold = percentileThreshold(voxels, percentile)
            return _setThreshold(saliencyNode.GetDisplayNode(), threshold, float(voxels.max()))
    return setLevelThreshold(saliencyNode.GetDisplayNode(), histogram, percentile)


BODY_HU = -500.0  # above this, a voxel is tissue, not air


def overlayFocus(overlayNode, inputNode, percentile: float = DEFAULT_PERCENTILE, logarithmic: bool = True):
    """RAS point (mm) of the strongest part of an overlay inside the body, or None for a map empty there: the
    axial slice holding most of the map above the percentile threshold within the body (CT above
    `BODY_HU`: a map's weight in the air around the head says nothing to look at), at its weighted centre.
    A display copy (uint8, `loading`) is weighed by the map values its levels stand for (``logarithmic``:
    a saliency map's levels, else an attention mask's)."""
    from .loading import levelValue
    from .volume_nodes import ijkToRasArray

    voxels = slicer.util.arrayFromVolume(overlayNode)  # (K, J, I)
    threshold = percentileThreshold(voxels, percentile)
    body = slicer.util.arrayFromVolume(inputNode) > BODY_HU
    values = voxels
    if voxels.dtype == np.uint8:  # one look-up per level, not a float copy of the volume per voxel
        values = levelValue(np.arange(256), logarithmic).astype(np.float32)[voxels]
    weights = np.where((voxels >= threshold) & body, values, 0.0).astype(np.float64)
    per_slice = weights.sum(axis=(1, 2))
    if not np.any(per_slice > 0):
        return None
    k = int(np.argmax(per_slice))
    j_idx, i_idx = np.indices(weights.shape[1:])
    w = weights[k] / per_slice[k]
    ijk = np.array([float((w * i_idx).sum()), float((w * j_idx).sum()), float(k), 1.0])
    return (ijkToRasArray(overlayNode) @ ijk)[:3]


def _setThreshold(display, threshold: float, top: float) -> float:
    """The window reaches half the shown range below the threshold and above the maximum: with a heat
    table (black -> orange -> yellow -> white) the weakest shown voxels are orange, never black (which
    would hide the CT under an opaque dark patch), and the strongest pale yellow, whatever the
    threshold."""
    if top <= threshold:  # a flat map (or the 100th percentile): keep a visible, non-empty range
        top = threshold + 1e-6
    margin = 0.5 * (top - threshold)
    with slicer.util.NodeModify(display):
        display.SetAutoWindowLevel(False)
        display.SetWindowLevelMinMax(threshold - margin, top + margin)
        display.SetAutoThreshold(False)
        display.SetApplyThreshold(True)
        display.SetLowerThreshold(threshold)
        display.SetUpperThreshold(top + 1.0)
    return threshold


def styleDifference(scene, display, extent: float) -> None:
    """Symmetric window around 0 HU (``extent``: the largest |difference|) with a diverging colour table
    (blue: HU removed, red: added), on a difference map's display node."""
    extent = max(float(extent), 1e-3)
    with slicer.util.NodeModify(display):
        display.SetAndObserveColorNodeID(colorNodeId(scene, DIVERGING_COLORS))
        display.SetAutoWindowLevel(False)
        display.SetWindowLevelMinMax(-extent, extent)


def _displayNode(node):
    return node.GetDisplayNode() if node is not None and node.IsA("vtkMRMLDisplayableNode") else node


def copyWindowLevel(sourceNode, target) -> None:
    """Show ``target`` (a counterfactual, in HU: its volume or display node) with the input's window/level
    and colours."""
    source, target = _displayNode(sourceNode), _displayNode(target)
    if source is None or target is None:
        return
    with slicer.util.NodeModify(target):
        target.SetAndObserveColorNodeID(source.GetColorNodeID())
        target.SetAutoWindowLevel(False)
        target.SetWindowLevelMinMax(source.GetWindowLevelMin(), source.GetWindowLevelMax())


def sliceCompositeNodes(scene) -> list:
    return [scene.GetNthNodeByClass(n, "vtkMRMLSliceCompositeNode")
            for n in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))]


def showOverlay(scene, backgroundNode, foregroundNode, opacity: float = DEFAULT_OPACITY, onlyOverBackground=False
                ) -> int:
    """Background + foreground + opacity in every slice view, or with ``onlyOverBackground`` only in the views
    whose background is ``backgroundNode`` already (so that a view beside them showing a counterfactual
    keeps it); returns how many views were set."""
    composites = sliceCompositeNodes(scene)
    if onlyOverBackground:
        composites = [c for c in composites if backgroundNode is not None
                      and c.GetBackgroundVolumeID() == backgroundNode.GetID()]
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
