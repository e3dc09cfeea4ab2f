"""The prediction and per-class probabilities as a table node (and the counterfactual trajectory).

Table nodes are ordinary MRML data: they are saved with the scene, shown in Slicer's table view and
exported as CSV by Slicer's own Save dialog.
"""

from __future__ import annotations

import vtk

CLASS_COLUMN, PROBABILITY_COLUMN, PREDICTED_COLUMN = "Class", "Probability", "Predicted"


def _stringColumn(name: str, values) -> vtk.vtkStringArray:
    column = vtk.vtkStringArray()
    column.SetName(name)
    for value in values:
        column.InsertNextValue(str(value))
    return column


def _doubleColumn(name: str, values) -> vtk.vtkDoubleArray:
    column = vtk.vtkDoubleArray()
    column.SetName(name)
    for value in values:
        column.InsertNextValue(float(value))
    return column


def probabilityTable(scene, name: str, probabilities: dict, prediction: str, tableNode=None):
    """A table with one row per class: name, probability in [0, 1], and "yes" on the predicted class."""
    if tableNode is None:
        tableNode = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    table = vtk.vtkTable()
    labels = list(probabilities)
    table.AddColumn(_stringColumn(CLASS_COLUMN, labels))
    table.AddColumn(_doubleColumn(PROBABILITY_COLUMN, [probabilities[k] for k in labels]))
    table.AddColumn(_stringColumn(PREDICTED_COLUMN, ["yes" if k == prediction else "" for k in labels]))
    tableNode.SetAndObserveTable(table)
    tableNode.SetUseColumnTitleAsColumnHeader(True)
    return tableNode


def trajectoryTable(scene, name: str, trajectory: dict, tableNode=None):
    """Class probabilities at each optimisation step, one column per (target, class) pair.

    ``trajectory``: target label -> list over steps of {class label: probability} (report.json)."""
    if tableNode is None:
        tableNode = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    table = vtk.vtkTable()
    steps = max((len(rows) for rows in trajectory.values()), default=0)
    table.AddColumn(_doubleColumn("Step", range(steps)))
    for target, rows in trajectory.items():
        for label in (rows[0] if rows else {}):
            values = [row.get(label, float("nan")) for row in rows] + [float("nan")] * (steps - len(rows))
            table.AddColumn(_doubleColumn(f"towards {target}: p({label})", values))
    tableNode.SetAndObserveTable(table)
    return tableNode


def tableRows(tableNode) -> list[dict]:
    """The table as a list of {column name: value} (for tests and the panel's summary)."""
    table = tableNode.GetTable()
    names = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    return [{n: table.GetValue(r, c).ToString() if table.GetColumn(c).IsA("vtkStringArray")
             else table.GetValue(r, c).ToDouble() for c, n in enumerate(names)}
            for r in range(table.GetNumberOfRows())]
