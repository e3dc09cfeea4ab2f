"""The module's own self-test (``ACATSlicerTest`` in ACATSlicer.py, what "Reload and Test" runs inside Slicer),
run headless as the widget tests run the module: real MRML (slicer-core), the real background ``acat explain``
child, Slicer's own DICOM reader; stood in are only Qt and the DICOM database's bookkeeping
(Testing/slicer_gui.py). Both of its paths: the DICOM series explained twice and cancelled, and the skip where
torch cannot be imported.
"""

from __future__ import annotations

import logging
import sys

import pytest

pytest.importorskip("slicer", reason="the slicer-core wheel is not installed (pip install -e '.[slicer]')")

import slicer  # noqa: E402
import slicer_gui  # noqa: E402
from test_slicer_widget import gui, slicer_scene  # noqa: E402,F401 - the same fixtures

from ACATSlicerLib import layout  # noqa: E402
from ACATSlicerLib.selftest_case import syntheticHeadCT  # noqa: E402


def test_the_self_test_explains_a_dicom_series_loaded_through_the_database_then_cancels(gui, caplog):
    gui.delayDisplaySleeps = True  # "Running, then cancelling": the child runs 3 s before Cancel, as in Slicer
    module = slicer_gui.loadModule()
    test = module.ACATSlicerTest()
    with caplog.at_level(logging.INFO):
        test.runTest()
    test.doCleanups()
    assert "Explain test passed" in gui.displayed and "Cancel test passed" in caplog.text
    assert not any("skipped" in m for m in gui.displayed)
    # the CT came from the DICOM series, through the database, by Slicer's reader: one load per test
    voxels, _ = syntheticHeadCT()
    assert len(gui.dicomLoads) == 2 and all(files == voxels.shape[0] for _, files, _ in gui.dicomLoads)
    # what the Cancel test left: its own DICOM volume, no result; the Explain test's results were cleared by setUp
    scene = gui.scene
    ct = scene.GetNodeByID(gui.dicomLoads[1][2])
    assert ct is not None and ct.GetImageData().GetDimensions() == voxels.shape[::-1]
    assert slicer.util.arrayFromVolume(ct).max() == pytest.approx(voxels.max(), abs=1)
    assert scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 1
    assert layout.compositeNodeByLayoutName(scene, "Red").GetForegroundVolumeID() is None


def test_the_self_test_is_skipped_with_its_reason_when_torch_cannot_be_imported(gui, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError in this test only
    with pytest.raises(ImportError):
        import torch  # noqa: F401
    module = slicer_gui.loadModule()
    test = module.ACATSlicerTest()
    before = gui.scene.GetNumberOfNodes()
    with caplog.at_level(logging.WARNING):
        test.runTest()
    reason = "torch>=2.4 not installed: press Explain once to install them"
    assert gui.displayed == ["ACAT self-test skipped: " + reason]
    assert f"ACAT self-test skipped: {reason}" in caplog.text
    assert gui.dicomLoads == [] and gui.scene.GetNumberOfNodes() == before  # neither test ran


def test_the_self_test_is_skipped_on_an_older_slicer_with_the_version_it_needs(gui, monkeypatch):
    old = slicer_gui.Gui(gui.scene, gui.cacheDir, version=(5, 8))
    old.install(monkeypatch)
    test = slicer_gui.loadModule().ACATSlicerTest()
    test.runTest()
    assert len(old.displayed) == 1 and "needs 3D Slicer 5.10 or newer" in old.displayed[0]
    assert old.dicomLoads == []
