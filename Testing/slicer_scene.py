"""A real MRML scene set up as the Slicer application does, without the GUI (slicer-core wheel).

Application logic, colour logic with the default colour nodes ("Colors"), volumes logic ("Volumes"),
subject hierarchy, the slice orientation presets, a layout logic with the Four-Up arrangement (Red,
Green, Yellow slice nodes) and one slice logic per slice node, each owning its composite node. Teardown
detaches every logic before clearing the scene (clearing with logics attached has crashed).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT / "ACATSlicer", ROOT):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import slicer  # noqa: E402
import vtk  # noqa: E402


class HeadlessScene:
    def __init__(self, sliceSize: int = 128):
        self.scene = slicer.vtkMRMLScene()
        self.app = slicer.vtkSlicerApplicationLogic()
        self.app.SetMRMLScene(self.scene)
        self.colors = self.app.GetColorLogic()
        self.colors.SetMRMLScene(self.scene)
        self.colors.AddDefaultColorNodes()
        self.app.SetModuleLogic("Colors", self.colors)
        self.app.SetSliceLogics(vtk.vtkCollection())
        self.app.SetViewLogics(vtk.vtkCollection())
        self.volumes = slicer.vtkSlicerVolumesLogic()
        self.volumes.SetMRMLScene(self.scene)
        self.volumes.SetMRMLApplicationLogic(self.app)
        self.app.SetModuleLogic("Volumes", self.volumes)
        self.segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
        self.segmentations.SetMRMLScene(self.scene)
        self.segmentations.SetMRMLApplicationLogic(self.app)
        self.app.SetModuleLogic("Segmentations", self.segmentations)
        slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(self.scene, True)
        self.layout = slicer.vtkMRMLLayoutLogic()
        self.layout.SetMRMLScene(self.scene)
        self.layout.GetLayoutNode().SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
        self.sliceLogics = {}
        for n in range(self.scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
            sliceNode = self.scene.GetNthNodeByClass(n, "vtkMRMLSliceNode")
            sliceNode.SetDimensions(sliceSize, sliceSize, 1)
            logic = slicer.vtkMRMLSliceLogic()
            logic.SetMRMLApplicationLogic(self.app)
            logic.SetMRMLScene(self.scene)
            logic.SetSliceNode(sliceNode)
            self.app.GetSliceLogics().AddItem(logic)
            self.sliceLogics[sliceNode.GetLayoutName()] = logic
        # slicer.util helpers (arrayFromVolume, ...) look for these module-level names
        slicer.mrmlScene = self.scene
        slicer.modules = types.SimpleNamespace(volumes=types.SimpleNamespace(logic=lambda: self.volumes),
                                               segmentations=types.SimpleNamespace(logic=lambda: self.segmentations))

    def nodeCount(self, className: str = "vtkMRMLNode") -> int:
        return self.scene.GetNumberOfNodesByClass(className)

    def compositeImage(self, layoutName: str = "Red") -> np.ndarray:
        """Slicer's composited RGBA slice image (background + foreground layers) as (H, W, 4) uint8."""
        from vtk.util.numpy_support import vtk_to_numpy

        logic = self.sliceLogics[layoutName]
        logic.FitSliceToAll()
        logic.GetSliceNode().UpdateMatrices()
        connection = logic.GetImageDataConnection()
        producer = connection.GetProducer()
        producer.Update()
        image = producer.GetOutputDataObject(connection.GetIndex())
        w, h, _ = image.GetDimensions()
        return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(h, w, -1).copy()

    def close(self) -> None:
        for logic in self.sliceLogics.values():
            logic.SetMRMLScene(None)
        self.app.GetSliceLogics().RemoveAllItems()
        self.layout.SetMRMLScene(None)
        self.segmentations.SetMRMLScene(None)
        self.volumes.SetMRMLScene(None)
        self.colors.SetMRMLScene(None)
        self.app.SetMRMLScene(None)
        self.scene.Clear(True)
        slicer.mrmlScene = None


def slicer_scene_fixture():
    """Body of the ``slicer_scene`` fixture that the test modules declare."""
    headless = HeadlessScene()
    try:
        yield headless
    finally:
        headless.close()
