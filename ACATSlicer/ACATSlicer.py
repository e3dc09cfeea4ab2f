"""ACAT Explain: what a CT classifier sees, as overlays and counterfactual volumes in 3D Slicer.

Slicer's scripted-module template order: module, parameter node, widget, logic, test. The module is
thin: MRML work lives in ACATSlicerLib/ (tested headless), the science in ACATLogic/ (run in a
background PythonSlicer process, so the GUI never freezes).
"""

import logging
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

from ACATSlicerLib import dependencies, display, localisation, models, paths
from ACATSlicerLib.export import exportResults
from ACATSlicerLib.runner import CANCELLED, SUCCEEDED, ExplainProcess
from ACATSlicerLib.session import ExplainSession, ViewOptions
from ACATSlicerLib.settings import DEVICES, METHODS, ExplainSettings

RESEARCH_USE = "Research use only - not for diagnosis or any clinical decision."
PAPER = ('Fontanella A. et al., "ACAT: Adversarial Counterfactual Attention for Classification and Detection '
         'in Medical Imaging", Proceedings of the 40th International Conference on Machine Learning (ICML 2023).')
MODEL_DEFAULT = "model default"


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


#
# ACATSlicerParameterNode
#


@parameterNodeWrapper
class ACATSlicerParameterNode:
    """The panel's state, saved with the scene. 0 for steps/alpha/stepSize means "the model's default"."""

    inputVolume: vtkMRMLScalarVolumeNode
    model: str = ""  # a bundle folder; the model selector is filled from the bundles found
    method: Annotated[str, Choice(list(METHODS))] = "counterfactual"
    device: Annotated[str, Choice(list(DEVICES))] = "auto"
    steps: Annotated[int, WithinRange(0, 1000)] = 0
    alpha: Annotated[float, WithinRange(0.0, 10000.0)] = 0.0
    stepSize: Annotated[float, WithinRange(0.0, 10.0)] = 0.0
    targets: str = ""
    reference: Annotated[str, Choice([MODEL_DEFAULT, "reconstruction", "image"])] = MODEL_DEFAULT
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
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)

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

    # -- models --------------------------------------------------------------------------------
    def refreshModels(self, select: str = "") -> None:
        self.ui.modelSelector.blockSignals(True)
        self.ui.modelSelector.clear()
        for choice in self.logic.modelChoices():
            self.ui.modelSelector.addItem(choice.title, choice.path)
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
            if not self.ensureDependencies():
                return
            choice = self.logic.addModel(folder)
            self.refreshModels(select=choice.path)

    # -- dependencies --------------------------------------------------------------------------
    def ensureDependencies(self) -> bool:
        """True when every package is present; else list them, ask once, install, and say so."""
        missing = dependencies.missingRequirements()
        if not missing:
            return True
        names = "\n".join(f"  - {r.pipSpec}" for r in missing)
        if not slicer.util.confirmOkCancelDisplay(
                _("ACAT needs these Python packages, which are not installed yet:\n{names}\n\nInstall them now? "
                  "This needs a network connection and may take several minutes.").format(names=names),
                windowTitle=_("Install ACAT dependencies")):
            return False
        viaPyTorchUtils, pipSpecs = dependencies.installPlan(missing, self._pyTorchUtilsAvailable())
        with slicer.util.WaitCursor():
            if viaPyTorchUtils:
                import PyTorchUtils

                torchMinimum = next(r.minimum for r in missing if r.module == "torch")
                if PyTorchUtils.PyTorchUtilsLogic().installTorch(
                        askConfirmation=False, torchVersionRequirement=f">={torchMinimum}") is None:
                    raise RuntimeError(_("PyTorch could not be installed through the PyTorch extension."))
            for spec in pipSpecs:
                self.ui.statusLabel.text = _("Installing {package}...").format(package=spec)
                slicer.app.processEvents()
                slicer.util.pip_install(spec)
        self.ui.statusLabel.text = ""
        stillMissing = dependencies.missingRequirements()
        if stillMissing:
            raise RuntimeError(_("Still missing after the installation: {names}. Restart Slicer and try again.")
                               .format(names=", ".join(r.pipSpec for r in stillMissing)))
        return True

    @staticmethod
    def _pyTorchUtilsAvailable() -> bool:
        try:
            import PyTorchUtils  # noqa: F401 - the PyTorch extension
        except ImportError:
            return False
        return True

    # -- explain -------------------------------------------------------------------------------
    def onExplainButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Cannot start the explanation."), waitCursor=True):
            if not self.ensureDependencies():
                return
            self.logic.startExplain(self._parameterNode, onProgress=self.onProgress)
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
        if outcome.state != SUCCEEDED:
            self.ui.statusLabel.text = _("Failed.")
            message = outcome.errorMessage
            if "out of memory" in message.lower() and self._parameterNode.device != "cpu":
                message += "\n\n" + _("The GPU ran out of memory: choose device 'cpu' and explain again.")
            slicer.util.errorDisplay(_("The explanation failed:\n{message}").format(message=message))
            return
        self.ui.statusLabel.text = _("Done in {seconds:.0f} s.").format(seconds=outcome.elapsedS)
        self.showResultSummary(outcome.result)

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


