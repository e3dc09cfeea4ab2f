"""Original and counterfactual side by side, slices linked; the probability plot below them.

The "Side by side" layout shows two slice views (Red and Yellow). Red shows the input with the
saliency overlay, Yellow the counterfactual alone, both in the same orientation; linked slice
controls keep them on the same slice while the user scrolls, pans or zooms. When there is a
probability-per-step chart, the module's own layout adds a plot view under the two slice views
(Slicer has no built-in side-by-side + plot arrangement). `showResults` puts a finished explanation there.
"""

from __future__ import annotations

from dataclasses import dataclass

import slicer

from . import display
from .plots import showChart

LEFT_VIEW, RIGHT_VIEW = "Red", "Yellow"
#: the id of the module's "side by side + plot" layout (custom layout ids start above Slicer's built-in ones)
SIDE_BY_SIDE_PLOT_LAYOUT = 7370
_SIDE_BY_SIDE_PLOT_XML = """<layout type="vertical" split="true">
 <item splitSize="700">
  <layout type="horizontal">
   <item><view class="vtkMRMLSliceNode" singletontag="Red">
    <property name="orientation" action="default">Axial</property>
    <property name="viewlabel" action="default">R</property>
    <property name="viewcolor" action="default">#F34A33</property></view></item>
   <item><view class="vtkMRMLSliceNode" singletontag="Yellow">
    <property name="orientation" action="default">Axial</property>
    <property name="viewlabel" action="default">Y</property>
    <property name="viewcolor" action="default">#EDD54C</property></view></item>
  </layout>
 </item>
 <item splitSize="300"><view class="vtkMRMLPlotViewNode" singletontag="PlotView1">
  <property name="viewlabel" action="default">P</property></view></item>
</layout>"""


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


def registerSideBySidePlotLayout(node) -> int:
    """Add the "side by side + plot" arrangement to a layout node (once); returns its id."""
    if not node.IsLayoutDescription(SIDE_BY_SIDE_PLOT_LAYOUT):
        node.AddLayoutDescription(SIDE_BY_SIDE_PLOT_LAYOUT, _SIDE_BY_SIDE_PLOT_XML)
    return SIDE_BY_SIDE_PLOT_LAYOUT


def showSideBySide(scene, inputNode, counterfactualNode, saliencyNode=None, opacity: float = 0.5,
                   orientation: str = "Axial", chartNode=None) -> None:
    """Switch to the side-by-side layout: input (+ saliency) left, counterfactual right, linked; with
    ``chartNode``, the layout that adds a plot view below them, showing that chart."""
    node = layoutNode(scene)
    if chartNode is None:
        node.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutSideBySideView)
    else:
        node.SetViewArrangement(registerSideBySidePlotLayout(node))
        showChart(scene, chartNode)
    setSideBySideViews(scene, inputNode, counterfactualNode, saliencyNode, opacity, orientation)


def setSideBySideViews(scene, inputNode, counterfactualNode, saliencyNode=None, opacity: float = 0.5,
                       orientation: str = "Axial", leftView: str = LEFT_VIEW, rightView: str = RIGHT_VIEW) -> None:
    """Input (+ saliency) in the ``leftView`` slice view, the counterfactual alone in ``rightView``, both in
    ``orientation``, slices linked; the layout is left as it is (the web viewer has its own layouts)."""
    views = {leftView: (inputNode, saliencyNode), rightView: (counterfactualNode, None)}
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


def showBeside(scene, node, rightView: str = RIGHT_VIEW) -> None:
    """``node`` (a counterfactual or difference map) alone in the view beside the original; the original's
    views are left as they are."""
    composite = compositeNodeByLayoutName(scene, rightView)
    if composite is None:
        raise RuntimeError(f"the {rightView} slice view is missing")
    with slicer.util.NodeModify(composite):
        composite.SetBackgroundVolumeID(node.GetID() if node is not None else None)
        composite.SetForegroundVolumeID(None)


def linkSliceViews(scene, linked: bool = True) -> None:
    """Link (or unlink) the slice views, as the link button in a slice view's controller does."""
    for n in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        scene.GetNthNodeByClass(n, "vtkMRMLSliceCompositeNode").SetLinkedControl(bool(linked))


@dataclass
class ViewOptions:
    """How results are shown. opacity in [0, 1]; percentile in [0, 100] (95: the top 5% coloured).
    ``show`` False: the caller shows them itself (the web viewer picks its own views)."""

    show: bool = True
    opacity: float = display.DEFAULT_OPACITY
    percentile: float = display.DEFAULT_PERCENTILE
    sideBySide: bool = True


def showResults(scene, result, options: ViewOptions) -> None:
    """Saliency over the input in every slice view; the counterfactual beside the original, with the
    probability-per-step plot below them when there is one. ``result``: `results.ExplanationNodes`."""
    display.showOverlay(scene, result.inputNode, result.saliency, options.opacity)
    counterfactual = result.shownCounterfactual()
    if options.sideBySide and counterfactual is not None and scene.GetFirstNodeByClass("vtkMRMLLayoutNode"):
        showSideBySide(scene, result.inputNode, counterfactual, result.saliency, options.opacity,
                       chartNode=result.probabilityChart)
    elif result.probabilityChart is not None:
        showChart(scene, result.probabilityChart)  # in a plot view if the current layout has one
