"""One Explain at a time on one MRML scene, without Qt and without blocking: the controller of both front ends.

The Slicer module's logic *is* this controller (``ACATSlicerLogic`` in ACATSlicer.py adds the parameter node);
the web viewer's `ACATWeb.session.ViewerSession` drives one. A run goes one way, and nothing in it takes the
caller's (GUI) thread for longer than it takes to make a few nodes:

1. `start` checks the input node and hands a view of its voxels to a worker thread, which writes them as a
   raw NRRD into a private work folder (`nrrd_exchange`), with the list of the DICOM source files when the
   request asks for DICOM results (`request.DicomResults`). One run at a time: starting while one runs raises
   `AlreadyRunning` and leaves the running one exactly as it was.
2. The caller's timer (the widget's QTimer, the page's polling task) or `wait` (batch mode) calls `poll`.
   Once the file is written, `poll` starts the runner (`runner.ExplainProcess`: ``acat explain ...
   --progress-format jsonl`` in a child process, its command line from `request.ExplainRequest`), which
   writes its results folder atomically; `poll` forwards its progress.
3. When the child succeeded, a worker thread reads the report, the saliency and the counterfactual shown
   beside the original (`results.readFirstMaps`); then `poll` makes their nodes, shows them
   (`layout.showResults`, unless the caller shows them itself) and hands them to ``onResult``. The other
   maps are read in the background when first asked for (`requestMap`).

The scene is not touched before step 3: a failure or a `cancel` leaves it exactly as it was, and the work
folder (the input file) is always removed. The child's results folder is the result: it is kept for the
session (under `resultsRoot`), the nodes show it, `exportResults` copies it, the web viewer zips it; a
folder is removed when no result in the scene shows it any more (rerun, scene cleared) and all of them at
`close`.

Around the run: the models offered (`models`), the one CPU retry after the GPU ran out of memory
(`cpu_fallback`), the overlay's display, the localisation score and the export of the shown result.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from . import display, hierarchy, layout, loading, localisation, results
from .cpu_fallback import CpuFallback
from .export import exportResults
from .layout import ViewOptions, showResults
from .loading import ATTENTION, COUNTERFACTUAL, DIFFERENCE, SALIENCY, Grid
from .models import ModelList
from .nrrd_exchange import writeInputNrrd
from .request import ExplainRequest
from .runner import CANCELLED, FAILED, SUCCEEDED, ExplainProcess, ProgressEvent
from .volume_nodes import arrayView, checkCTVolumeNode

#: where a run is: nothing running, the input being written, the child running, the first results being read
IDLE, WRITING, RUNNING, LOADING = "idle", "writing", "running", "loading"


class AlreadyRunning(RuntimeError):
    """`ExplainController.start` while a run goes on (the running one is left as it was)."""


@dataclass
class ExplainOutcome:
    state: str  # SUCCEEDED, FAILED or CANCELLED
    errorMessage: str = ""
    result: Optional[results.ExplanationNodes] = None
    warnings: list = field(default_factory=list)
    elapsedS: float = 0.0

    @property
    def device(self) -> str:
        """Where the child computed ("cuda:0", "cpu", ...; "" unless it succeeded and recorded it)."""
        return self.result.device if self.result is not None else ""


class ExplainController:
    """``scene``: the MRML scene; ``runnerFactory``: makes the background-process runner (a test injects a
    fake one); ``workRoot``: where the work and results folders go (default: the system's temporary
    folder); ``modelStore``: where added models are remembered (`models.ModelList`)."""

    def __init__(self, scene, runnerFactory: Callable[[], ExplainProcess] = ExplainProcess,
                 workRoot: Optional[Path] = None, modelStore=None) -> None:
        self.scene = scene
        self.runnerFactory = runnerFactory
        self.workRoot = workRoot
        self.models = ModelList(modelStore)
        self.cpuFallback = CpuFallback()
        self.runner = None  # of the current or last run
        self.inputNode = None
        self.request: Optional[ExplainRequest] = None
        self.view = ViewOptions()
        self.workDir: Optional[Path] = None  # the input file's folder, while a run needs it
        self.runDir: Optional[Path] = None  # the child's results folder of the current or last run
        self.stage = IDLE
        self.progress: Optional[ProgressEvent] = None  # the last progress of the current or last run
        self.outcome: Optional[ExplainOutcome] = None  # of the last run; None while it runs
        self.result: Optional[results.ExplanationNodes] = None  # of the last successful run
        self.lastLocalisation: Optional[dict] = None  # the localisation score of that result, exported with it
        self.lastLesionNode = None  # the lesion it was scored against, exported with it
        self.overlayNode = None  # the map shown over the input
        self._onProgress: Optional[Callable[[ProgressEvent], None]] = None
        self._onResult: Optional[Callable[[results.ExplanationNodes], None]] = None
        self._t0 = 0.0
        self._grid: Optional[Grid] = None
        self._job: Optional[Future] = None  # the stage's background work
        self._warnings: list = []
        self._pending: dict = {}  # (kind, key) -> [future, result, [onReady]]
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="acat-io")
        self._resultsRoot: Optional[Path] = None
        self._runs = 0
        self._shownDisplay = None  # (overlay node ID, opacity, percentile) last applied

    # -- models ------------------------------------------------------------------------------------
    def modelChoices(self) -> list:
        """`ACATLogic.catalogue.ModelEntry` of every bundled model, then of the added folders."""
        return self.models.choices()

    def defaultModel(self):
        """The entry to preselect: the catalogue's default model, else the first one, else None."""
        return self.models.defaultChoice()

    def addModel(self, folder):
        """Verify a bundle folder and offer it from now on, also in later sessions (`models.ModelList.add`);
        raises if it is invalid."""
        return self.models.add(folder)

    # -- a run -------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.stage != IDLE

    @property
    def busy(self) -> bool:
        """A run or a map read is under way: keep calling `poll`."""
        return self.running or bool(self._pending)

    @property
    def resultsRoot(self) -> Path:
        """This session's folder of results folders (made when first needed)."""
        if self._resultsRoot is None:
            self._resultsRoot = Path(tempfile.mkdtemp(prefix="acat-results-", dir=self.workRoot))
        return self._resultsRoot

    def start(self, inputNode, request: ExplainRequest, view: Optional[ViewOptions] = None,
              onProgress: Optional[Callable[[ProgressEvent], None]] = None,
              onResult: Optional[Callable[[results.ExplanationNodes], None]] = None, newRequest: bool = True) -> None:
        """Start explaining ``inputNode`` in the background and return at once; call `poll` until it returns
        the outcome. ``onResult(result)``: called once, when a run succeeded and its first nodes are made.
        ``newRequest``: False for the CPU retry of the same request (so it is not offered again). Raises
        `AlreadyRunning` while a run goes on, ValueError for an input that is not a CT volume."""
        if self.running:
            raise AlreadyRunning("an explanation is already running; wait for it or cancel it first")
        checkCTVolumeNode(inputNode)
        if newRequest:
            self.cpuFallback.reset()
        self.inputNode, self.request, self.view = inputNode, request, view or ViewOptions()
        self.progress, self.outcome, self.runner, self._warnings = None, None, None, []
        self._onProgress, self._onResult = onProgress, onResult
        self._t0 = time.monotonic()
        self._grid = Grid.fromNode(inputNode)
        self.workDir = Path(tempfile.mkdtemp(prefix="acat-explain-", dir=self.workRoot))
        self._runs += 1
        self.runDir = self.resultsRoot / f"run-{self._runs}"  # made by the child, atomically
        self._job = self._executor.submit(_writeInputs, arrayView(inputNode), self._grid.ijkToRas, self.workDir,
                                          request)
        self.stage = WRITING
        self._progressed(ProgressEvent(0.0, "writing the scan for the background process", "preparing", 0.0, None))

    def _progressed(self, event: ProgressEvent) -> None:
        self.progress = event
        if self._onProgress is not None:
            self._onProgress(event)

    def poll(self) -> Optional[ExplainOutcome]:
        """None while the run goes on; then its outcome (the same one until the next `start`). Also makes
        the nodes of the maps read in the background since the last call (`requestMap`)."""
        self._makeReadMaps()
        if self.stage == IDLE:
            return self.outcome
        if self._job is not None and not self._job.done():
            return None
        if self.stage == WRITING:
            try:
                inputPath, request = self._job.result()
                self.runner = self.runnerFactory()
                self.runner.start(request, inputPath, self.runDir, onProgress=self._progressed)
            except Exception as exc:  # noqa: BLE001 - a disk full, a runner that cannot start: one line
                return self._finish(FAILED, f"cannot start the explanation ({exc})")
            self._job, self.stage = None, RUNNING
            return None
        if self.stage == RUNNING:
            finished = self.runner.poll()
            if finished is None:
                return None
            self._warnings = list(finished.warnings)
            if finished.state != SUCCEEDED:
                return self._finish(finished.state, finished.errorMessage)
            self._removeWorkDir()
            self.runDir = Path(finished.outDir)
            self._job = self._executor.submit(results.readFirstMaps, self.runDir, self._grid)
            self.stage = LOADING
            self._progressed(ProgressEvent(1.0, "loading the results", "loading",
                                           time.monotonic() - self._t0, 0.0))
            return None
        try:  # LOADING, and the first maps are read
            result = self._show(self._job.result())
        except (ValueError, OSError) as exc:
            return self._finish(FAILED, str(exc))
        return self._finish(SUCCEEDED, result=result)

    def _show(self, first: results.FirstMaps) -> results.ExplanationNodes:
        if self.inputNode.GetScene() is None:
            raise ValueError("the input volume was removed from the scene while it was being explained")
        result = results.createResultNodes(self.scene, self.inputNode, first, self.view.percentile)
        self.result, self.lastLocalisation, self.lastLesionNode = result, None, None
        self.overlayNode, self._shownDisplay = result.saliency, None
        self.removeUnusedResults()
        if self.view.show:
            showResults(self.scene, result, self.view)
        return result

    def _finish(self, state: str, errorMessage: str = "", result=None) -> ExplainOutcome:
        self.outcome = ExplainOutcome(state, errorMessage=errorMessage, result=result, warnings=self._warnings,
                                      elapsedS=time.monotonic() - self._t0)
        self._job, self.stage = None, IDLE
        self._removeWorkDir()
        if state != SUCCEEDED:
            self._removeRunDir()
        if state == SUCCEEDED and self._onResult is not None:
            self._onResult(result)
        return self.outcome

    def cancel(self) -> Optional[ExplainOutcome]:
        """Stop the run (its child process and everything that started) and forget it; the scene is
        unchanged. Returns the outcome (CANCELLED if a run was going on)."""
        if not self.running:
            return self.outcome
        if self.stage == WRITING and self._job is not None:
            self._job.cancel() or self._job.exception()  # a write is short: let it end, then remove the file
        elif self.stage == RUNNING:
            self.runner.cancel()
        elif self.stage == LOADING and self._job is not None:
            self._job.cancel()  # a read already under way ends on its own; its maps are dropped
        return self._finish(CANCELLED)

    def wait(self, timeoutS: float = 3600.0, intervalS: float = 0.05) -> Optional[ExplainOutcome]:
        """Batch mode and tests: block until the run ends (cancelled after ``timeoutS``); its outcome."""
        deadline = time.monotonic() + timeoutS
        while True:
            outcome = self.poll()
            if not self.running:
                return outcome
            if time.monotonic() > deadline:
                return self.cancel()
            time.sleep(intervalS)

    def forget(self) -> None:
        """Cancel any run and forget the last one: its outcome, progress and result (its nodes stay in the
        scene; the caller removes them, and `removeUnusedResults` then their folders)."""
        self.cancel()
        self._pending.clear()
        self.outcome = self.progress = self.result = self.lastLocalisation = self.lastLesionNode = None
        self.overlayNode = self._shownDisplay = None

    def close(self) -> None:
        """The end of the session (the module unloaded, the viewer stopped): cancel, remove every results folder."""
        self.forget()
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._resultsRoot is not None:
            shutil.rmtree(self._resultsRoot, ignore_errors=True)
            self._resultsRoot = None

    def _removeWorkDir(self) -> None:
        if self.workDir is not None:
            shutil.rmtree(self.workDir, ignore_errors=True)
            self.workDir = None

    def _removeRunDir(self) -> None:
        if self.runDir is not None and self._inResultsRoot(self.runDir):
            shutil.rmtree(self.runDir, ignore_errors=True)
        if self._resultsRoot is not None and not any(self._resultsRoot.iterdir()):
            self._resultsRoot.rmdir()  # nothing kept: leave no empty folder behind
            self._resultsRoot = None

    def _inResultsRoot(self, path) -> bool:
        if self._resultsRoot is None:
            return False
        try:
            Path(path).resolve().relative_to(self._resultsRoot.resolve())
        except ValueError:
            return False
        return Path(path).resolve() != self._resultsRoot.resolve()

    def removeUnusedResults(self) -> None:
        """Remove this session's results folders that no result folder in the scene shows any more (never
        anything outside `resultsRoot`, never the current run's)."""
        if self._resultsRoot is None or not self._resultsRoot.is_dir():
            return
        sh = hierarchy.subjectHierarchy(self.scene)
        shown = {str(Path(sh.GetItemAttribute(item, results.RESULTS_FOLDER_ATTRIBUTE)).resolve())
                 for item in hierarchy.findResultFolders(self.scene)
                 if sh.GetItemAttribute(item, results.RESULTS_FOLDER_ATTRIBUTE)}
        keep = {str(self.runDir.resolve())} if self.running and self.runDir is not None else set()
        for folder in self._resultsRoot.iterdir():
            if str(folder.resolve()) not in shown | keep:
                shutil.rmtree(folder, ignore_errors=True) if folder.is_dir() else folder.unlink(missing_ok=True)

    # -- maps on demand ------------------------------------------------------------------------------
    def requestMap(self, kind: str, key: str, onReady: Optional[Callable] = None):
        """The node of a map of the shown result if it is loaded (``onReady`` is not called then); else None,
        and the map is read in the background: `poll` makes its node and calls ``onReady(node)``."""
        result = self._requireResult()
        node = result.loadedNode(kind, key)
        if node is not None:
            return node
        if key not in result.keys(kind):
            raise ValueError(f"this result has no {kind} map {key!r}")
        if result.outDir is None:
            return result.load(kind, key)  # raises: the folder is gone
        entry = self._pending.get((kind, key))
        if entry is None or entry[1] is not result:
            inputVoxels = arrayView(result.inputNode) if kind == DIFFERENCE else None
            future = self._executor.submit(loading.readMap, result.outDir, kind, key, Grid.fromNode(result.inputNode),
                                           inputVoxels)
            entry = self._pending[(kind, key)] = [future, result, []]
        if onReady is not None:
            entry[2].append(onReady)
        return None

    def loadMap(self, kind: str, key: str):
        """The node of a map of the shown result, read now if needed (blocks; batch mode, the web viewer)."""
        return self._requireResult().load(kind, key)

    def _makeReadMaps(self) -> None:
        for name, (future, result, callbacks) in list(self._pending.items()):
            if not future.done():
                continue
            del self._pending[name]
            if result is not self.result or future.cancelled() or result.inputNode.GetScene() is None:
                continue
            node = result.addMap(self.scene, future.result())
            for callback in callbacks:
                callback(node)

    # -- out of GPU memory -> CPU ----------------------------------------------------------------------
    def shouldOfferCpuRetry(self, outcome) -> bool:
        """True once per request when ``outcome`` failed for lack of GPU memory on a non-CPU device."""
        return self.request is not None and self.cpuFallback.shouldOffer(outcome, self.request)

    def retryOnCpu(self, onProgress=None) -> ExplainRequest:
        """Run the last explanation again with device "cpu"; returns the request that runs."""
        if self.request is None or self.inputNode is None:
            raise RuntimeError("nothing to retry: explain a volume first")
        request = self.request.onDevice("cpu")
        self.start(self.inputNode, request, self.view, onProgress, self._onResult, newRequest=False)
        return request

    # -- display, localisation, export ---------------------------------------------------------------
    def updateDisplay(self, opacity: float, percentile: float) -> None:
        """Apply opacity and percentile threshold to the shown overlay, when they changed (a table look-up:
        each map's histogram was counted when it was read)."""
        node = self.overlayNode
        if self.result is None or node is None or node.GetScene() is None:
            return
        if self._shownDisplay == (node.GetID(), opacity, percentile):
            return
        display.setOverlayOpacity(self.scene, opacity, node)
        display.applySaliencyThreshold(node, percentile, self.result.histogram(node))
        self.view.opacity, self.view.percentile = opacity, percentile
        self._shownDisplay = (node.GetID(), opacity, percentile)

    def showOverlay(self, attentionMask: str, opacity: Optional[float] = None) -> None:
        """The saliency (``attentionMask`` "") or one ACAT attention mask over the input, in the views that
        show the input (the counterfactual beside them stays); an attention mask not read yet is shown once
        it is (`poll`)."""
        if self.result is None:
            return
        opacity = self.view.opacity if opacity is None else opacity
        if not attentionMask:
            self._setOverlay(self.result.saliency, opacity)
            return
        node = self.requestMap(ATTENTION, attentionMask, onReady=lambda n: self._setOverlay(n, opacity))
        if node is not None:
            self._setOverlay(node, opacity)

    def _setOverlay(self, node, opacity: float) -> None:
        self.overlayNode, self._shownDisplay = node, None
        display.applySaliencyThreshold(node, self.view.percentile, self.result.histogram(node))
        display.showOverlay(self.scene, self.result.inputNode, node, opacity, onlyOverBackground=True)
        self.view.opacity = opacity

    def showBeside(self, kind: str, key: str) -> None:
        """A counterfactual or difference map in the view beside the original (read first if needed)."""
        if kind not in (COUNTERFACTUAL, DIFFERENCE):
            raise ValueError(f"only a counterfactual or a difference map goes beside the original, not {kind!r}")
        node = self.requestMap(kind, key, onReady=lambda n: layout.showBeside(self.scene, n))
        if node is not None:
            layout.showBeside(self.scene, node)

    def _requireResult(self):
        if self.result is None:
            raise ValueError("explain a volume first")
        return self.result

    def scoreLocalisation(self, lesionNode) -> dict:
        """Hit / IoU / Dice of the exact saliency (read from the results folder) against ``lesionNode``."""
        result = self._requireResult()
        exact = None
        if result.outDir is not None:
            exact = loading.readResultVoxels(loading.mapPath(result.outDir, SALIENCY), Grid.fromNode(result.inputNode))
        self.lastLocalisation = localisation.localisationScore(result.saliency, lesionNode, result.inputNode,
                                                               saliencyVoxels=exact)
        self.lastLesionNode = lesionNode
        return self.lastLocalisation

    def exportResults(self, outDir) -> list:
        """Copy the results folder into ``outDir`` with what the user added (the localisation score and the
        lesion it was scored against); `export.exportResults`."""
        return exportResults(self._requireResult(), outDir, localisation=self.lastLocalisation,
                             lesionNode=self.lastLesionNode)


def _writeInputs(voxels, ijkToRas, workDir: Path, request: ExplainRequest):
    """The worker's part of `ExplainController.start`: the input NRRD and, for DICOM results, the list of the
    source series' files; returns (the NRRD's path, the request as the child gets it)."""
    inputPath = writeInputNrrd(voxels, ijkToRas, workDir / "input.nrrd")
    if request.dicom is not None:
        request = request.withDicomSource(request.dicom.sourceArgument(workDir))
    return inputPath, request


__all__ = ["AlreadyRunning", "ExplainController", "ExplainOutcome", "ViewOptions", "CANCELLED", "FAILED",
           "SUCCEEDED", "IDLE", "WRITING", "RUNNING", "LOADING"]
