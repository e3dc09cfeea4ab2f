"""Result nodes from an ``acat explain`` output folder, grouped in one subject-hierarchy folder, loaded
incrementally.

The child's folder (``saliency.nrrd``, ``counterfactual_<class>.nrrd``, ``attention_<mask>.nrrd``,
``report.json``, whatever else it wrote) is the result: it is kept for the session, shown from, and
exported as it is. From it:

* first, in one background read (`readFirstMaps`): the saliency and the counterfactual put beside the
  original (`shownCounterfactualKey`: towards the healthy class unless the scan is read as healthy);
  then the nodes are made on the GUI thread (`createResultNodes`): those two volumes, a table of the
  prediction and per-class probabilities, one of probabilities along the optimisation and a plot chart
  of it (one series per class), and a text node holding report.json;
* the rest on demand (`ExplanationNodes.addMap`, from `loading.readMap`): the other counterfactuals, the
  difference maps (counterfactual - input, HU) and the ACAT attention masks.

Volumes are display copies (`loading`): [0, 1] maps as uint8 0..255 (saliency on logarithmic levels), counterfactuals in the input's voxel
type. Every volume gets the input node's exact IJK-to-RAS matrix and parent transform: the files are first
checked to lie on the input's grid. Nodes are named after the input node, the model id and the method.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

import slicer

from . import display, hierarchy, loading, plots, tables
from .loading import ATTENTION, COUNTERFACTUAL, DIFFERENCE, SALIENCY, Grid, LoadedMap
from .volume_nodes import setGeometryFromVolumeNode

ROLE_ATTRIBUTE = "ACAT.Role"  # saliency | counterfactual | difference | attention | probabilities | ...
KEY_ATTRIBUTE = "ACAT.Key"  # the class or mask name of a counterfactual/difference/attention node
#: on the subject-hierarchy folder: the child's results folder these nodes show
RESULTS_FOLDER_ATTRIBUTE = "ACAT.ResultsFolder"
ON_DEMAND = (COUNTERFACTUAL, DIFFERENCE, ATTENTION)


@dataclass
class ExplanationNodes:
    """The nodes of one explanation and the folder they come from. ``counterfactuals``, ``differences``
    and ``attention`` hold the maps loaded so far, keyed by the file-name form of the class or mask;
    `keys` says which the folder holds."""

    folderItem: int
    inputNode: object
    saliency: object
    report: dict
    outDir: Optional[Path] = None  # the child's results folder (None for a result rebuilt from a scene)
    counterfactuals: dict = field(default_factory=dict)
    differences: dict = field(default_factory=dict)
    attention: dict = field(default_factory=dict)
    available: dict = field(default_factory=dict)  # kind -> [keys] in the folder
    histograms: dict = field(default_factory=dict)  # node ID -> counts of the 256 levels of a [0, 1] map
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

    @property
    def device(self) -> str:
        """Where the child computed (report.json's "device", e.g. "cuda:0" or "cpu"), "" if not recorded."""
        return str(self.report.get("device") or "")

    def keys(self, kind: str) -> list:
        """The counterfactual, difference or attention maps the folder holds (loaded or not)."""
        return list(self.available.get(kind, []))

    def _maps(self, kind: str) -> dict:
        return {COUNTERFACTUAL: self.counterfactuals, DIFFERENCE: self.differences, ATTENTION: self.attention}[kind]

    def loadedNode(self, kind: str, key: str = ""):
        """The node of a map if it is loaded, else None."""
        if kind == SALIENCY:
            return self.saliency
        return self._maps(kind).get(key)

    def volumeNodes(self) -> dict:
        """file stem -> volume node, of the maps loaded so far."""
        out = {"saliency": self.saliency}
        out.update({f"counterfactual_{k}": v for k, v in self.counterfactuals.items()})
        out.update({f"difference_{k}": v for k, v in self.differences.items()})
        out.update({f"attention_{k}": v for k, v in self.attention.items()})
        return out

    def allNodes(self) -> list:
        extra = [self.probabilityTable, self.trajectoryTable, self.probabilityChart, *self.probabilitySeries,
                 self.reportNode]
        return list(self.volumeNodes().values()) + [n for n in extra if n is not None]

    def shownCounterfactualKey(self) -> str:
        return shownCounterfactualKey(self.report, self.keys(COUNTERFACTUAL))

    def shownCounterfactual(self):
        """The node of the counterfactual put beside the original (None if there is none or it is not loaded)."""
        key = self.shownCounterfactualKey()
        return self.counterfactuals.get(key) if key else None

    def histogram(self, node) -> Optional[np.ndarray]:
        return self.histograms.get(node.GetID()) if node is not None else None

    def addMap(self, scene, loaded: LoadedMap):
        """Make the node of a map read by `loading.readMap` (GUI thread); returns it (the existing node if
        that map is loaded already)."""
        existing = self.loadedNode(loaded.kind, loaded.key)
        if existing is not None and existing.GetScene() is not None:
            return existing
        node = _mapNode(scene, self.inputNode, loaded, _prefix(self.inputNode, self.report))
        if loaded.histogram is not None:
            self.histograms[node.GetID()] = loaded.histogram
        self._maps(loaded.kind)[loaded.key] = node
        hierarchy.placeInFolder(scene, node, self.folderItem)
        return node

    def load(self, kind: str, key: str):
        """The node of a map, read now if it is not loaded yet (blocks: batch mode, the web viewer, tests;
        the widget reads in the background through the controller)."""
        node = self.loadedNode(kind, key)
        if node is not None:
            return node
        if key not in self.keys(kind):
            raise ValueError(f"this result has no {kind} map {key!r}")
        if self.outDir is None:
            raise ValueError("the results folder of this explanation is no longer available")
        inputVoxels = slicer.util.arrayFromVolume(self.inputNode) if kind == DIFFERENCE else None
        loaded = loading.readMap(self.outDir, kind, key, Grid.fromNode(self.inputNode), inputVoxels)
        return self.addMap(self.inputNode.GetScene(), loaded)


def _fileName(label: str) -> str:
    """The file-name form of a class label, as ACATLogic.outputs.safe_name writes it."""
    return re.sub(r"[^a-z0-9_]+", "_", label.lower()).strip("_") or "class"


def shownCounterfactualKey(report: dict, keys) -> str:
    """The counterfactual to put beside the original, from the report and the counterfactuals present (no
    voxel read): towards the healthy class (the first class) when the scan is not read as healthy; else
    the other target ("abnormal", or the other class of a two-class model), and among several (every class
    a target) the most probable class after the prediction. "" when there is none."""
    keys = list(keys)
    if not keys:
        return ""
    labels = list(report.get("probabilities", {}))
    probabilities = report.get("probabilities", {})
    healthy = _fileName(labels[0]) if labels else ""
    predicted = _fileName(report.get("prediction", ""))
    if predicted != healthy and healthy in keys:
        return healthy
    byFile = {_fileName(label): float(p) for label, p in probabilities.items()}
    others = [k for k in keys if k != predicted] or keys
    # a target that is not a class ("abnormal": any class but the healthy one) comes first
    return max(others, key=lambda k: (k not in byFile, byFile.get(k, 0.0)))


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


def availableMaps(outDir) -> dict:
    """kind -> keys of the maps in a results folder (a difference map for each counterfactual)."""
    outDir = Path(outDir)
    counterfactuals = [p.stem.split("_", 1)[1] for p in sorted(outDir.glob("counterfactual_*.nrrd"))]
    attention = [p.stem.split("_", 1)[1] for p in sorted(outDir.glob("attention_*.nrrd"))]
    return {COUNTERFACTUAL: counterfactuals, DIFFERENCE: list(counterfactuals), ATTENTION: attention}


@dataclass
class FirstMaps:
    """What `readFirstMaps` read (in a worker thread): the report, the maps in the folder, the saliency and
    the counterfactual shown beside the original."""

    outDir: Path
    report: dict
    available: dict
    saliency: LoadedMap
    counterfactual: Optional[LoadedMap] = None


def readFirstMaps(outDir, grid: Grid) -> FirstMaps:
    """Read the report, the saliency and the shown counterfactual; touches no MRML node (a worker thread
    may call it). Raises ValueError for a bad folder."""
    outDir = Path(outDir)
    report = readReport(outDir)
    available = availableMaps(outDir)
    saliency = loading.readMap(outDir, SALIENCY, "", grid)
    key = shownCounterfactualKey(report, available[COUNTERFACTUAL])
    counterfactual = loading.readMap(outDir, COUNTERFACTUAL, key, grid) if key else None
    return FirstMaps(outDir, report, available, saliency, counterfactual)


def _tag(node, role: str, key: str = "") -> None:
    node.SetAttribute(ROLE_ATTRIBUTE, role)
    if key:
        node.SetAttribute(KEY_ATTRIBUTE, key)


def _prefix(inputNode, report: dict) -> str:
    return f"{inputNode.GetName()} {report['model']['id']} {report['method']}"


def _mapNode(scene, inputNode, loaded: LoadedMap, prefix: str):
    """A volume node showing ``loaded`` on the input's grid, its display set up before the voxels arrive (so
    that nothing computes an automatic window over the whole volume)."""
    names = {SALIENCY: f"{prefix} saliency", COUNTERFACTUAL: f"{prefix} counterfactual {loaded.key}",
             DIFFERENCE: f"{prefix} difference {loaded.key}", ATTENTION: f"{prefix} attention {loaded.key}"}
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", names[loaded.kind])
    setGeometryFromVolumeNode(node, inputNode)
    displayNode = scene.AddNewNodeByClass("vtkMRMLScalarVolumeDisplayNode")
    with slicer.util.NodeModify(displayNode):
        displayNode.SetAutoWindowLevel(False)
        if loaded.kind in (SALIENCY, ATTENTION):
            displayNode.SetAndObserveColorNodeID(display.colorNodeId(scene, display.HEAT_COLORS))
            display.setLevelThreshold(displayNode, loaded.histogram, display.DEFAULT_PERCENTILE)
        elif loaded.kind == COUNTERFACTUAL:
            display.copyWindowLevel(inputNode, displayNode)
        else:
            display.styleDifference(scene, displayNode, loaded.extent)
    node.SetAndObserveDisplayNodeID(displayNode.GetID())
    node.SetAndObserveImageData(loaded.image)
    _tag(node, loaded.kind, loaded.key)
    return node


def createResultNodes(scene, inputNode, first: FirstMaps, percentile: float = display.DEFAULT_PERCENTILE
                      ) -> ExplanationNodes:
    """Make the result nodes from `readFirstMaps` (GUI thread; no voxel is read or computed here),
    replacing earlier results of the same input + model + method."""
    report = first.report
    modelId, method = report["model"]["id"], report["method"]
    prefix = _prefix(inputNode, report)
    folder = hierarchy.createResultFolder(scene, inputNode, modelId, method)
    hierarchy.subjectHierarchy(scene).SetItemAttribute(folder, RESULTS_FOLDER_ATTRIBUTE, str(first.outDir))
    result = ExplanationNodes(folder, inputNode, None, report, outDir=first.outDir, available=first.available)
    result.saliency = _mapNode(scene, inputNode, first.saliency, prefix)
    result.histograms[result.saliency.GetID()] = first.saliency.histogram
    display.applySaliencyThreshold(result.saliency, percentile, first.saliency.histogram)
    if first.counterfactual is not None:
        result.counterfactuals[first.counterfactual.key] = _mapNode(scene, inputNode, first.counterfactual, prefix)
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


def loadExplanationResults(scene, inputNode, outDir, percentile: float = display.DEFAULT_PERCENTILE,
                           everything: bool = False) -> ExplanationNodes:
    """Read and show ``outDir`` now (blocking: batch mode and tests). Every file read is checked before the
    scene is touched, so a bad folder raises ValueError and leaves the scene as it was. ``everything``:
    load every map, not only the first two."""
    result = createResultNodes(scene, inputNode, readFirstMaps(outDir, Grid.fromNode(inputNode)), percentile)
    if everything:
        for kind in ON_DEMAND:
            for key in result.keys(kind):
                result.load(kind, key)
    return result


def explanationFromFolder(scene, folderItem: int) -> ExplanationNodes:
    """Rebuild `ExplanationNodes` from a result folder already in the scene (e.g. a reloaded scene)."""
    sh = hierarchy.subjectHierarchy(scene)
    key = sh.GetItemAttribute(folderItem, hierarchy.RESULT_KEY_ATTRIBUTE)
    if not key:
        raise ValueError("not an ACAT result folder")
    inputNode = scene.GetNodeByID(key.split("|", 1)[0])
    outDir = sh.GetItemAttribute(folderItem, RESULTS_FOLDER_ATTRIBUTE)
    outDir = Path(outDir) if outDir and Path(outDir, "report.json").is_file() else None
    result = ExplanationNodes(folderItem, inputNode, None, {}, outDir=outDir,
                              available=availableMaps(outDir) if outDir else {})
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
    if outDir is None:  # the files are gone (another session): what is in the scene is all there is
        result.available = {kind: list(result._maps(kind)) for kind in ON_DEMAND}
    return result
