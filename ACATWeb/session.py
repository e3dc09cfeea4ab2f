"""The viewer's work on one MRML scene, without trame: open a CT, explain it, show and package the results.

Everything a page action does to the scene is here, so that it runs - and is tested - on a headless
scene with no web server (Testing/test_web_session.py). The run itself is ACATSlicerLib's
`ExplainController` (the Slicer module's logic), used as it is: the input is written as NRRD, ``acat
explain`` runs in a background process, the page's polling task calls ``controller.poll`` (it never
blocks), Cancel kills the process tree; when a run succeeds the controller hands its result to
`ViewerSession`, which shows it. The display code (heat overlay, percentile threshold, side-by-side,
linked slices) is ACATSlicerLib's too; this file only decides which volume goes in which view.

View names are the slice nodes' layout names: the three input views and the counterfactual view that
the results layout puts beside the axial one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

import slicer
from ACATLogic.options import ExplainOptions
from ACATSlicerLib import display, hierarchy, layout
from ACATSlicerLib.controller import ExplainController
from ACATSlicerLib.layout import ViewOptions
from ACATSlicerLib.request import DicomResults, ExplainRequest
from ACATSlicerLib.volume_nodes import addVolumeNodeFromCTVolume

from . import download, summary
from .linked_slices import SliceMirror

AXIAL_VIEW, CORONAL_VIEW, SAGITTAL_VIEW, COUNTERFACTUAL_VIEW = "Red", "Green", "Yellow", "CF"
INPUT_VIEWS = (AXIAL_VIEW, CORONAL_VIEW, SAGITTAL_VIEW)

#: CT display windows as (level, width) in HU; "auto" lets Slicer pick from the histogram
WINDOWS = {"brain": (40.0, 80.0), "soft tissue": (40.0, 400.0), "lung": (-600.0, 1500.0), "bone": (500.0, 3000.0)}
DEFAULT_WINDOW = "brain"


def read_ct(path):
    """The CT at ``path`` (DICOM folder or file, NRRD, NIfTI) as an `ACATLogic.CTVolume`: HU and LPS
    geometry, read by the same reader as ``acat explain``. Touches no MRML, so it may run in a worker
    thread. Raises ACATInputError with one line a user can act on."""
    from ACATLogic.errors import ACATInputError
    from ACATLogic.io import read_volume

    text = str(path).strip()
    if not text:
        raise ACATInputError("type the path of a DICOM folder, an NRRD or a NIfTI file")
    return read_volume(Path(text).expanduser())


def describe_volume(volume) -> str:
    """One line for the panel: size and voxel size (no patient data: nothing from the file's header)."""
    i, j, k = volume.size_ijk
    sx, sy, sz = (float(v) for v in volume.spacing_mm)
    return f"{i} x {j} x {k} voxels, {sx:.2f} x {sy:.2f} x {sz:.2f} mm"


class ViewerSession:
    """``scene``: the MRML scene of the views; ``controller``: the run (ACATSlicerLib's `ExplainController`;
    a test injects one with a fake runner), which the page polls and cancels directly; ``work_root``: where
    the background runs' temporary folders go when no controller is given."""

    def __init__(self, scene, controller: Optional[ExplainController] = None, work_root: Optional[Path] = None,
                 counterfactual_view: str = COUNTERFACTUAL_VIEW):
        self.scene = scene
        self.controller = controller or ExplainController(scene, workRoot=work_root)
        self.counterfactual_view = counterfactual_view
        self.input_node = None
        self.window = DEFAULT_WINDOW
        self.overlay = summary.SALIENCY  # what lies over the CT: "saliency" or "attention:<mask>"
        self.right = ""  # what the counterfactual view shows: "counterfactual:<class>" or "difference:<class>"
        self.opacity = display.DEFAULT_OPACITY
        self.percentile = display.DEFAULT_PERCENTILE
        self._mirror: Optional[SliceMirror] = None  # the axial and counterfactual views, linked
        self.dicom_source: Optional[tuple] = None  # (path, SeriesInstanceUID) the input was read from, if DICOM

    # -- input -------------------------------------------------------------------------------------
    def show_input(self, volume, name: str = "CT", source=None):
        """Replace the input (and any results) with ``volume`` (a CTVolume), shown in every input view.
        ``source``: the path it was read from (`read_ct`); a DICOM one can get DICOM results (`explain`)."""
        self.clear()
        self.input_node = addVolumeNodeFromCTVolume(self.scene, volume, name)
        uid = volume.metadata.get("series_instance_uid")
        if source is not None and volume.metadata.get("source_format") == "DICOM" and uid:
            self.dicom_source = (str(Path(str(source).strip()).expanduser().resolve()), str(uid))
        self.set_window(self.window)
        display.showOverlay(self.scene, self.input_node, None)
        for name_ in INPUT_VIEWS:
            slice_node = layout.sliceNodeByLayoutName(self.scene, name_)
            if slice_node is not None:
                slice_node.SetSliceVisible(True)  # the slice planes in the 3D view
        return self.input_node

    def clear(self) -> None:
        """Cancel any run; remove the input, its results and their display/storage nodes."""
        self.controller.forget()
        for folder in hierarchy.findResultFolders(self.scene):
            hierarchy.removeResultFolder(self.scene, folder)
        if self.input_node is not None and self.input_node.GetScene() is not None:
            # item, node, then its display/storage nodes: a shown volume whose display node goes first
            # gets a new default one from the slice layer logic, which would be left behind
            hierarchy.removeNodeAndOwned(self.scene, self.input_node)
        self.input_node, self.overlay, self.right, self.dicom_source = None, summary.SALIENCY, "", None

    def set_window(self, window: str) -> None:
        """One of `WINDOWS` or "auto"; applied to the input and the counterfactuals (same grey levels)."""
        if window != "auto" and window not in WINDOWS:
            raise ValueError(f"unknown window {window!r}; choose one of auto, {', '.join(WINDOWS)}")
        self.window = window
        if self.input_node is None:
            return
        node = self.input_node.GetDisplayNode()
        if window == "auto":
            node.SetAutoWindowLevel(True)
        else:
            level, width = WINDOWS[window]
            node.SetAutoWindowLevel(False)
            node.SetWindowLevel(width, level)
        if self.result is not None:
            for counterfactual in self.result.counterfactuals.values():
                display.copyWindowLevel(self.input_node, counterfactual)

    # -- explain -----------------------------------------------------------------------------------
    @property
    def result(self):
        """ACATSlicerLib's `ExplanationNodes` of the last successful run, or None."""
        return self.controller.result

    def dicom_results_problem(self) -> str:
        """Why the input cannot get DICOM results, in one line ("" when it can)."""
        if self.input_node is None:
            return "open a CT first"
        if self.dicom_source is None:
            return "the CT was not read from a DICOM series, which the DICOM results refer to"
        return ""

    def explain(self, model: str, options: Optional[ExplainOptions] = None, dicom: bool = False,
                deidentify: bool = False) -> None:
        """Start explaining the input in the background (``options``: `ACATLogic.options.ExplainOptions`,
        default: all defaults); the page polls ``controller.poll`` and the result is shown when it succeeds.
        ``dicom``: the results folder also gets the DICOM results for PACS, referring to the input's DICOM series
        (``acat explain --dicom``; ``deidentify``: ``--deidentify``). Raises ValueError for a missing input or
        model, or DICOM results without a DICOM input, the controller's `AlreadyRunning` while a run goes on
        (which is left as it was: one run at a time, never two mixed)."""
        if self.input_node is None:
            raise ValueError("open a CT first")
        dicom_results = None
        if dicom:
            problem = self.dicom_results_problem()
            if problem:
                raise ValueError(f"no DICOM results: {problem}")
            path, uid = self.dicom_source
            dicom_results = DicomResults((path,), seriesUid=uid, deidentify=bool(deidentify))
        elif deidentify:
            raise ValueError("de-identifying applies to the DICOM results: choose DICOM results too")
        view = ViewOptions(show=False, opacity=self.opacity, percentile=self.percentile, sideBySide=False)
        request = ExplainRequest(model, options or ExplainOptions(), dicom_results)
        self.controller.start(self.input_node, request, view, onResult=self._show_new_result)

    def _show_new_result(self, result) -> None:
        """A run succeeded: the saliency over the CT, the default counterfactual beside it, slices on the map."""
        self.overlay = summary.SALIENCY
        self.right = summary.view_choices(result)["right_default"]
        self.show_results()
        self.focus_on_overlay()

    # -- display -----------------------------------------------------------------------------------
    def overlay_node(self):
        if self.result is None:
            return None
        kind, _, key = self.overlay.partition(":")
        return self.controller.loadMap("attention", key) if kind == "attention" else self.result.saliency

    def right_node(self):
        if self.result is None or not self.right:
            return None
        kind, _, key = self.right.partition(":")
        return self.controller.loadMap("difference" if kind == "difference" else "counterfactual", key)

    def show_results(self, overlay: Optional[str] = None, right: Optional[str] = None,
                     opacity: Optional[float] = None, percentile: Optional[float] = None) -> None:
        """The chosen overlay (percentile threshold, opacity) over the CT in every input view; the chosen
        counterfactual or difference map beside the axial view, slices linked."""
        if self.result is None:
            return
        choices = summary.view_choices(self.result)
        if overlay is not None:
            if overlay not in [c["value"] for c in choices["overlays"]]:
                raise ValueError(f"unknown overlay {overlay!r}")
            self.overlay = overlay
        if right is not None:
            if right and right not in [c["value"] for c in choices["rights"]]:
                raise ValueError(f"unknown view {right!r}")
            self.right = right
        self.opacity = self.opacity if opacity is None else min(max(float(opacity), 0.0), 1.0)
        self.percentile = self.percentile if percentile is None else min(max(float(percentile), 0.0), 100.0)
        node = self.overlay_node()
        display.applySaliencyThreshold(node, self.percentile, self.result.histogram(node))
        display.showOverlay(self.scene, self.result.inputNode, node, self.opacity)
        right_node = self.right_node()
        if right_node is not None and layout.sliceNodeByLayoutName(self.scene, self.counterfactual_view) is not None:
            layout.setSideBySideViews(self.scene, self.result.inputNode, right_node, node, self.opacity,
                                      leftView=AXIAL_VIEW, rightView=self.counterfactual_view)
            if self._mirror is None:
                self._mirror = SliceMirror(layout.sliceNodeByLayoutName(self.scene, AXIAL_VIEW),
                                           layout.sliceNodeByLayoutName(self.scene, self.counterfactual_view))

    def focus_on_overlay(self) -> Optional[np.ndarray]:
        """Move every slice view through the strongest part of the shown overlay inside the body; returns
        that point (RAS mm), or None for an empty map. The axial slice is the one holding most of the map
        above the percentile threshold within the body (CT above `display.BODY_HU`: a map's weight in the air
        around the head says nothing to look at), the point its weighted centre there."""
        node = self.overlay_node()
        if node is None:
            return None
        ras = display.overlayFocus(node, self.result.inputNode, self.percentile,
                                   logarithmic=not self.overlay.startswith("attention"))
        if ras is None:
            return None
        for n in range(self.scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
            self.scene.GetNthNodeByClass(n, "vtkMRMLSliceNode").JumpSliceByOffsetting(*ras)
        return ras

    # -- download ----------------------------------------------------------------------------------
    def export_zip(self, folder: Path, name: str = "acat-results.zip") -> Path:
        """The shown result as ``folder/name``: the results folder that ``acat explain`` wrote, as it is
        (the one the Slicer module exports; with its dicom/ folder when DICOM results were asked for), zipped; written under a temporary name and renamed. Raises
        ValueError with no result."""
        if self.result is None:
            raise ValueError("explain a CT first")
        if self.result.outDir is None or not Path(self.result.outDir).is_dir():
            raise ValueError("the results of this explanation are no longer available; explain the CT again")
        return download.zip_folder(self.result.outDir, Path(folder) / name, arcdir="acat-results")
