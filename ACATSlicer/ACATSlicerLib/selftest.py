"""The checks of the module's self-test, without Qt: run inside Slicer by ``ACATSlicerTest`` and headless
by Testing/test_slicer_first_use.py, on the generated Sample Data case with a tiny random model.

Each returns a list of problems, one sentence each; empty means passed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from . import layout
from .runner import CANCELLED, SUCCEEDED


def writeSelfTestDicom(folder) -> str:
    """Write the generated head CT (`selftest_case.syntheticHeadCT`) as a CT DICOM series into the new folder
    ``folder`` (ACATLogic's writer: int16 HU, no patient identity); returns its SeriesInstanceUID, for
    ``DICOMUtils.loadSeriesByUID`` after ``DICOMUtils.importDicom``."""
    import pydicom

    from ACATLogic.io import write_dicom_series
    from ACATLogic.volume import CTVolume

    from .selftest_case import syntheticHeadCT
    from .volume_nodes import geometryFromIjkToRas

    voxels, ijkToRas = syntheticHeadCT()
    spacing, origin, direction = geometryFromIjkToRas(ijkToRas)
    write_dicom_series(CTVolume(voxels, spacing, origin, direction, {"modality": "CT"}), Path(folder),
                       series_description="ACAT self-test head CT")
    first = next(p for p in sorted(Path(folder).iterdir()) if p.is_file())
    return str(pydicom.dcmread(first, stop_before_pixels=True).SeriesInstanceUID)


def explainTwiceProblems(controller, inputNode, request, timeoutS: float = 600.0) -> list[str]:
    """Explain ``inputNode`` (``request``: `request.ExplainRequest`) with ``controller``
    (`controller.ExplainController`, e.g. ACATSlicerLogic): progress to 100%, result volumes on the input's
    grid, the saliency as the Red view's foreground, a probability plot; then again: the results replaced,
    not duplicated."""
    progress = []
    controller.start(inputNode, request, onProgress=progress.append)
    outcome = controller.wait(timeoutS)
    if outcome is None or outcome.state != SUCCEEDED:
        return [f"the explanation did not succeed: {outcome.errorMessage if outcome else 'no outcome'}"]
    problems = [] if progress and progress[-1].fraction == 1.0 else ["the progress did not reach 100%"]
    result, dims = outcome.result, inputNode.GetImageData().GetDimensions()
    problems += [f"{stem} is not on the input's grid" for stem, node in result.volumeNodes().items()
                 if node.GetImageData().GetDimensions() != dims]
    if result.outDir is None or not (result.outDir / "report.json").is_file():
        problems.append("the results folder of the child was not kept")
    composite = layout.compositeNodeByLayoutName(controller.scene, "Red")
    if composite is None or composite.GetForegroundVolumeID() != result.saliency.GetID():
        problems.append("the saliency is not the foreground of the Red slice view")
    if result.probabilityChart is None or not result.probabilitySeries:
        problems.append("there is no probability-per-step plot")
    count = controller.scene.GetNumberOfNodes()
    controller.start(inputNode, request)
    again = controller.wait(timeoutS)
    if again is None or again.state != SUCCEEDED:
        problems.append("the second explanation did not succeed")
    elif controller.scene.GetNumberOfNodes() != count:
        problems.append(f"the second explanation left {controller.scene.GetNumberOfNodes()} nodes, not {count}")
    return problems


def cancelProblems(controller, inputNode, request, pause: Callable[[], None] = lambda: time.sleep(2.0)
                   ) -> list[str]:
    """Start a long explanation, ``pause`` (inside Slicer: a delayDisplay), cancel: nothing is added."""
    count = controller.scene.GetNumberOfNodes()
    controller.start(inputNode, request)
    pause()
    controller.cancel()
    outcome = controller.poll()
    problems = [] if outcome is not None and outcome.state == CANCELLED else ["the run was not cancelled"]
    if controller.scene.GetNumberOfNodes() != count:
        problems.append("cancelling changed the scene")
    return problems
