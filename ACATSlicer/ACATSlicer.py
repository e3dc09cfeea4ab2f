"""ACAT Explain: what a CT classifier sees, as overlays and counterfactual volumes in 3D Slicer.

Slicer's scripted-module template order: module, parameter node, widget, logic, test. The module is thin:
the widget talks to the logic only, which is ACATSlicerLib's `ExplainController` (shared with the web viewer,
tested headless) plus the parameter node; the science (ACATLogic) runs as ``acat explain`` in a background
PythonSlicer process, so the GUI never freezes.
"""

import logging
import os
import tempfile
from pathlib import Path
from typing import Annotated, Optional, Union

import vtk

import qt
import slicer
from slicer import vtkMRMLLabelMapVolumeNode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from ACATSlicerLib import dependencies, display, paths, sample_data, selftest
from ACATSlicerLib.controller import ExplainController
from ACATSlicerLib.layout import ViewOptions
from ACATSlicerLib.request import MODEL_DEFAULT, ExplainRequest
from ACATSlicerLib.runner import CANCELLED, SUCCEEDED, ExplainProcess

paths.ensureACATLogicImportable()
from ACATLogic.options import DEVICES, METHODS, REFERENCES, ExplainOptions  # noqa: E402 - stdlib only, no torch

RESEARCH_USE = "Research use only - not for diagnosis or any clinical decision."
PAPER = ('Fontanella A. et al., "ACAT: Adversarial Counterfactual Attention for Classification and Detection '
         'in Medical Imaging", Proceedings of the 40th International Conference on Machine Learning (ICML 2023).')


#
# ACATSlicer
#


class ACATSlicer(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("ACAT Explain")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Quantification")]
        self.parent.dependencies = []
        self.parent.contributors = ["ACAT for 3D Slicer contributors"]
        self.parent.helpText = _(
            "<b>{researchUse}</b><br>Explains the prediction of a CT classifier (brain stroke, lung COVID-19): "
            "the predicted class and its probabilities, a saliency overlay showing where the model looked, and "
            "counterfactual volumes - the scan as the model thinks it would look as another class - beside the "
            "original. Select a CT volume and a model, then press Explain. The work runs in a background process; "
            "Cancel stops it and leaves the scene unchanged. Method: ACAT, adversarial counterfactual attention "
            "({paper})").format(researchUse=_(RESEARCH_USE), paper=PAPER)
        self.parent.acknowledgementText = _(
            "The method is from: {paper} This module re-implements it for 3D Slicer; the models shipped with it "
            "are trained on SIMULATED data and are not the paper's models.").format(paper=PAPER)
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData() -> None:
    """The generated self-test case (head CT + lesion labelmap) in the Sample Data module, category "ACAT"."""
    import SampleData

    icon = os.path.join(os.path.dirname(__file__), "Resources", "Icons", "ACATSlicer.png")
    for source in sample_data.sampleDataSources(Path(slicer.app.cachePath) / "ACAT", thumbnailFileName=icon):
        SampleData.SampleDataLogic.registerCustomSampleDataSource(**source)


#
# ACATSlicerParameterNode
#


@parameterNodeWrapper
class ACATSlicerParameterNode:
    """The panel's state, saved with the scene. Its explain options are `ExplainOptions` fields, camelCase."""

    inputVolume: vtkMRMLScalarVolumeNode
    model: str = ""  # a bundle folder; the model selector is filled from the bundles found
    method: Annotated[str, Choice(list(METHODS))] = "counterfactual"
    device: Annotated[str, Choice(list(DEVICES))] = "auto"
    steps: Annotated[int, WithinRange(0, 1000)] = 0
    alpha: Annotated[float, WithinRange(0.0, 10000.0)] = 0.0
    stepSize: Annotated[float, WithinRange(0.0, 10.0)] = 0.0
    targets: str = ""
    reference: Annotated[str, Choice([MODEL_DEFAULT, *REFERENCES])] = MODEL_DEFAULT
    opacity: Annotated[float, WithinRange(0.0, 1.0)] = display.DEFAULT_OPACITY
    thresholdPercentile: Annotated[float, WithinRange(0.0, 99.9)] = display.DEFAULT_PERCENTILE
    lesionMask: Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode]


