"""Original and counterfactual side by side, slices linked.

The "Side by side" layout shows two slice views (Red and Yellow). Red shows the input with the
saliency overlay, Yellow the counterfactual alone, both in the same orientation; linked slice
controls keep them on the same slice while the user scrolls, pans or zooms.
"""

from __future__ import annotations

import slicer

LEFT_VIEW, RIGHT_VIEW = "Red", "Yellow"


def layoutNode(scene):
    node = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
    if node is None:
        raise RuntimeError("the scene has no layout node (no views to show the results in)")
    return node


def sliceNodeByLayoutName(scene, layoutName: str):
    for n in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
        node = scene.GetNthNodeByClass(n, "vtkMRMLSliceNode")
        if node.GetLayoutName() == layoutName:
            return node
    return None


def compositeNodeByLayoutName(scene, layoutName: str):
    for n in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        node = scene.GetNthNodeByClass(n, "vtkMRMLSliceCompositeNode")
        if node.GetLayoutName() == layoutName:
            return node
    return None


def showSideBySide(scene, inputNode, counterfactualNode, saliencyNode=None, opacity: float = 0.5,
                   orientation: str = "Axial") -> None:
    """Switch to the side-by-side layout: input (+ saliency) left, counterfactual right, linked."""
    layoutNode(scene).SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView)
    views = {LEFT_VIEW: (inputNode, saliencyNode), RIGHT_VIEW: (counterfactualNode, None)}
    for name, (background, foreground) in views.items():
        sliceNode = sliceNodeByLayoutName(scene, name)
        composite = compositeNodeByLayoutName(scene, name)
        if sliceNode is None or composite is None:
            raise RuntimeError(f"the {name} slice view is missing")
        sliceNode.SetOrientation(orientation)
        with slicer.util.NodeModify(composite):
            composite.SetBackgroundVolumeID(background.GetID() if background else None)
            composite.SetForegroundVolumeID(foreground.GetID() if foreground else None)
            composite.SetForegroundOpacity(opacity)
    linkSliceViews(scene, True)


def linkSliceViews(scene, linked: bool = True) -> None:
    """Link (or unlink) the slice views, as the link button in a slice view's controller does."""
    for n in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        scene.GetNthNodeByClass(n, "vtkMRMLSliceCompositeNode").SetLinkedControl(bool(linked))
