"""What the module's logic does, without Qt: models, one Explain at a time, display, localisation, export.

``ACATSlicerLogic`` (ACATSlicer.py) is a thin shell over `ExplainController`: it converts its typed
parameter node into `ExplainSettings` / `ViewOptions` and hands over ``slicer.mrmlScene``. Everything
else is here, so that it runs - and is tested - with the slicer-core wheel and no GUI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from . import display, localisation, models
from .cpu_fallback import CpuFallback
from .export import exportResults
from .runner import SUCCEEDED, ExplainProcess
from .session import ExplainSession, SessionOutcome, ViewOptions
from .settings import ExplainSettings


class ExplainController:
    """``scene``: the MRML scene; ``runnerFactory``: makes the background-process runner (inject a fake or
    another front end's runner); ``workRoot``: where temporary work folders go."""

    def __init__(self, scene, runnerFactory: Callable[[], ExplainProcess] = ExplainProcess,
                 workRoot: Optional[Path] = None) -> None:
        self.scene = scene
        self.session = ExplainSession(scene, runnerFactory, workRoot)
        self.cpuFallback = CpuFallback()
        self.result = None  # results.ExplanationNodes of the last successful run
        self.lastLocalisation: Optional[dict] = None  # the localisation score of that result, exported with it
        self.addedModels: list[models.ModelChoice] = []
        self._shownDisplay = None  # (saliency node ID, opacity, percentile) last applied

    # -- models ------------------------------------------------------------------------------------
    def modelChoices(self) -> list:
        """The bundled models, then the added ones; a folder offered twice (a bundled model added again
        by its path) appears once."""
        choices, seen = [], set()
        for choice in models.bundledModels() + list(self.addedModels):
            key = str(Path(choice.path).resolve())
            if key not in seen:
                seen.add(key)
                choices.append(choice)
        return choices

    def addModel(self, folder) -> models.ModelChoice:
        """Verify a bundle folder (card, sha256, tensor shapes) and offer it; raises if it is invalid.
        Returns the choice as `modelChoices` lists it (the bundled entry when the folder is bundled)."""
        choice = models.verifyBundle(folder)
        key = str(Path(choice.path).resolve())
        self.addedModels = [m for m in self.addedModels if str(Path(m.path).resolve()) != key] + [choice]
        return next(c for c in self.modelChoices() if str(Path(c.path).resolve()) == key)

    # -- explain -----------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.session.running

    def start(self, inputNode, settings: ExplainSettings, options: Optional[ViewOptions] = None,
              onProgress=None, newRequest: bool = True) -> None:
        """Start in the background; call `poll` until it returns the outcome. ``newRequest``: False for
        the CPU retry of the same request (so it is not offered again). One run at a time: RuntimeError
        while one runs, which is left exactly as it was."""
        if self.session.running:
            raise RuntimeError("an explanation is already running; wait for it or cancel it first")
        if newRequest:
            self.cpuFallback.reset()
        self.session.start(inputNode, settings, onProgress=onProgress, options=options)

    def poll(self) -> Optional[SessionOutcome]:
        outcome = self.session.poll()
        if outcome is not None and outcome.state == SUCCEEDED and outcome.result is not self.result:
            self.result, self.lastLocalisation, self._shownDisplay = outcome.result, None, None
        return outcome

    def cancel(self) -> None:
        if self.session.running:
            self.session.cancel()

    def wait(self, timeoutS: float = 3600.0) -> SessionOutcome:
        """Batch mode: block until the run ends (cancelled after ``timeoutS``), then return the outcome."""
        self.session.wait(timeoutS)
        return self.poll()

    def shouldOfferCpuRetry(self, outcome) -> bool:
        """True once per request when ``outcome`` failed for lack of GPU memory on a non-CPU device."""
        return self.session.settings is not None and self.cpuFallback.shouldOffer(outcome, self.session.settings)

    def retryOnCpu(self, onProgress=None) -> ExplainSettings:
        """Run the last explanation again with device "cpu"; returns the settings used."""
        if self.session.settings is None or self.session.inputNode is None:
            raise RuntimeError("nothing to retry: explain a volume first")
        settings = CpuFallback.cpuSettings(self.session.settings)
        self.start(self.session.inputNode, settings, self.session.options, onProgress, newRequest=False)
        return settings

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
