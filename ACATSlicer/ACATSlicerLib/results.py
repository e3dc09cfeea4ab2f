"""Result nodes from an ``acat explain`` output folder, grouped in one subject-hierarchy folder.

From ``saliency.nrrd``, ``counterfactual_<class>.nrrd``, ``attention_<mask>.nrrd`` and ``report.json``:

* the saliency volume (values in [0, 1]),
* one counterfactual volume per target class (HU) and its difference map, counterfactual - input (HU),
* the ACAT attention masks (early, middle, late, fused; values in [0, 1]),
* a table of the prediction and per-class probabilities, one of probabilities along the optimisation
  and a plot chart of it (one series per class),
* a text node holding report.json (model, method, parameters, timings; no patient data).

Every volume gets the input node's exact IJK-to-RAS matrix and parent transform: the files are first
checked to lie on the input's grid. Nodes are named after the input node, the model id and the method.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

import slicer

from . import display, hierarchy, plots, tables
from .nrrd_exchange import readResultArray
from .volume_nodes import addVolumeNode

ROLE_ATTRIBUTE = "ACAT.Role"  # saliency | counterfactual | difference | attention | probabilities | ...
KEY_ATTRIBUTE = "ACAT.Key"  # the class or mask name of a counterfactual/difference/attention node


@dataclass
class ExplanationNodes:
    """The nodes of one explanation. Dicts are keyed by the file-name form of the class or mask."""

    folderItem: int
    inputNode: object
    saliency: object
    report: dict
    counterfactuals: dict = field(default_factory=dict)
    differences: dict = field(default_factory=dict)
    attention: dict = field(default_factory=dict)
    probabilityTable: Optional[object] = None
    trajectoryTable: Optional[object] = None
    probabilityChart: Optional[object] = None  # vtkMRMLPlotChartNode over trajectoryTable
    probabilitySeries: list = field(default_factory=list)  # its vtkMRMLPlotSeriesNode, one per column
    reportNode: Optional[object] = None

    @property
    def prediction(self) -> str:
        return self.report["prediction"]

    @property
    def probabilities(self) -> dict:
        return dict(self.report["probabilities"])

    def volumeNodes(self) -> dict:
        """file stem -> volume node, as `export` writes them."""
        out = {"saliency": self.saliency}
        out.update({f"counterfactual_{k}": v for k, v in self.counterfactuals.items()})
        out.update({f"difference_{k}": v for k, v in self.differences.items()})
        out.update({f"attention_{k}": v for k, v in self.attention.items()})
        return out

    def allNodes(self) -> list:
        extra = [self.probabilityTable, self.trajectoryTable, self.probabilityChart, *self.probabilitySeries,
                 self.reportNode]
        return list(self.volumeNodes().values()) + [n for n in extra if n is not None]

    def shownCounterfactual(self):
        """The counterfactual to put beside the original: towards the healthy class (the first) when
        the prediction is not healthy, else the one that changed the scan most."""
        if not self.counterfactuals:
            return None
        labels = list(self.report["probabilities"])
        healthy = _fileName(labels[0])
        if self.prediction != labels[0] and healthy in self.counterfactuals:
            return self.counterfactuals[healthy]
        changed = {k: float(np.abs(slicer.util.arrayFromVolume(self.differences[k])).sum())
                   for k in self.counterfactuals}
        return self.counterfactuals[max(changed, key=changed.get)]


def _fileName(label: str) -> str:
    """The file-name form of a class label, as ACATLogic.outputs.safe_name writes it."""
    import re

    return re.sub(r"[^a-z0-9_]+", "_", label.lower()).strip("_") or "class"


def readReport(outDir) -> dict:
    path = Path(outDir) / "report.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read the explanation report {path} ({exc})") from None
    for key in ("prediction", "probabilities", "model", "method"):
        if key not in report:
            raise ValueError(f"the explanation report {path} lacks '{key}'")
    return report


def _tag(node, role: str, key: str = "") -> None:
    node.SetAttribute(ROLE_ATTRIBUTE, role)
    if key:
        node.SetAttribute(KEY_ATTRIBUTE, key)


def loadExplanationResults(scene, inputNode, outDir, percentile: float = display.DEFAULT_PERCENTILE
                           ) -> ExplanationNodes:
    """Create the result nodes of ``outDir`` for ``inputNode``, replacing earlier results of the same
    input + model + method. Every file is read and checked before the scene is touched, so a bad
    folder raises ValueError and leaves the scene as it was."""
    outDir = Path(outDir)
    report = readReport(outDir)
    modelId, method = report["model"]["id"], report["method"]
    arrays = {"saliency": readResultArray(outDir / "saliency.nrrd", inputNode)}
    for path in sorted(outDir.glob("counterfactual_*.nrrd")) + sorted(outDir.glob("attention_*.nrrd")):
        arrays[path.stem] = readResultArray(path, inputNode)
    inputVoxels = np.asarray(slicer.util.arrayFromVolume(inputNode), dtype=np.float32)

    prefix = f"{inputNode.GetName()} {modelId} {method}"
    folder = hierarchy.createResultFolder(scene, inputNode, modelId, method)
    result = ExplanationNodes(folder, inputNode, None, report)
    result.saliency = addVolumeNode(scene, arrays.pop("saliency"), f"{prefix} saliency", referenceNode=inputNode)
    _tag(result.saliency, "saliency")
    display.styleSaliencyNode(scene, result.saliency, percentile)
    for stem, voxels in arrays.items():
        kind, key = stem.split("_", 1)
        if kind == "counterfactual":
            node = addVolumeNode(scene, voxels, f"{prefix} counterfactual {key}", referenceNode=inputNode)
            display.copyWindowLevel(inputNode, node)
            result.counterfactuals[key] = node
            diff = addVolumeNode(scene, voxels - inputVoxels, f"{prefix} difference {key}", referenceNode=inputNode)
            display.styleDifferenceNode(scene, diff)
            result.differences[key] = diff
            _tag(diff, "difference", key)
        else:
            node = addVolumeNode(scene, voxels, f"{prefix} attention {key}", referenceNode=inputNode)
            node.GetDisplayNode().SetAndObserveColorNodeID(display.colorNodeId(scene, display.HEAT_COLORS))
            result.attention[key] = node
        _tag(node, kind, key)
    result.probabilityTable = tables.probabilityTable(scene, f"{prefix} probabilities", report["probabilities"],
                                                      report["prediction"])
    _tag(result.probabilityTable, "probabilities")
    if report.get("trajectory"):
        result.trajectoryTable = tables.trajectoryTable(scene, f"{prefix} probability per step", report["trajectory"])
        _tag(result.trajectoryTable, "trajectory")
        result.probabilityChart, result.probabilitySeries = plots.probabilityChart(
            scene, f"{prefix} probability per step", result.trajectoryTable)
        _tag(result.probabilityChart, "plot")
        for series in result.probabilitySeries:
            _tag(series, "plotSeries")
    result.reportNode = scene.AddNewNodeByClass("vtkMRMLTextNode", f"{prefix} report")
    result.reportNode.SetText(json.dumps(report, indent=2))
    _tag(result.reportNode, "report")
    for node in result.allNodes():
        hierarchy.placeInFolder(scene, node, folder)
    return result


def explanationFromFolder(scene, folderItem: int) -> ExplanationNodes:
    """Rebuild `ExplanationNodes` from a result folder already in the scene (e.g. a reloaded scene)."""
    sh = hierarchy.subjectHierarchy(scene)
    key = sh.GetItemAttribute(folderItem, hierarchy.RESULT_KEY_ATTRIBUTE)
    if not key:
        raise ValueError("not an ACAT result folder")
    inputNode = scene.GetNodeByID(key.split("|", 1)[0])
    result = ExplanationNodes(folderItem, inputNode, None, {})
    for node in hierarchy.nodesInFolder(scene, folderItem):
        role, name = node.GetAttribute(ROLE_ATTRIBUTE), node.GetAttribute(KEY_ATTRIBUTE) or ""
        if role == "saliency":
            result.saliency = node
        elif role in ("counterfactual", "difference", "attention"):
            {"counterfactual": result.counterfactuals, "difference": result.differences,
             "attention": result.attention}[role][name] = node
        elif role == "probabilities":
            result.probabilityTable = node
        elif role == "trajectory":
            result.trajectoryTable = node
        elif role == "plot":
            result.probabilityChart = node
        elif role == "plotSeries":
            result.probabilitySeries.append(node)
        elif role == "report":
            result.reportNode = node
            result.report = json.loads(node.GetText())
    if result.saliency is None or not result.report:
        raise ValueError("the ACAT result folder is incomplete (saliency or report missing)")
    return result
