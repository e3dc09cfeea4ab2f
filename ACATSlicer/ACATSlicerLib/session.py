"""One Explain, from an input node to result nodes, without freezing the caller.

``start`` writes the input as NRRD into a private work folder and starts the runner; the caller (the
widget's timer, or `wait` in batch mode) calls ``poll``, which forwards progress and, when the run
succeeded, creates the result nodes and shows them. The scene is not touched before that moment: a
failure or a Cancel leaves it exactly as it was, and the work folder is always removed.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from . import display, layout, plots, results
from .nrrd_exchange import writeInputNrrd
from .runner import CANCELLED, FAILED, RUNNING, SUCCEEDED, ExplainProcess, ProgressEvent
from .settings import ExplainSettings
from .volume_nodes import checkCTVolumeNode


@dataclass
class ViewOptions:
    """How results are shown. opacity in [0, 1]; percentile in [0, 100] (95: the top 5% coloured)."""

    show: bool = True
    opacity: float = display.DEFAULT_OPACITY
    percentile: float = display.DEFAULT_PERCENTILE
    sideBySide: bool = True


@dataclass
class SessionOutcome:
    state: str  # SUCCEEDED, FAILED or CANCELLED
    errorMessage: str = ""
    result: Optional[results.ExplanationNodes] = None
    warnings: list = field(default_factory=list)
    elapsedS: float = 0.0


def showResults(scene, result: results.ExplanationNodes, options: ViewOptions) -> None:
    """Saliency over the input in every slice view; the counterfactual beside the original, with the
    probability-per-step plot below them when there is one."""
    display.showOverlay(scene, result.inputNode, result.saliency, options.opacity)
    counterfactual = result.shownCounterfactual()
    if options.sideBySide and counterfactual is not None and scene.GetFirstNodeByClass("vtkMRMLLayoutNode"):
        layout.showSideBySide(scene, result.inputNode, counterfactual, result.saliency, options.opacity,
                              chartNode=result.probabilityChart)
    elif result.probabilityChart is not None:
        plots.showChart(scene, result.probabilityChart)  # in a plot view if the current layout has one


class ExplainSession:
    """``runnerFactory``: makes the process runner (default `ExplainProcess`); inject another for tests
    or front ends. ``workRoot``: where temporary work folders go (default: the system temp folder)."""

    def __init__(self, scene, runnerFactory: Callable[[], ExplainProcess] = ExplainProcess,
                 workRoot: Optional[Path] = None):
        self.scene = scene
        self.runnerFactory = runnerFactory
        self.workRoot = workRoot
        self.runner = None
        self.inputNode = None
        self.settings: Optional[ExplainSettings] = None  # of the last run started
        self.options = ViewOptions()
        self.workDir: Optional[Path] = None
        self.outcome: Optional[SessionOutcome] = None
        self._t0 = 0.0

    @property
    def running(self) -> bool:
        return self.runner is not None and self.runner.state == RUNNING

    def start(self, inputNode, settings: ExplainSettings, onProgress: Optional[Callable[[ProgressEvent], None]] = None,
              options: Optional[ViewOptions] = None) -> None:
        """Validate, write the input, start the background run. Raises ValueError for bad input."""
        if self.running:
            raise RuntimeError("an explanation is already running; cancel it first")
        checkCTVolumeNode(inputNode)
        self.inputNode, self.options, self.outcome = inputNode, options or ViewOptions(), None
        self.settings = settings
        self._t0 = time.monotonic()
        self.workDir = Path(tempfile.mkdtemp(prefix="acat-explain-", dir=self.workRoot))
        try:
            inputPath = writeInputNrrd(inputNode, self.workDir / "input.nrrd")
            self.runner = self.runnerFactory()
            self.runner.start(settings, inputPath, self.workDir / "results", onProgress=onProgress)
        except BaseException:
            self._cleanUp()
            raise

    def poll(self) -> Optional[SessionOutcome]:
        """None while running; then the outcome (results loaded and shown when it succeeded)."""
        if self.outcome is not None or self.runner is None:
            return self.outcome
        outcome = self.runner.poll()
        if outcome is None:
            return None
        elapsed = time.monotonic() - self._t0
        if outcome.state == SUCCEEDED:
            try:
                if self.inputNode.GetScene() is None:
                    raise ValueError("the input volume was removed from the scene while it was being explained")
                result = results.loadExplanationResults(self.scene, self.inputNode, outcome.outDir,
                                                        self.options.percentile)
                if self.options.show:
                    showResults(self.scene, result, self.options)
                self.outcome = SessionOutcome(SUCCEEDED, result=result, warnings=outcome.warnings, elapsedS=elapsed)
            except (ValueError, OSError) as exc:
                self.outcome = SessionOutcome(FAILED, errorMessage=str(exc), warnings=outcome.warnings,
                                              elapsedS=elapsed)
        else:
            self.outcome = SessionOutcome(outcome.state, errorMessage=outcome.errorMessage,
                                          warnings=outcome.warnings, elapsedS=elapsed)
        self._cleanUp()
        return self.outcome

    def cancel(self) -> SessionOutcome:
        """Kill the run (and its children) and forget it; the scene is unchanged."""
        if self.runner is not None and self.runner.state == RUNNING:
            self.runner.cancel()
        self.outcome = SessionOutcome(CANCELLED, elapsedS=time.monotonic() - self._t0)
        self._cleanUp()
        return self.outcome

    def wait(self, timeoutS: float, intervalS: float = 0.05) -> SessionOutcome:
        """Run to completion (batch mode and tests); cancels after ``timeoutS``."""
        deadline = time.monotonic() + timeoutS
        while True:
            outcome = self.poll()
            if outcome is not None:
                return outcome
            if time.monotonic() > deadline:
                return self.cancel()
            time.sleep(intervalS)

    def _cleanUp(self) -> None:
        if self.workDir is not None:
            shutil.rmtree(self.workDir, ignore_errors=True)
            self.workDir = None


__all__ = ["ExplainSession", "SessionOutcome", "ViewOptions", "showResults", "FAILED", "SUCCEEDED", "CANCELLED"]