class ACATSlicerLogic(ScriptedLoadableModuleLogic):
    """Everything the panel does, callable without it (batch mode, the self-test). ``runnerFactory``
    makes the background-process runner (default: ``PythonSlicer -m ACATLogic.cli.main explain``)."""

    def __init__(self, runnerFactory=ExplainProcess) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        paths.ensureACATLogicImportable()
        self.session = ExplainSession(slicer.mrmlScene, runnerFactory)
        self.result = None  # ACATSlicerLib.results.ExplanationNodes of the last successful run
        self.lastLocalisation = None  # the last localisation score of that result, exported with it
        self._shownDisplay = None  # (saliency node ID, opacity, percentile) last applied
        self.addedModels = []

    def getParameterNode(self):
        return ACATSlicerParameterNode(super().getParameterNode())

    @property
    def running(self) -> bool:
        return self.session.running

    def modelChoices(self) -> list:
        return models.bundledModels() + list(self.addedModels)

    def addModel(self, folder) -> "models.ModelChoice":
        choice = models.verifyBundle(folder)
        self.addedModels = [m for m in self.addedModels if m.path != choice.path] + [choice]
        return choice

    @staticmethod
    def settingsFromParameters(p: ACATSlicerParameterNode) -> ExplainSettings:
        return ExplainSettings(model=p.model, method=p.method, device=p.device, steps=p.steps, alpha=p.alpha,
                               stepSize=p.stepSize, targets=p.targets,
                               reference=None if p.reference == MODEL_DEFAULT else p.reference)

    def startExplain(self, p: ACATSlicerParameterNode, onProgress=None) -> None:
        """Start in the background; call `poll` (a timer) until it returns the outcome."""
        options = ViewOptions(opacity=p.opacity, percentile=p.thresholdPercentile)
        self.session.start(p.inputVolume, self.settingsFromParameters(p), onProgress=onProgress, options=options)

    def poll(self):
        outcome = self.session.poll()
        if outcome is not None and outcome.state == SUCCEEDED and outcome.result is not self.result:
            self.result, self.lastLocalisation = outcome.result, None
        return outcome

    def cancel(self) -> None:
        if self.session.running:
            self.session.cancel()

    def explain(self, p: ACATSlicerParameterNode, timeoutS: float = 3600.0, onProgress=None):
        """Batch mode: run to the end and return the outcome (results loaded and shown on success)."""
        self.startExplain(p, onProgress)
        self.session.wait(timeoutS)
        return self.poll()

    def updateDisplay(self, opacity: float, percentile: float) -> None:
        """Apply the panel's opacity and percentile threshold to the shown result (when they changed:
        a percentile over a whole CT takes a moment)."""
        if self.result is None or self.result.saliency.GetScene() is None:
            return
        if self._shownDisplay == (self.result.saliency.GetID(), opacity, percentile):
            return
        display.setOverlayOpacity(slicer.mrmlScene, opacity)
        display.applySaliencyThreshold(self.result.saliency, percentile)
        self._shownDisplay = (self.result.saliency.GetID(), opacity, percentile)

    def showOverlay(self, attentionMask: str, opacity: float) -> None:
        """The saliency (``attentionMask`` "") or one ACAT attention mask over the input."""
        if self.result is None:
            return
        node = self.result.attention[attentionMask] if attentionMask else self.result.saliency
        display.showOverlay(slicer.mrmlScene, self.result.inputNode, node, opacity)

    def scoreLocalisation(self, lesionNode) -> dict:
        if self.result is None:
            raise ValueError(_("Explain a volume first."))
        self.lastLocalisation = localisation.localisationScore(self.result.saliency, lesionNode, self.result.inputNode)
        return self.lastLocalisation

    def exportResults(self, outDir) -> list:
        if self.result is None:
            raise ValueError(_("Explain a volume first."))
        return exportResults(self.result, outDir, localisation=self.lastLocalisation)