#
# ACATSlicerWidget
#


class ACATSlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._timer = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/ACATSlicer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = ACATSlicerLogic()
        self.ui.researchUseLabel.text = _(RESEARCH_USE)

        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.connect("timeout()", self.onTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.explainButton.connect("clicked(bool)", self.onExplainButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.addModelButton.connect("clicked(bool)", self.onAddModelButton)
        self.ui.exportButton.connect("clicked(bool)", self.onExportButton)
        self.ui.localisationButton.connect("clicked(bool)", self.onLocalisationButton)
        self.ui.modelSelector.connect("currentIndexChanged(int)", self.onModelSelected)
        self.ui.attentionMaskSelector.connect("currentIndexChanged(int)", self.onAttentionMaskSelected)
        self.refreshModels()
        self.initializeParameterNode()
        self._setRunning(False)

    def cleanup(self) -> None:
        self.logic.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.logic.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def setParameterNode(self, inputParameterNode: Optional[ACATSlicerParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            self.onParameterNodeModified()

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        p = self._parameterNode
        ready = bool(p and p.inputVolume and p.model)
        self.ui.explainButton.enabled = ready and not self.logic.running
        self.ui.explainButton.toolTip = _("Explain the prediction") if ready else _("Select a CT volume and a model")
        if p:
            self.logic.updateDisplay(p.opacity, p.thresholdPercentile)

    def refreshModels(self, select: str = "") -> None:
        self.ui.modelSelector.blockSignals(True)
        self.ui.modelSelector.clear()
        for choice in self.logic.modelChoices():
            self.ui.modelSelector.addItem(choice.title, str(choice.path))
        self.ui.modelSelector.blockSignals(False)
        wanted = select or (self._parameterNode.model if self._parameterNode else "")
        index = self.ui.modelSelector.findData(wanted) if wanted else -1
        self.ui.modelSelector.setCurrentIndex(index if index >= 0 else 0)
        self.onModelSelected()

    def onModelSelected(self, index=None) -> None:
        if self._parameterNode is not None:
            self._parameterNode.model = self.ui.modelSelector.currentData or ""

    def onAddModelButton(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(self.parent, _("Select a model bundle folder (with model.json)"))
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay(_("This folder is not a valid ACAT model bundle."), waitCursor=True):
            if self.ensureDependencies():
                self.refreshModels(select=str(self.logic.addModel(folder).path))

    def ensureDependencies(self) -> bool:
        """True when every package is present; else list them, ask once, install with progress."""
        steps = dependencies.installSteps(dependencies.missingRequirements(), dependencies.pyTorchUtilsAvailable())
        if not steps:
            return True
        packages = "\n".join(f"  - {step.description}" for step in steps)
        if not slicer.util.confirmOkCancelDisplay(
                _("ACAT needs these Python packages, which are not installed yet:\n{packages}\n\nInstall them now? "
                  "This needs a network connection and may take several minutes.").format(packages=packages),
                windowTitle=_("Install ACAT dependencies")):
            return False
        dialog = slicer.util.createProgressDialog(parent=self.parent, maximum=len(steps),
                                                  windowTitle=_("Installing ACAT dependencies"))

        def progress(done, total, step):
            if dialog.wasCanceled:
                raise RuntimeError(_("Installation cancelled; press Explain to resume it."))
            dialog.value = done
            dialog.labelText = (_("Installing {package} ({number} of {total})...").format(
                package=step.description, number=done + 1, total=total) if step else _("Installed."))
            slicer.app.processEvents()

        installers = {dependencies.PIP: slicer.util.pip_install, dependencies.PYTORCH_UTILS: self._installTorch}
        try:
            dependencies.runInstallSteps(steps, installers, progress)
        finally:
            dialog.close()
        return True

    @staticmethod
    def _installTorch(versionRequirement: str) -> None:
        import PyTorchUtils  # the PyTorch extension: the torch build that matches this computer's GPU

        if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                         torchVersionRequirement=versionRequirement) is None:
            raise RuntimeError(_("the PyTorch extension did not install torch"))

    def onExplainButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Cannot start the explanation."), waitCursor=True):
            if not self.ensureDependencies():
                return
            self.logic.startExplain(self._parameterNode, onProgress=self.onProgress)
            self._started()

    def _started(self) -> None:
        self._setRunning(True)
        self.ui.statusLabel.text = _("Starting...")
        self._timer.start()

    def onCancelButton(self) -> None:
        self.logic.cancel()
        self._timer.stop()
        self._setRunning(False)
        self.ui.statusLabel.text = _("Cancelled: the scene was left unchanged.")

    def onProgress(self, event) -> None:
        self.ui.progressBar.value = int(round(100 * event.fraction))
        eta = "" if event.etaS is None else _(" - about {seconds} s left").format(seconds=int(round(event.etaS)))
        self.ui.statusLabel.text = f"{event.message}{eta}"

    def onTimer(self) -> None:
        outcome = self.logic.poll()
        if outcome is None:
            return
        self._timer.stop()
        self._setRunning(False)
        if outcome.state == SUCCEEDED:
            self.ui.statusLabel.text = _("Done in {seconds:.0f} s.").format(seconds=outcome.elapsedS)
            self.showResultSummary(outcome.result)
        elif outcome.state != CANCELLED and not self.offerCpuRetry(outcome):
            self.ui.statusLabel.text = _("Failed.")
            slicer.util.errorDisplay(_("The explanation failed:\n{message}").format(message=outcome.errorMessage))

    def offerCpuRetry(self, outcome) -> bool:
        """Out of GPU memory: ask once whether to run again on the CPU; True if that run started."""
        if not self.logic.shouldOfferCpuRetry(outcome) or not slicer.util.confirmYesNoDisplay(
                _("The GPU ran out of memory while explaining this volume:\n{message}\n\nRun the same explanation "
                  "on the CPU instead? It is slower but needs no GPU memory.").format(message=outcome.errorMessage),
                windowTitle=_("Out of GPU memory")):
            return False
        with slicer.util.tryWithErrorDisplay(_("Cannot start the explanation on the CPU.")):
            self.logic.retryOnCpu(onProgress=self.onProgress)
            self._parameterNode.device = "cpu"  # what ran; the next Explain stays on the CPU too
            self._started()
            return True
        return False

    def showResultSummary(self, result) -> None:
        probabilities = ", ".join(f"{k} {v:.2f}" for k, v in result.probabilities.items())
        self.ui.probabilitiesLabel.text = _("<b>Prediction: {label}</b><br>{probabilities}<br><i>{researchUse}</i>"
                                            ).format(label=result.prediction, probabilities=probabilities,
                                                     researchUse=_(RESEARCH_USE))
        self.ui.attentionMaskSelector.blockSignals(True)
        self.ui.attentionMaskSelector.clear()
        self.ui.attentionMaskSelector.addItem(_("saliency"), "")
        for name in result.attention:
            self.ui.attentionMaskSelector.addItem(_("attention: {name}").format(name=name), name)
        self.ui.attentionMaskSelector.blockSignals(False)
        self.ui.resultsCollapsibleButton.collapsed = False

    def onAttentionMaskSelected(self, index=None) -> None:
        with slicer.util.tryWithErrorDisplay(_("Cannot show the attention mask.")):
            self.logic.showOverlay(self.ui.attentionMaskSelector.currentData or "", self._parameterNode.opacity)

    def onLocalisationButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Cannot score the localisation."), waitCursor=True):
            score = self.logic.scoreLocalisation(self._parameterNode.lesionMask)
            hit = _("n/a") if score["hit"] is None else (_("yes") if score["hit"] else _("no"))
            self.ui.localisationLabel.text = _("Hit: {hit}   IoU: {iou:.2f}   Dice: {dice:.2f}").format(
                hit=hit, iou=score["iou"], dice=score["dice"])

    def onExportButton(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(self.parent, _("Export the results into a new folder"))
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay(_("Cannot export the results."), waitCursor=True):
            files = self.logic.exportResults(Path(folder) / "ACAT results")
            self.ui.statusLabel.text = _("Exported {count} files to {folder}").format(count=len(files),
                                                                                       folder=files[0].parent)

    def _setRunning(self, running: bool) -> None:
        self.ui.cancelButton.enabled = running
        self.ui.progressBar.visible = running
        if running:
            self.ui.progressBar.value = 0
        self.onParameterNodeModified()
        self.ui.exportButton.enabled = self.logic.result is not None
        self.ui.localisationButton.enabled = self.logic.result is not None


#
# ACATSlicerLogic
#


class ACATSlicerLogic(ExplainController, ScriptedLoadableModuleLogic):
    """The panel's work without the panel (batch mode, the self-test): ACATSlicerLib's `ExplainController` on
    ``slicer.mrmlScene`` (tested headless) plus the parameter node. ``runnerFactory`` makes the background
    runner (default: ``PythonSlicer -m ACATCli explain ...``)."""

    def __init__(self, runnerFactory=ExplainProcess) -> None:
        ExplainController.__init__(self, slicer.mrmlScene, runnerFactory)
        ScriptedLoadableModuleLogic.__init__(self)  # its super().__init__() is object's: the controller is first

    def getParameterNode(self):
        return ACATSlicerParameterNode(super().getParameterNode())

    def startExplain(self, p: ACATSlicerParameterNode, onProgress=None) -> None:
        """Start in the background; poll `poll` (a timer) until it returns the outcome."""
        view = ViewOptions(opacity=p.opacity, percentile=p.thresholdPercentile)
        self.start(p.inputVolume, ExplainRequest.fromPanel(p), view, onProgress)

    def explain(self, p: ACATSlicerParameterNode, timeoutS: float = 3600.0, onProgress=None):
        """Batch mode: run to the end and return the outcome (results loaded and shown on success)."""
        self.startExplain(p, onProgress)
        return self.wait(timeoutS)


#
# ACATSlicerTest
#


class ACATSlicerTest(ScriptedLoadableModuleTest):
    """The whole Explain on the generated Sample Data case with a tiny random model, inside real Slicer
    (the checks are ACATSlicerLib/selftest.py, which the headless tests run too)."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        for test in (self.test_ExplainGeneratedCase, self.test_CancelLeavesSceneUnchanged):
            self.setUp()
            test()

    def _case(self, steps: int):
        import SampleData
        from ACATSlicerLib.selftest_case import makeTinyBundle

        self.assertEqual(dependencies.missingRequirements(), [], "install the ACAT dependencies first (press Explain)")
        registerSampleData()  # as at startup: the case comes through the Sample Data module
        volume = SampleData.downloadSample(sample_data.CT_SAMPLE)
        self._tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self._tmp.cleanup)
        bundle = makeTinyBundle(Path(self._tmp.name) / "model", steps)
        return ACATSlicerLogic(), volume, ExplainRequest(str(bundle), ExplainOptions(device="cpu"))

    def test_ExplainGeneratedCase(self) -> None:
        self.delayDisplay("Explaining the generated head CT (Sample Data) with a tiny random model")
        self.assertEqual(selftest.explainTwiceProblems(*self._case(steps=3)), [])
        self.delayDisplay("Explain test passed")

    def test_CancelLeavesSceneUnchanged(self) -> None:
        problems = selftest.cancelProblems(*self._case(steps=5000),
                                           pause=lambda: slicer.util.delayDisplay("Running, then cancelling", 3000))
        self.assertEqual(problems, [])
        logging.info("Cancel test passed")
