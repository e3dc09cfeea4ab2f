"""``acat explain`` in a background process: the GUI never freezes, and Cancel kills the process tree.

The one GUI-free runner of both front ends (the Slicer module and the web viewer, through `controller`).
The pattern of SlicerTotalSegmentator / MONAIAuto3DSeg: the input is written as NRRD, the child
(``PythonSlicer -m ACATCli explain ... --progress-format jsonl``, its arguments from `request.ExplainRequest`)
writes one JSON object per line on stdout (progress events, then the result) and one line on stderr if it
fails; the caller's timer calls `ExplainProcess.poll`, which hands progress to a callback on the caller's
thread.

Injectable like SlicerNNUnet's runner: the controller takes any object with ``start/poll/cancel``, so a
test can substitute its own; the real one is tested for real (Testing/).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from .request import ExplainRequest

IDLE, RUNNING, SUCCEEDED, FAILED, CANCELLED = "idle", "running", "succeeded", "failed", "cancelled"


@dataclass
class ProgressEvent:
    """fraction: of the whole run, in [0, 1]; elapsedS / etaS: seconds (etaS None until estimable)."""

    fraction: float
    message: str
    stage: str
    elapsedS: float
    etaS: Optional[float]


@dataclass
class RunOutcome:
    state: str  # SUCCEEDED, FAILED or CANCELLED
    returnCode: Optional[int]
    outDir: Path
    errorMessage: str = ""  # one line a user can act on (FAILED only)
    result: dict = field(default_factory=dict)  # the child's final "result" line (SUCCEEDED only)
    warnings: list = field(default_factory=list)


class EtaEstimator:
    """Time left from the progress made since the first reported step (model loading excluded)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._start: Optional[tuple[float, float]] = None

    def update(self, fraction: float) -> Optional[float]:
        now = self._clock()
        if self._start is None:
            self._start = (now, fraction)
            return None
        t0, f0 = self._start
        done = fraction - f0
        if done < 0.02 or fraction >= 1.0:
            return 0.0 if fraction >= 1.0 else None
        return (now - t0) * (1.0 - fraction) / done


def pythonSlicerExecutable() -> str:
    """``PythonSlicer`` inside Slicer (Slicer's Python with its environment), else this interpreter."""
    import shutil

    for name in ("PythonSlicer", "PythonSlicer.exe"):
        found = shutil.which(name)
        if found:
            return found
    return sys.executable


def _oneLine(text: str) -> str:
    return " ".join(text.split())


