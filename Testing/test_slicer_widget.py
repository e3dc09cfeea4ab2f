"""The module as Slicer runs it: ACATSlicer.py itself - module, parameter node, widget, logic - on a real MRML
scene (slicer-core), with only Slicer's Qt layer stood in (Testing/slicer_gui.py builds the panel from the
real ACATSlicer.ui). The flow a user goes through: load the module, open its panel, a CT is selected, the
default model is preselected, Explain, progress, Cancel, results shown, the overlay and the view beside the
original switched, the threshold moved, the localisation scored, export; and the cases that failed inside
Slicer before: a lesion mask left empty (None), Explain clickable with the default model, the counterfactual
staying beside the original when the overlay changes.

The background run is a stand-in that writes what ``acat explain`` writes (the real child process runs in
Testing/test_slicer_runner.py and, through this widget, in the slow test at the end).
"""

from __future__ import annotations

import filecmp
import json
import time

import numpy as np
import pytest

pytest.importorskip("slicer", reason="the slicer-core wheel is not installed (pip install -e '.[slicer]')")

import slicer  # noqa: E402
import slicer_gui  # noqa: E402
from slicer_scene import slicer_scene_fixture  # noqa: E402

from ACATLogic.catalogue import DEFAULT_MODEL, find  # noqa: E402
from ACATLogic.io.itk_files import read_itk_file, write_itk_file  # noqa: E402
from ACATLogic.options import ExplainOptions  # noqa: E402
from ACATSlicerLib import layout  # noqa: E402
from ACATSlicerLib.request import MODEL_DEFAULT, ExplainRequest  # noqa: E402
from ACATSlicerLib.runner import CANCELLED, RUNNING, SUCCEEDED, ProgressEvent, RunOutcome  # noqa: E402
from ACATSlicerLib.selftest_case import syntheticHeadCT  # noqa: E402
from ACATSlicerLib.volume_nodes import addVolumeNode  # noqa: E402

slicer_scene = pytest.fixture(slicer_scene_fixture)
PROBABILITIES = {"none": 0.1, "left": 0.7, "right": 0.15, "both": 0.05}


class WritingRunner:
    """Stands in for the ``acat explain`` child: progress, then (``finish``) a results folder as the child
    writes it - the saliency hot in the patient's LEFT hemisphere, counterfactuals towards "none" and
    "abnormal" (the residual variant's decision targets), two attention masks, report.json with the device."""

    instances: list = []

    def __init__(self, finish: bool = True, device: str = "cpu"):
        self.finish, self.device, self.state = finish, device, "idle"
        WritingRunner.instances.append(self)

    def start(self, request, inputPath, outDir, onProgress=None):
        self.request, self.inputPath, self.outDir, self.onProgress = request, inputPath, outDir, onProgress
        self.state = RUNNING
        self.polls = 0

    def poll(self):
        self.polls += 1
        if self.onProgress is not None:
            self.onProgress(ProgressEvent(0.5, "explaining chunk 1/2", "explaining", 1.0, 2.0))
        if not self.finish or self.polls < 2:
            return None
        grid = read_itk_file(self.inputPath)
        k, j, i = np.indices(grid.voxels_hu.shape)
        K, J, I = grid.voxels_hu.shape
        hot = ((i - 0.72 * I) ** 2 + (j - J / 2) ** 2 + ((k - K / 2) * 2) ** 2) <= 6 ** 2
        saliency = np.where(hot, 1.0, 0.0).astype(np.float32)
        self.outDir.mkdir(parents=True)
        write_itk_file(grid.with_voxels(saliency), self.outDir / "saliency.nrrd")
        for label, change in (("none", -35.0), ("abnormal", 5.0)):
            write_itk_file(grid.with_voxels(grid.voxels_hu + change * hot), self.outDir / f"counterfactual_{label}.nrrd")
        for mask in ("early", "fused"):
            write_itk_file(grid.with_voxels(saliency * 0.5), self.outDir / f"attention_{mask}.nrrd")
        (self.outDir / "overview.png").write_bytes(b"\x89PNG not really")
        report = {"prediction": "left", "probabilities": PROBABILITIES, "device": self.device,
                  "model": {"id": "test-model", "version": "1"}, "method": self.request.options.method,
                  "trajectory": {"none": [PROBABILITIES, {**PROBABILITIES, "none": 0.9}]}}
        (self.outDir / "report.json").write_text(json.dumps(report))
        self.state = SUCCEEDED
        return RunOutcome(SUCCEEDED, 0, self.outDir, result={"event": "result"})

    def cancel(self, timeoutS=10.0):
        self.state = CANCELLED


