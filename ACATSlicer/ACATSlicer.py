"""ACAT Explain: what a CT classifier sees, as overlays and counterfactual volumes in 3D Slicer.

Slicer's scripted-module template order: module, parameter node, widget, logic, test. The module is thin:
the widget talks to the logic only, which is ACATSlicerLib's `ExplainController` (shared with the web viewer,
tested headless) plus the parameter node; the science (ACATLogic) runs as ``acat explain`` in a background
PythonSlicer process, and files are written and read by a worker thread, so the GUI never freezes.
Slicer 5.10 or newer (ACATSlicerLib/compatibility.py); every Slicer call is listed in SLICER_API.md.
"""

import logging
import os
import tempfile
from pathlib import Path

import vtk

import qt
import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from ACATSlicerLib import compatibility, dependencies, display, paths, sample_data, selftest
from ACATSlicerLib.controller import ExplainController
from ACATSlicerLib.dicom_source import DicomOption, slicerDicomDatabase
from ACATSlicerLib.layout import ViewOptions
from ACATSlicerLib.models import SettingsStore
from ACATSlicerLib.panel import PanelBinding, fillResultSelectors, parameterWidgets
from ACATSlicerLib.parameters import NodeParameter, Parameter, ParameterNode, explainOptionParameters
from ACATSlicerLib.request import ExplainRequest
from ACATSlicerLib.runner import CANCELLED, SUCCEEDED, ExplainProcess

RESEARCH_USE = "Research use only - not for diagnosis or any clinical decision."
PAPER = ('Fontanella A. et al., "ACAT: Adversarial Counterfactual Attention for Classification and Detection '
         'in Medical Imaging", Proceedings of the 40th International Conference on Machine Learning (ICML 2023).')
SUPPORTED = "3D Slicer {major}.{minor} or newer".format(major=compatibility.MINIMUM_SLICER[0],
                                                         minor=compatibility.MINIMUM_SLICER[1])


def versionProblem() -> str:
    return compatibility.slicerVersionProblem(slicer.app.majorVersion, slicer.app.minorVersion)


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
        problem = versionProblem()
        self.parent.helpText = ("<b>{problem}</b><br>".format(problem=_(problem)) if problem else "") + _(
            "<b>{researchUse}</b><br>Explains the prediction of a CT classifier (brain stroke, lung COVID-19): "
            "the predicted class and its probabilities, a saliency overlay showing where the model looked, and "
            "counterfactual volumes - the scan as the model thinks it would look as another class - beside the "
            "original. Select a CT volume and a model, then press Explain. The work runs in a background process; "
            "Cancel stops it and leaves the scene unchanged. Runs on {supported}. Method: ACAT, adversarial "
            "counterfactual attention ({paper})").format(researchUse=_(RESEARCH_USE), paper=PAPER,
                                                         supported=SUPPORTED)
        self.parent.acknowledgementText = _(
            "The method is from: {paper} This module re-implements it for 3D Slicer; the models shipped with it "
            "are trained on SIMULATED data and are not the paper's models.").format(paper=PAPER)
        if not problem:
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


class ACATSlicerParameterNode(ParameterNode):
    """The panel's state, saved with the scene: the module's vtkMRMLScriptedModuleNode seen through typed
    fields (ACATSlicerLib/parameters.py). The explain options are `ExplainOptions` fields, camelCase,
    generated from the dataclass (``extraFields``)."""

    inputVolume = NodeParameter("vtkMRMLScalarVolumeNode")
    lesionMask = NodeParameter("vtkMRMLLabelMapVolumeNode", "vtkMRMLSegmentationNode")  # None: not selected
    model = Parameter(str, "")  # a bundle folder; the model selector is filled from the bundles found
    opacity = Parameter(float, display.DEFAULT_OPACITY, within=(0.0, 1.0))
    thresholdPercentile = Parameter(float, display.DEFAULT_PERCENTILE, within=(0.0, 100.0))
    dicomResults = Parameter(bool, False)  # also the DICOM results (acat explain --dicom) of a DICOM-loaded volume
    deidentify = Parameter(bool, False)  # ... de-identified (--deidentify)
    extraFields = staticmethod(explainOptionParameters)


#
# ACATSlicerWidget
#


class ACATSlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._binding = None
        self._timer = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        if versionProblem():  # the module loads on older Slicer only to say this
            label = qt.QLabel(_(versionProblem()))
            label.wordWrap = True
            self.layout.addWidget(label)
            return
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/ACATSlicer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = ACATSlicerLogic(modelStore=SettingsStore(slicer.app.userSettings()))
        self.ui.researchUseLabel.text = _(RESEARCH_USE)
        self._binding = PanelBinding(parameterWidgets(self.ui), ACATSlicerParameterNode.FIELDS)

        self._timer = qt.QTimer()
        self._timer.setInterval(100)
        self._timer.connect("timeout()", self.onTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.explainButton.connect("clicked(bool)", self.onExplainButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.addModelButton.connect("clicked(bool)", self.onAddModelButton)
        self.ui.exportButton.connect("clicked(bool)", self.onExportButton)
        self.ui.localisationButton.connect("clicked(bool)", self.onLocalisationButton)
        self.ui.modelSelector.connect("currentIndexChanged(int)", self.onModelSelected)
        self.ui.overlaySelector.connect("currentIndexChanged(int)", self.onOverlaySelected)
        self.ui.besideSelector.connect("currentIndexChanged(int)", self.onBesideSelected)
        self.initializeParameterNode()  # first the parameter node, then the models it selects from
        self.refreshModels()
        self._setRunning(False)

    def cleanup(self) -> None:
        if self.logic is not None:
            self.logic.close()
        self.removeObservers()

    def enter(self) -> None:
        if self.logic is not None:
            self.initializeParameterNode()
            self.refreshModels()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.logic.forget()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        self.logic.removeUnusedResults()
        if self.parent.isEntered:
            self.initializeParameterNode()
            self.refreshModels()

    def initializeParameterNode(self) -> None:
        parameterNode = self.logic.getParameterNode()
        if not parameterNode.inputVolume:
            parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        self.setParameterNode(parameterNode)

    def setParameterNode(self, parameterNode) -> None:
        if self._parameterNode is not None:
            self._binding.disconnect()
            self.removeObserver(self._parameterNode.node, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = parameterNode
        if self._parameterNode is not None:
            self._binding.connect(self._parameterNode)
            self.addObserver(self._parameterNode.node, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            self.onParameterNodeModified()

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        p = self._parameterNode
        if p is None:
            return
        self._binding.updateWidgets()
        ready = bool(p.inputVolume and p.model)
        self.ui.explainButton.enabled = ready and not self.logic.running
        self.ui.explainButton.toolTip = _("Explain the prediction") if ready else _("Select a CT volume and a model")
        # the DICOM results only for a volume loaded from the DICOM database; else unticked, greyed, and why
        reason = self.logic.dicomResultsProblem(p.inputVolume)
        if reason and p.dicomResults:
            p.dicomResults = False  # (this handler runs again, once)
        self.ui.dicomResultsCheckBox.enabled = not reason and not self.logic.running
        self.ui.deidentifyCheckBox.enabled = not reason and p.dicomResults and not self.logic.running
        self.ui.dicomReasonLabel.text = _("No DICOM results: {reason}").format(reason=reason) if reason else ""
        self.logic.updateDisplay(p.opacity, p.thresholdPercentile)

    def refreshModels(self, select: str = "") -> None:
        """Fill the model selector; select ``select``, else the parameter node's model, else the default model."""
        choices = self.logic.modelChoices()
        self.ui.modelSelector.blockSignals(True)
        self.ui.modelSelector.clear()
        for choice in choices:
            self.ui.modelSelector.addItem(choice.title, str(choice.path))
        self.ui.modelSelector.blockSignals(False)
        default = self.logic.defaultModel()
        for wanted in (select, self._parameterNode.model if self._parameterNode else "",
                       str(default.path) if default else ""):
            index = self.ui.modelSelector.findData(wanted) if wanted else -1
            if index >= 0:
                break
        self.ui.modelSelector.setCurrentIndex(max(index, 0) if choices else -1)
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
        """True when every package is present; else list what Slicer lacks, ask once, install with progress."""
        broken = dependencies.missingSlicerPackages()
        if broken:
            raise RuntimeError(_("This Slicer lacks its own Python packages {packages}; reinstall Slicer.").format(
                packages=", ".join(broken)))
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
        self._setRunning(False)
        self.ui.statusLabel.text = _("Cancelled: the scene was left unchanged.")

    def onProgress(self, event) -> None:
        self.ui.progressBar.value = int(round(100 * event.fraction))
        eta = "" if event.etaS is None else _(" - about {seconds} s left").format(seconds=int(round(event.etaS)))
        self.ui.statusLabel.text = f"{event.message}{eta}"

    def onTimer(self) -> None:
        """Every 100 ms while the logic is busy: its progress, its outcome, the maps it has read meanwhile."""
        wasRunning = self.logic.running
        outcome = self.logic.poll()
        if not self.logic.busy:
            self._timer.stop()
        if not wasRunning or outcome is None:
            return
        self._setRunning(False)
        if outcome.state == SUCCEEDED:
            self.ui.statusLabel.text = _("Done in {seconds:.0f} s on {device}.").format(
                seconds=outcome.elapsedS, device=outcome.device or _("an unrecorded device"))
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
        self.ui.probabilitiesLabel.text = _(
            "<b>Prediction: {label}</b><br>{probabilities}<br>Computed on: {device}<br><i>{researchUse}</i>").format(
            label=result.prediction, probabilities=probabilities, device=result.device or _("not recorded"),
            researchUse=_(RESEARCH_USE))
        fillResultSelectors(self.ui.overlaySelector, self.ui.besideSelector, result, _)
        self.ui.resultsCollapsibleButton.collapsed = False

    def onOverlaySelected(self, index=None) -> None:
        with slicer.util.tryWithErrorDisplay(_("Cannot show the attention mask.")):
            self.logic.showOverlay(self.ui.overlaySelector.currentData or "", self._parameterNode.opacity)
            self._timer.start()  # a mask not read yet is shown once it is

    def onBesideSelected(self, index=None) -> None:
        kind, _sep, name = (self.ui.besideSelector.currentData or "").partition(":")
        if not name:
            return
        with slicer.util.tryWithErrorDisplay(_("Cannot show this map beside the original.")):
            self.logic.showBeside(kind, name)
            self._timer.start()

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
            target = Path(folder) / "ACAT results"
            files = self.logic.exportResults(target)
            self.ui.statusLabel.text = _("Exported {count} files to {folder}").format(count=len(files), folder=target)

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
    runner (default: ``PythonSlicer -m ACATCli explain ...``); ``modelStore`` remembers added models."""

    def __init__(self, runnerFactory=ExplainProcess, modelStore=None) -> None:
        ExplainController.__init__(self, slicer.mrmlScene, runnerFactory, modelStore=modelStore)
        ScriptedLoadableModuleLogic.__init__(self)  # its super().__init__() is object's: the controller is first
        self.dicomOption = DicomOption(slicerDicomDatabase)

    def getParameterNode(self):
        """The module's parameter node with every field set (defaults written once, before anything reads)."""
        parameterNode = ACATSlicerParameterNode(super().getParameterNode())
        parameterNode.setDefaults()
        return parameterNode

    def startExplain(self, p: ACATSlicerParameterNode, onProgress=None) -> None:
        """Start in the background; poll `poll` (a timer) until it returns the outcome."""
        view = ViewOptions(opacity=p.opacity, percentile=p.thresholdPercentile)
        dicom = self.dicomOption.results(p.inputVolume, p.deidentify) if p.dicomResults else None  # files: now
        self.start(p.inputVolume, ExplainRequest.fromPanel(p, dicom), view, onProgress)

    def dicomResultsProblem(self, volumeNode) -> str:
        return self.dicomOption.problem(volumeNode)  # why this volume gets no DICOM results, or ""

    def explain(self, p: ACATSlicerParameterNode, timeoutS: float = 3600.0, onProgress=None):
        """Batch mode: run to the end and return the outcome (results loaded and shown on success)."""
        self.startExplain(p, onProgress)
        return self.wait(timeoutS)


#
# ACATSlicerTest
#


class ACATSlicerTest(ScriptedLoadableModuleTest):
    """The whole Explain inside real Slicer, with a tiny random model: on the generated case loaded as a DICOM
    series through Slicer's DICOM database, and Cancel (the checks are ACATSlicerLib/selftest.py). Skipped, with
    the reason, where torch is not installed yet. Testing/test_slicer_selftest.py runs this class headless."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        missing = dependencies.missingRequirements()
        if missing or versionProblem():
            reason = versionProblem() or "{packages} not installed: press Explain once to install them".format(
                packages=", ".join(r.pipSpec for r in missing))
            self.delayDisplay("ACAT self-test skipped: " + reason)
            logging.warning("ACAT self-test skipped: %s", reason)
            return
        for test in (self.test_ExplainDicomSeries, self.test_CancelLeavesSceneUnchanged):
            self.setUp()
            test()

    def _request(self, steps: int):
        from ACATSlicerLib.selftest_case import makeTinyBundle

        from ACATLogic.options import ExplainOptions

        self._tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self._tmp.cleanup)
        bundle = makeTinyBundle(Path(self._tmp.name) / "model", steps)
        return ExplainRequest(str(bundle), ExplainOptions(device="cpu"))

    def _dicomVolume(self):
        """The generated case written as a DICOM series, imported into a temporary DICOM database and loaded
        by Slicer's DICOM plugins (as a radiologist loads a scan)."""
        from DICOMLib import DICOMUtils

        folder = Path(self._tmp.name) / "dicom"
        seriesUid = selftest.writeSelfTestDicom(folder)
        with DICOMUtils.TemporaryDICOMDatabase() as database:
            DICOMUtils.importDicom(str(folder), database)
            loaded = DICOMUtils.loadSeriesByUID([seriesUid])
        self.assertEqual(len(loaded), 1, "the DICOM series did not load as one volume")
        return slicer.mrmlScene.GetNodeByID(loaded[0])

    def test_ExplainDicomSeries(self) -> None:
        self.delayDisplay("Explaining the generated head CT, loaded through the DICOM database, with a tiny model")
        request = self._request(steps=3)
        logic = ACATSlicerLogic()
        self.addCleanup(logic.close)
        self.assertEqual(selftest.explainTwiceProblems(logic, self._dicomVolume(), request), [])
        self.delayDisplay("Explain test passed")

    def test_CancelLeavesSceneUnchanged(self) -> None:
        request = self._request(steps=5000)
        logic = ACATSlicerLogic()
        self.addCleanup(logic.close)
        problems = selftest.cancelProblems(logic, self._dicomVolume(), request,
                                           pause=lambda: slicer.util.delayDisplay("Running, then cancelling", 3000))
        self.assertEqual(problems, [])
        logging.info("Cancel test passed")