class ExplainProcess:
    """One ``acat explain`` child process. Not thread-safe: call everything from one (the GUI) thread."""

    def __init__(self, pythonExecutable: Optional[str] = None, environment: Optional[dict] = None,
                 popen=subprocess.Popen, clock: Callable[[], float] = time.monotonic):
        self.pythonExecutable = pythonExecutable or pythonSlicerExecutable()
        self.environment = environment
        self._popen = popen
        self._clock = clock
        self.state = IDLE
        self._process = None
        self._lines: "queue.Queue[tuple[str, Optional[str]]]" = queue.Queue()
        self._readers: list[threading.Thread] = []
        self._closedStreams = 0
        self._stderr: list[str] = []
        self._result: dict = {}
        self._outcome: Optional[RunOutcome] = None
        self._onProgress: Optional[Callable[[ProgressEvent], None]] = None
        self._eta = EtaEstimator(clock)
        self._t0 = 0.0
        self.outDir = Path()
        self.lastProgress: Optional[ProgressEvent] = None

    # -- control -----------------------------------------------------------------------------
    def start(self, request: ExplainRequest, inputPath, outDir,
              onProgress: Optional[Callable[[ProgressEvent], None]] = None) -> None:
        if self.state != IDLE:
            raise RuntimeError("an ExplainProcess runs once; make a new one for the next run")
        from .paths import childEnvironment

        self.outDir = Path(outDir)
        self._onProgress = onProgress
        command = [self.pythonExecutable, "-m", "ACATCli", *request.commandLine(inputPath, self.outDir)]
        kwargs = {}
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True  # own process group: cancel kills the whole tree
        self._t0 = self._clock()
        self._process = self._popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                    env=childEnvironment(self.environment), text=True, encoding="utf-8",
                                    errors="replace", bufsize=1, **kwargs)
        self.state = RUNNING
        for name, stream in (("stdout", self._process.stdout), ("stderr", self._process.stderr)):
            reader = threading.Thread(target=self._read, args=(name, stream), daemon=True, name=f"acat-{name}")
            reader.start()
            self._readers.append(reader)

    def cancel(self, timeoutS: float = 10.0) -> None:
        """Stop the child and everything it started; returns once it is gone. Nothing is loaded."""
        if self.state != RUNNING or self._process is None:
            return
        self._killTree(timeoutS)
        for reader in self._readers:
            reader.join(timeout=timeoutS)
        self.state = CANCELLED
        self._outcome = RunOutcome(CANCELLED, self._process.returncode, self.outDir)

    def poll(self) -> Optional[RunOutcome]:
        """Deliver pending progress; return the outcome once the child has finished, else None."""
        if self._outcome is not None:
            return self._outcome
        if self.state != RUNNING:
            return None
        finishedStreams = self._drain()
        if self._process.poll() is None or finishedStreams < 2:
            return None
        for reader in self._readers:
            reader.join(timeout=5)
        self._drain()
        self._outcome = self._finish(self._process.returncode)
        self.state = self._outcome.state
        return self._outcome

    def wait(self, timeoutS: float, intervalS: float = 0.05) -> RunOutcome:
        """Block until the child finishes (batch use and tests); cancels it after ``timeoutS``."""
        deadline = time.monotonic() + timeoutS
        while True:
            outcome = self.poll()
            if outcome is not None:
                return outcome
            if time.monotonic() > deadline:
                self.cancel()
                return self._outcome
            time.sleep(intervalS)

    @property
    def pid(self) -> Optional[int]:
        return None if self._process is None else self._process.pid

    # -- internals ---------------------------------------------------------------------------
    def _read(self, name: str, stream) -> None:
        try:
            for line in stream:
                self._lines.put((name, line.rstrip("\r\n")))
        except (OSError, ValueError):
            pass  # the pipe closed under us (cancel)
        finally:
            self._lines.put((name, None))

    def _drain(self) -> int:
        """Handle every line read so far; returns how many of the two streams have closed."""
        while True:
            try:
                name, line = self._lines.get_nowait()
            except queue.Empty:
                return self._closedStreams
            if line is None:
                self._closedStreams += 1
            elif name == "stderr":
                if line.strip():
                    self._stderr.append(line)
            else:
                self._handleStdout(line)

    def _handleStdout(self, line: str) -> None:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            return  # not ours (a library printing): ignore
        if not isinstance(event, dict):
            return
        if event.get("event") == "progress":
            fraction = min(max(float(event.get("fraction", 0.0)), 0.0), 1.0)
            eta = self._eta.update(fraction) if event.get("stage") in ("explaining", "writing") else None
            self.lastProgress = ProgressEvent(fraction, str(event.get("message", "")), str(event.get("stage", "")),
                                              self._clock() - self._t0, eta)
            if self._onProgress is not None:
                self._onProgress(self.lastProgress)
        elif event.get("event") == "result":
            self._result = event

    def _finish(self, returnCode: int) -> RunOutcome:
        warnings = [ln.removeprefix("warning: ") for ln in self._stderr if ln.startswith("warning: ")]
        if returnCode == 0 and self._result:
            return RunOutcome(SUCCEEDED, returnCode, self.outDir, result=self._result, warnings=warnings)
        errors = [ln for ln in self._stderr if ln.startswith("acat: ")]
        if errors:
            message = errors[-1].removeprefix("acat: error: ").removeprefix("acat: ")
        elif self._stderr:
            message = f"the explanation stopped (exit code {returnCode}): {self._stderr[-1]}"
        else:
            message = f"the explanation stopped without a result (exit code {returnCode})"
        return RunOutcome(FAILED, returnCode, self.outDir, errorMessage=_oneLine(message)[:400], warnings=warnings)

    def _killTree(self, timeoutS: float) -> None:
        process = self._process
        if process.poll() is not None:
            return
        if os.name == "nt":
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True, check=False)
        else:
            try:
                os.killpg(process.pid, signal.SIGTERM)  # the group that start_new_session created
            except ProcessLookupError:
                return
        try:
            process.wait(timeout=min(3.0, timeoutS))
        except subprocess.TimeoutExpired:
            if os.name != "nt":
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            process.wait(timeout=timeoutS)