@pytest.fixture
def gui(slicer_scene, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the controller's work and results folders
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    standIn = slicer_gui.Gui(slicer_scene.scene, tmp_path / "cache")
    standIn.install(monkeypatch)
    standIn.headless = slicer_scene
    WritingRunner.instances = []
    yield standIn
    for widget in standIn.widgets:  # as Slicer does when the module is unloaded
        widget.cleanup()


@pytest.fixture
def head(slicer_scene):
    voxels, ijk_to_ras = syntheticHeadCT()
    return addVolumeNode(slicer_scene.scene, voxels.astype(np.int16), "Head CT", ijkToRas=ijk_to_ras)


def openPanel(gui, runner=WritingRunner):
    """Slicer loading the module and opening its panel: the module object, the widget's setup, enter."""
    module = slicer_gui.loadModule()
    parent = slicer_gui.moduleParent()
    module.ACATSlicer(parent)
    widget = module.ACATSlicerWidget(slicer_gui.Widget("qMRMLWidget", "ACATSlicer", {}))
    widget.parent.isEntered = True
    gui.widgets.append(widget)
    widget.setup()
    if widget.logic is not None:
        widget.logic.runnerFactory = runner
    widget.enter()
    return module, widget


def runTimers(gui, widget, limit=200):
    """The GUI's event loop while the logic works: fire the module's timer until it stops."""
    for _ in range(limit):
        if not any(t.active for t in gui.timers):
            return
        gui.fireTimers()
        if widget.logic.busy:
            time.sleep(0.01)
    raise AssertionError("the module's timer never stopped")


def test_module_loads_and_the_panel_sets_up_with_the_default_model_selected_and_explain_clickable(gui, head):
    module, widget = openPanel(gui)
    assert "3D Slicer 5.10 or newer" in module.SUPPORTED and gui.startupSlots and gui.startupSlots[0][0] == "startupCompleted()"
    p = widget._parameterNode
    assert p is not None and p.node.GetScene() is gui.scene
    assert p.inputVolume is head and widget.ui.inputVolumeSelector.currentNode() is head
    # the default model is preselected, after the parameter node exists (the bug: the model stayed empty)
    assert p.model == str(find(DEFAULT_MODEL))
    assert widget.ui.modelSelector.currentData == str(find(DEFAULT_MODEL))
    assert widget.ui.explainButton.enabled, widget.ui.explainButton.toolTip
    # an empty lesion mask is a valid state of the parameter node (the bug: None in a node union)
    assert p.lesionMask is None and widget.ui.lesionMaskSelector.currentNode() is None
    # the option widgets are filled from ACATLogic's choices and show the parameter node's values
    assert widget.ui.methodComboBox.currentText == "counterfactual"
    assert [t for t, _ in widget.ui.variantComboBox.items] == [MODEL_DEFAULT, "residual", "paper"]
    assert [t for t, _ in widget.ui.referenceComboBox.items][0] == MODEL_DEFAULT
    assert widget.ui.opacitySlider.value == pytest.approx(p.opacity)
    # nothing is running: no progress bar, Cancel and Export disabled
    assert not widget.ui.cancelButton.enabled and not widget.ui.progressBar.visible
    assert not widget.ui.exportButton.enabled


def test_panel_edits_become_the_childs_options_and_the_scene_keeps_them(gui, head):
    _, widget = openPanel(gui)
    ui, p = widget.ui, widget._parameterNode
    ui.methodComboBox.choose("gradient")
    ui.deviceComboBox.choose("cpu")
    ui.variantComboBox.choose("paper")
    ui.stepsSpinBox.value = 7
    ui.stepSizeSpinBox.value = 0.05
    ui.targetsLineEdit.text = "none, left"
    assert (p.method, p.device, p.variant, p.steps, p.stepSize, p.targets) == (
        "gradient", "cpu", "paper", 7, 0.05, "none, left")
    request = ExplainRequest.fromPanel(p)
    assert request.options == ExplainOptions(method="gradient", device="cpu", variant="paper", steps=7,
                                             step_size=0.05, targets=("none", "left"))
    # the node holds them as text: a second view of the same node (a reloaded scene) reads the same values
    again = type(p)(p.node)
    assert again.values() == p.values()
    # the node changed by script shows in the panel
    p.steps = 12
    assert ui.stepsSpinBox.value == 12
    with pytest.raises(ValueError, match="must be one of"):
        p.method = "no-such-method"
    with pytest.raises(ValueError, match="vtkMRMLLabelMapVolumeNode or vtkMRMLSegmentationNode"):
        p.lesionMask = head


def test_explain_progress_results_overlay_beside_threshold_and_export(gui, head, tmp_path):
    _, widget = openPanel(gui)
    ui, scene = widget.ui, gui.scene
    before = scene.GetNumberOfNodes()
    assert ui.explainButton.click()
    assert widget.logic.running and ui.cancelButton.enabled and ui.progressBar.visible
    assert not ui.explainButton.enabled  # one run at a time
    runTimers(gui, widget)
    assert gui.errors == []
    assert ui.statusLabel.text.startswith("Done in") and "on cpu" in ui.statusLabel.text
    assert "Computed on: cpu" in ui.probabilitiesLabel.text and "Prediction: left" in ui.probabilitiesLabel.text
    result = widget.logic.result
    assert scene.GetNumberOfNodes() > before and not ui.cancelButton.enabled and ui.exportButton.enabled
    red, yellow = (layout.compositeNodeByLayoutName(scene, v) for v in ("Red", "Yellow"))
    assert red.GetBackgroundVolumeID() == head.GetID() and red.GetForegroundVolumeID() == result.saliency.GetID()
    # towards healthy ("none") beside a "left" prediction; the other maps are not read yet
    assert yellow.GetBackgroundVolumeID() == result.counterfactuals["none"].GetID()
    assert set(result.counterfactuals) == {"none"} and not result.attention and not result.differences
    assert ui.besideSelector.currentData == "counterfactual:none"
    assert [d for _, d in ui.overlaySelector.items] == ["", "early", "fused"]

    # the overlay switched to an attention mask: read in the background, shown over the CT only -
    # the counterfactual stays beside the original (the bug: it was replaced by the CT + overlay)
    ui.overlaySelector.choose("attention: fused")
    runTimers(gui, widget)
    fused = result.attention["fused"]
    assert red.GetForegroundVolumeID() == fused.GetID()
    assert yellow.GetBackgroundVolumeID() == result.counterfactuals["none"].GetID()
    assert yellow.GetForegroundVolumeID() is None
    ui.overlaySelector.choose("saliency")
    assert red.GetForegroundVolumeID() == result.saliency.GetID()
    assert yellow.GetBackgroundVolumeID() == result.counterfactuals["none"].GetID()

    # beside the original: the difference map, then the other counterfactual
    ui.besideSelector.choose("difference towards none (HU)")
    runTimers(gui, widget)
    difference = result.differences["none"]
    assert yellow.GetBackgroundVolumeID() == difference.GetID()
    assert slicer.util.arrayFromVolume(difference).min() == pytest.approx(-35.0)
    ui.besideSelector.choose("counterfactual towards abnormal")
    runTimers(gui, widget)
    assert yellow.GetBackgroundVolumeID() == result.counterfactuals["abnormal"].GetID()
    assert red.GetForegroundVolumeID() == result.saliency.GetID()

    # the threshold slider: a table look-up on the map's histogram; 0 is never coloured
    display = result.saliency.GetDisplayNode()
    ui.thresholdSlider.value = 50.0
    assert display.GetApplyThreshold() and display.GetLowerThreshold() >= 1.0
    ui.opacitySlider.value = 0.25
    assert red.GetForegroundOpacity() == pytest.approx(0.25)

    # export copies the child's folder as it is
    gui.folder = str(tmp_path / "exports")
    (tmp_path / "exports").mkdir()
    ui.exportButton.click()
    exported = tmp_path / "exports" / "ACAT results"
    assert gui.errors == [] and "Exported" in ui.statusLabel.text
    names = sorted(p.name for p in exported.iterdir())
    assert names == sorted(p.name for p in result.outDir.iterdir())
    assert all(filecmp.cmp(exported / n, result.outDir / n, shallow=False) for n in names)


def test_cancel_leaves_the_scene_unchanged_and_explain_clickable_again(gui, head, tmp_path):
    _, widget = openPanel(gui, runner=lambda: WritingRunner(finish=False))
    ui = widget.ui
    before = gui.scene.GetNumberOfNodes()
    ui.explainButton.click()
    for _ in range(500):  # until the child reports progress (the input file is written first, in a worker)
        gui.fireTimers()
        if ui.progressBar.value == 50:
            break
        time.sleep(0.01)
    assert widget.logic.running and ui.progressBar.value == 50 and "explaining chunk 1/2" in ui.statusLabel.text
    assert ui.cancelButton.click()
    assert not widget.logic.running and "Cancelled" in ui.statusLabel.text
    assert gui.scene.GetNumberOfNodes() == before and widget.logic.result is None
    assert ui.explainButton.enabled and not ui.cancelButton.enabled
    assert WritingRunner.instances[-1].state == CANCELLED
    assert not list(tmp_path.glob("acat-explain-*"))  # the input file's folder is gone
    assert [p for p in tmp_path.glob("acat-results-*/*")] == []  # and the run's results folder


def test_localisation_against_a_labelmap_then_none_again_and_exported_beside_the_results(gui, head, tmp_path):
    _, widget = openPanel(gui)
    ui, p = widget.ui, widget._parameterNode
    ui.explainButton.click()
    runTimers(gui, widget)
    lesion = slicer.util.arrayFromVolume(widget.logic.result.saliency) > 0
    labelmap = addVolumeNode(gui.scene, lesion.astype(np.uint8), "lesion", referenceNode=head,
                             nodeClass="vtkMRMLLabelMapVolumeNode")
    ui.lesionMaskSelector.choose(labelmap)
    assert p.lesionMask is labelmap
    ui.localisationButton.click()
    assert gui.errors == [] and ui.localisationLabel.text.startswith("Hit: yes")
    gui.folder = str(tmp_path)
    ui.exportButton.click()
    exported = tmp_path / "ACAT results"
    score = json.loads((exported / "localisation.json").read_text())
    assert score["hit"] is True and score["dice"] == pytest.approx(1.0) and score["lesion_file"] == "lesion_mask.nrrd"
    assert read_itk_file(exported / "lesion_mask.nrrd").voxels_hu.sum() == lesion.sum()
    ui.lesionMaskSelector.choose(None)
    assert p.lesionMask is None
    ui.localisationButton.click()
    assert gui.errors and "select a lesion" in gui.errors[-1]


def test_added_models_are_offered_again_in_the_next_session(gui, head, tmp_path, monkeypatch):
    from bundles import make_random_bundle

    bundle = make_random_bundle(tmp_path / "my-model")
    _, widget = openPanel(gui)
    gui.folder = str(bundle)
    widget.ui.addModelButton.click()
    assert gui.errors == []
    assert widget._parameterNode.model == str(bundle.resolve())
    assert json.loads(gui.settings["ACAT/AddedModels"]) == [str(bundle.resolve())]
    # a new Slicer session: a new scene, the same application settings
    for fresh in slicer_scene_fixture():
        nextGui = slicer_gui.Gui(fresh.scene, tmp_path / "cache", settings=gui.settings)
        nextGui.install(monkeypatch)
        _, nextWidget = openPanel(nextGui)
        offered = [d for _, d in nextWidget.ui.modelSelector.items]
        assert str(bundle.resolve()) in offered
        assert nextWidget._parameterNode.model == str(find(DEFAULT_MODEL))  # still the default preselected
        nextWidget.cleanup()


def test_on_an_older_slicer_the_panel_says_which_version_to_install(gui, monkeypatch):
    old = slicer_gui.Gui(gui.scene, gui.cacheDir, version=(5, 8))
    old.install(monkeypatch)
    parent = slicer_gui.moduleParent()
    module = slicer_gui.loadModule()
    module.ACATSlicer(parent)
    assert "needs 3D Slicer 5.10 or newer" in parent.helpText and old.startupSlots == []
    widget = module.ACATSlicerWidget(slicer_gui.Widget("qMRMLWidget", "ACATSlicer", {}))
    gui.widgets.append(widget)
    widget.setup()
    label = widget.layout.children()[-1]
    assert "needs 3D Slicer 5.10 or newer; this is Slicer 5.8" in label.text and widget.logic is None


def test_a_failed_run_shows_one_error_and_adds_nothing(gui, head):
    class FailingRunner(WritingRunner):
        def poll(self):
            self.state = "failed"
            return RunOutcome("failed", 2, self.outDir, errorMessage="input.nrrd: not a CT")

    _, widget = openPanel(gui, runner=FailingRunner)
    before = gui.scene.GetNumberOfNodes()
    widget.ui.explainButton.click()
    runTimers(gui, widget)
    assert gui.errors == ["The explanation failed:\ninput.nrrd: not a CT"]
    assert gui.scene.GetNumberOfNodes() == before and widget.ui.explainButton.enabled


def test_scene_close_forgets_the_results_and_their_folders(gui, head, tmp_path):
    _, widget = openPanel(gui)
    widget.ui.explainButton.click()
    runTimers(gui, widget)
    outDir = widget.logic.result.outDir
    assert outDir.is_dir()
    gui.scene.InvokeEvent(gui.scene.StartCloseEvent)
    for folder in list(__import__("ACATSlicerLib.hierarchy", fromlist=["x"]).findResultFolders(gui.scene)):
        __import__("ACATSlicerLib.hierarchy", fromlist=["x"]).removeResultFolder(gui.scene, folder)
    gui.scene.InvokeEvent(gui.scene.EndCloseEvent)
    assert widget.logic.result is None and not outDir.exists()
    assert widget._parameterNode is not None  # the panel is entered: a parameter node again


def test_the_real_acat_explain_child_through_the_widget_lands_its_results_in_mrml(gui, head, tmp_path):
    """Not the WritingRunner: Explain starts the real ``acat explain`` child (ExplainProcess, a tiny random
    bundle, the CPU); its progress reaches the panel and its results folder lands in MRML as the stand-in's does."""
    from bundles import make_random_bundle

    from ACATSlicerLib.loading import LEVELS, LOG_FLOOR, levelValue
    from ACATSlicerLib.runner import ExplainProcess

    bundle = make_random_bundle(tmp_path / "tiny", size=32, slices=3, steps=3)
    _, widget = openPanel(gui, runner=ExplainProcess)
    ui, p, scene = widget.ui, widget._parameterNode, gui.scene
    gui.folder = str(bundle)
    ui.addModelButton.click()
    ui.deviceComboBox.choose("cpu")
    assert gui.errors == [] and p.model == str(bundle.resolve()) and p.device == "cpu"
    assert ui.explainButton.click()
    progress, deadline = set(), time.monotonic() + 300
    while any(t.active for t in gui.timers) and time.monotonic() < deadline:
        gui.fireTimers()
        progress.add(ui.progressBar.value)
        time.sleep(0.05)
    assert gui.errors == [] and not widget.logic.busy, ui.statusLabel.text
    assert ui.statusLabel.text.startswith("Done in") and ui.statusLabel.text.endswith("on cpu.")
    assert len(progress - {0}) >= 2  # the child's progress lines moved the bar

    result = widget.logic.result
    report = json.loads((result.outDir / "report.json").read_text())
    assert report["device"] == "cpu" and report["model"]["id"] == "random-brain_stroke"
    assert f"Prediction: {report['prediction']}</b>" in ui.probabilitiesLabel.text
    for label, probability in report["probabilities"].items():
        assert f"{label} {probability:.2f}" in ui.probabilitiesLabel.text
    # the saliency over the CT in the Red view, the counterfactual towards the healthy class beside it
    red, yellow = (layout.compositeNodeByLayoutName(scene, v) for v in ("Red", "Yellow"))
    assert red.GetBackgroundVolumeID() == head.GetID() and red.GetForegroundVolumeID() == result.saliency.GetID()
    shown = result.shownCounterfactualKey()
    assert yellow.GetBackgroundVolumeID() == result.counterfactuals[shown].GetID()
    assert ui.besideSelector.currentData == f"counterfactual:{shown}"
    # the nodes hold the child's files, on the CT's grid (display copies: the map as 0..255 on `loading`'s logarithmic scale, HU as int16)
    saliency = read_itk_file(result.outDir / "saliency.nrrd").voxels_hu
    shownSaliency = slicer.util.arrayFromVolume(result.saliency)
    assert shownSaliency.shape == slicer.util.arrayFromVolume(head).shape == saliency.shape
    exact = np.clip(saliency, 0, 1)  # within half a logarithmic level of the file's values
    half_level = np.expm1(0.5 * np.log1p(1 / LOG_FLOOR) / LEVELS)
    assert np.all(np.abs(levelValue(shownSaliency) - exact) <= (exact + LOG_FLOOR) * half_level + 1e-6)
    counterfactual = read_itk_file(result.outDir / f"counterfactual_{shown}.nrrd").voxels_hu
    shownCounterfactual = slicer.util.arrayFromVolume(result.counterfactuals[shown])
    assert shownCounterfactual.dtype == np.int16
    assert np.abs(shownCounterfactual - np.rint(counterfactual)).max() == 0
    # the attention masks the child wrote are offered as overlays
    masks = sorted(f.stem.removeprefix("attention_") for f in result.outDir.glob("attention_*.nrrd"))
    assert masks and sorted(d for _, d in ui.overlaySelector.items if d) == masks
    assert saliency.max() > 0 and WritingRunner.instances == []  # a real map, from the real child
