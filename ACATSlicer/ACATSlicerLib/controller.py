"""One Explain at a time on one MRML scene, without Qt: the controller of both front ends.

The Slicer module's logic *is* this controller (``ACATSlicerLogic`` in ACATSlicer.py adds the parameter node);
the web viewer's `ACATWeb.session.ViewerSession` drives one. A run goes one way:

* `start` checks the input node, writes it as NRRD into a private work folder and starts the runner
  (`runner.ExplainProcess`: ``acat explain ... --progress-format jsonl`` in a child process, its command line
  from `request.ExplainRequest`). One run at a time: starting while one runs raises `AlreadyRunning` and
  leaves the running one exactly as it was.
* The caller's timer (the widget's QTimer, the page's polling task) or `wait` (batch mode) calls `poll`,
  which forwards progress and, once the run succeeded, loads the result nodes from the child's output
  folder, shows them (`layout.showResults`, unless the caller shows them itself) and hands them to
  ``onResult``. The scene is not touched before that moment: a failure or a `cancel` leaves it exactly as
  it was, and the work folder is always removed.

Around the run: the models offered (`models`), the one CPU retry after the GPU ran out of memory
(`cpu_fallback`), the overlay's display, the localisation score and the export of the shown result.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from . import display, localisation, results
from .cpu_fallback import CpuFallback
from .export import exportResults
from .layout import ViewOptions, showResults
from .models import ModelList
from .nrrd_exchange import writeInputNrrd
from .request import ExplainRequest
from .runner import CANCELLED, FAILED, RUNNING, SUCCEEDED, ExplainProcess, ProgressEvent
from .volume_nodes import checkCTVolumeNode


class AlreadyRunning(RuntimeError):
    """`ExplainController.start` while a run goes on (the running one is left as it was)."""


@dataclass
class ExplainOutcome:
    state: str  # SUCCEEDED, FAILED or CANCELLED
    errorMessage: str = ""
    result: Optional[results.ExplanationNodes] = None
    warnings: list = field(default_factory=list)
    elapsedS: float = 0.0


class ExplainController:
    """``scene``: the MRML scene; ``runnerFactory``: makes the background-process runner (a test injects a
    fake one); ``workRoot``: where the temporary work folders go (default: the system's temporary folder)."""

    def __init__(self, scene, runnerFactory: Callable[[], ExplainProcess] = ExplainProcess,
                 workRoot: Optional[Path] = None) -> None:
        self.scene = scene
        self.runnerFactory = runnerFactory
        self.workRoot = workRoot
        self.models = ModelList()
        self.cpuFallback = CpuFallback()
        self.runner = None  # of the current or last run
        self.inputNode = None
        self.request: Optional[ExplainRequest] = None
        self.view = ViewOptions()
        self.workDir: Optional[Path] = None
        self.progress: Optional[ProgressEvent] = None  # the last progress of the current or last run
        self.outcome: Optional[ExplainOutcome] = None  # of the last run; None while it runs
        self.result: Optional[results.ExplanationNodes] = None  # of the last successful run
        self.lastLocalisation: Optional[dict] = None  # the localisation score of that result, exported with it
        self._onProgress: Optional[Callable[[ProgressEvent], None]] = None
        self._onResult: Optional[Callable[[results.ExplanationNodes], None]] = None
        self._t0 = 0.0
        self._shownDisplay = None  # (saliency node ID, opacity, percentile) last applied

    # -- models ------------------------------------------------------------------------------------
    def modelChoices(self) -> list:
        """`ACATLogic.catalogue.ModelEntry` of every bundled model, then of the added folders."""
        return self.models.choices()

    def addModel(self, folder):
        """Verify a bundle folder and offer it (`models.ModelList.add`); raises if it is invalid."""
        return self.models.add(folder)

    # -- a run -------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.runner is not None and self.runner.state == RUNNING

    def start(self, inputNode, request: ExplainRequest, view: Optional[ViewOptions] = None,
              onProgress: Optional[Callable[[ProgressEvent], None]] = None,
              onResult: Optional[Callable[[results.ExplanationNodes], None]] = None, newRequest: bool = True) -> None:
        """Start explaining ``inputNode`` in the background and return at once; call `poll` until it returns
        the outcome. ``onResult(result)``: called once, when a run succeeded and its nodes are loaded.
        ``newRequest``: False for the CPU retry of the same request (so it is not offered again). Raises
        `AlreadyRunning` while a run goes on, ValueError for an input that is not a CT volume."""
        if self.running:
            raise AlreadyRunning("an explanation is already running; wait for it or cancel it first")
        checkCTVolumeNode(inputNode)
        if newRequest:
            self.cpuFallback.reset()
        self.inputNode, self.request, self.view = inputNode, request, view or ViewOptions()
        self.progress, self.outcome = None, None
        self._onProgress, self._onResult = onProgress, onResult
        self._t0 = time.monotonic()
        self.workDir = Path(tempfile.mkdtemp(prefix="acat-explain-", dir=self.workRoot))
        try:
            inputPath = writeInputNrrd(inputNode, self.workDir / "input.nrrd")
            self.runner = self.runnerFactory()
            self.runner.start(request, inputPath, self.workDir / "results", onProgress=self._progressed)
        except BaseException:
            self._removeWorkDir()
            raise

    def _progressed(self, event: ProgressEvent) -> None:
        self.progress = event
        if self._onProgress is not None:
            self._onProgress(event)

    def poll(self) -> Optional[ExplainOutcome]:
        """None while the run goes on; then its outcome (the same one until the next `start`)."""
        if self.outcome is not None or self.runner is None:
            return self.outcome
        finished = self.runner.poll()
        if finished is None:
            return None
        elapsed = time.monotonic() - self._t0
        if finished.state == SUCCEEDED:
            try:
                result = self._load(finished.outDir)
                self.outcome = ExplainOutcome(SUCCEEDED, result=result, warnings=finished.warnings, elapsedS=elapsed)
            except (ValueError, OSError) as exc:
                self.outcome = ExplainOutcome(FAILED, errorMessage=str(exc), warnings=finished.warnings,
                                              elapsedS=elapsed)
        else:
            self.outcome = ExplainOutcome(finished.state, errorMessage=finished.errorMessage,
                                          warnings=finished.warnings, elapsedS=elapsed)
        self._removeWorkDir()
        if self.outcome.state == SUCCEEDED and self._onResult is not None:
            self._onResult(self.outcome.result)
        return self.outcome

    def _load(self, outDir: Path) -> results.ExplanationNodes:
        if self.inputNode.GetScene() is None:
            raise ValueError("the input volume was removed from the scene while it was being explained")
        result = results.loadExplanationResults(self.scene, self.inputNode, outDir, self.view.percentile)
        self.result, self.lastLocalisation, self._shownDisplay = result, None, None
        if self.view.show:
            showResults(self.scene, result, self.view)
        return result

    def cancel(self) -> Optional[ExplainOutcome]:
        """Stop the run (its child process and everything that started) and forget it; the scene is
        unchanged. Returns the outcome (CANCELLED if a run was going on)."""
        if self.running:
            self.runner.cancel()
            self.outcome = ExplainOutcome(CANCELLED, elapsedS=time.monotonic() - self._t0)
            self._removeWorkDir()
        return self.outcome

    def wait(self, timeoutS: float = 3600.0, intervalS: float = 0.05) -> Optional[ExplainOutcome]:
        """Batch mode and tests: block until the run ends (cancelled after ``timeoutS``); its outcome."""
        deadline = time.monotonic() + timeoutS
        while True:
            outcome = self.poll()
            if outcome is not None or self.runner is None:
                return outcome
            if time.monotonic() > deadline:
                return self.cancel()
            time.sleep(intervalS)

    def forget(self) -> None:
        """Cancel any run and forget the last one: its outcome, progress and result (its nodes stay in the
        scene; the caller removes them)."""
        self.cancel()
        self.outcome = self.progress = self.result = self.lastLocalisation = self._shownDisplay = None

    def _removeWorkDir(self) -> None:
        if self.workDir is not None:
            shutil.rmtree(self.workDir, ignore_errors=True)
            self.workDir = None

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
        """Apply opacity and percentile threshold to the shown result, when they changed (a percentile over
        a whole CT takes a moment)."""
        if self.result is None or self.result.saliency.GetScene() is None:
            return
        if self._shownDisplay == (self.result.saliency.GetID(), opacity, percentile):
            return
        display.setOverlayOpacity(self.scene, opacity)
        display.applySaliencyThreshold(self.result.saliency, percentile)
        self._shownDisplay = (self.result.saliency.GetID(), opacity, percentile)

    def showOverlay(self, attentionMask: str, opacity: float) -> None:
        """The saliency (``attentionMask`` "") or one ACAT attention mask over the input."""
        if self.result is None:
            return
        node = self.result.attention[attentionMask] if attentionMask else self.result.saliency
        display.showOverlay(self.scene, self.result.inputNode, node, opacity)

    def _requireResult(self):
        if self.result is None:
            raise ValueError("explain a volume first")
        return self.result

    def scoreLocalisation(self, lesionNode) -> dict:
        result = self._requireResult()
        self.lastLocalisation = localisation.localisationScore(result.saliency, lesionNode, result.inputNode)
        return self.lastLocalisation

    def exportResults(self, outDir) -> list[Path]:
        return exportResults(self._requireResult(), outDir, localisation=self.lastLocalisation)


__all__ = ["AlreadyRunning", "ExplainController", "ExplainOutcome", "ViewOptions", "CANCELLED", "FAILED",
           "SUCCEEDED"]
