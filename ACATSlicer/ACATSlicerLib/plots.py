"""Class probability against optimisation step: a plot chart over the per-step table.

One ``vtkMRMLPlotSeriesNode`` per column of the trajectory table (one per target and class: how the
classifier's belief moves while the counterfactual is optimised, ACAT paper Sec. 3.1), all in one
``vtkMRMLPlotChartNode``. The series read the table node itself, so the curve shows exactly the
numbers of report.json, and Slicer's plot view, save and export work on them as on any plot.
"""

from __future__ import annotations

import slicer

STEP_COLUMN = "Step"
#: series colours (RGB in [0, 1]), one per class in table order; Slicer's default plot colours are all blue
PALETTE = ((0.12, 0.47, 0.71), (1.0, 0.5, 0.05), (0.17, 0.63, 0.17), (0.84, 0.15, 0.16), (0.58, 0.4, 0.74),
           (0.55, 0.34, 0.29), (0.89, 0.47, 0.76), (0.5, 0.5, 0.5))


def probabilityChart(scene, name: str, trajectoryTableNode):
    """(chart node, [series nodes]) plotting every probability column of ``trajectoryTableNode``
    against its ``Step`` column; y from 0 to 1."""
    table = trajectoryTableNode.GetTable()
    columns = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    if STEP_COLUMN not in columns:
        raise ValueError(f"the table '{trajectoryTableNode.GetName()}' has no '{STEP_COLUMN}' column to plot against")
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
    chart.SetTitle("Class probability per optimisation step")
    chart.SetXAxisTitle("optimisation step")
    chart.SetYAxisTitle("probability")
    chart.SetYAxisRangeAuto(False)
    chart.SetYAxisRange(0.0, 1.0)
    series = []
    for n, column in enumerate(c for c in columns if c != STEP_COLUMN):
        node = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{name}: {column}")
        node.SetAndObserveTableNodeID(trajectoryTableNode.GetID())
        node.SetXColumnName(STEP_COLUMN)
        node.SetYColumnName(column)
        node.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        node.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
        node.SetColor(*PALETTE[n % len(PALETTE)])
        chart.AddAndObservePlotSeriesNodeID(node.GetID())
        series.append(node)
    return chart, series


def seriesPoints(seriesNode) -> list[tuple[float, float]]:
    """The (x, y) points a series draws, read from its table (for tests and the panel)."""
    table = seriesNode.GetTableNode().GetTable()
    xs, ys = (table.GetColumnByName(seriesNode.GetXColumnName()), table.GetColumnByName(seriesNode.GetYColumnName()))
    return [(xs.GetValue(r), ys.GetValue(r)) for r in range(table.GetNumberOfRows())]


def showChart(scene, chartNode) -> bool:
    """Show ``chartNode`` in every plot view of the scene; False when the current layout has none."""
    shown = False
    for n in range(scene.GetNumberOfNodesByClass("vtkMRMLPlotViewNode")):
        view = scene.GetNthNodeByClass(n, "vtkMRMLPlotViewNode")
        view.SetPlotChartNodeID(chartNode.GetID())
        shown = True
    return shown