#
# ACATSlicerTest
#


class ACATSlicerTest(ScriptedLoadableModuleTest):
    """The whole Explain on a generated head CT with a tiny random model, inside real Slicer."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_ExplainGeneratedCase()
        self.setUp()
        self.test_CancelLeavesSceneUnchanged()

    def _case(self, steps: int = 3):
        from ACATSlicerLib.selftest_case import makeTinyBundle, syntheticHeadCT

        missing = dependencies.missingRequirements()
        self.assertEqual(missing, [], "install the ACAT dependencies first (press Explain once)")
        voxels, ijkToRas = syntheticHeadCT()
        volume = slicer.util.addVolumeFromArray(voxels, ijkToRas, "ACAT self-test CT")
        self._tmp = tempfile.TemporaryDirectory()
        bundle = makeTinyBundle(Path(self._tmp.name) / "model", steps=steps)
        logic = ACATSlicerLogic()
        p = logic.getParameterNode()
        p.inputVolume, p.model, p.device = volume, str(bundle), "cpu"
        return logic, p, volume

    def test_ExplainGeneratedCase(self) -> None:
        self.delayDisplay("Explaining a generated head CT with a tiny random model")
        logic, p, volume = self._case()
        progress = []
        outcome = logic.explain(p, timeoutS=600, onProgress=progress.append)
        self.assertEqual(outcome.state, SUCCEEDED, outcome.errorMessage)
        self.assertEqual(progress[-1].fraction, 1.0)
        result = outcome.result
        for node in result.volumeNodes().values():
            self.assertEqual(node.GetImageData().GetDimensions(), volume.GetImageData().GetDimensions())
        composite = slicer.app.layoutManager().sliceWidget("Red").sliceLogic().GetSliceCompositeNode()
        self.assertEqual(composite.GetForegroundVolumeID(), result.saliency.GetID())
        count = slicer.mrmlScene.GetNumberOfNodes()
        self.assertEqual(logic.explain(p, timeoutS=600).state, SUCCEEDED)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count)  # replaced, not duplicated
        self._tmp.cleanup()
        self.delayDisplay("Explain test passed")

    def test_CancelLeavesSceneUnchanged(self) -> None:
        logic, p, volume = self._case(steps=5000)
        count = slicer.mrmlScene.GetNumberOfNodes()
        logic.startExplain(p)
        slicer.util.delayDisplay("Running, then cancelling", 3000)
        logic.cancel()
        self.assertEqual(logic.poll().state, CANCELLED)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count)
        self._tmp.cleanup()
        logging.info("Cancel test passed")
