"""The Python packages that ``acat explain`` needs inside Slicer, and which of them are missing.

Inside Slicer only what Slicer lacks is installed: torch (through the PyTorch extension's PyTorchUtils when
it is installed, so that the build that matches the GPU is chosen) and safetensors, after one confirmation on
the first Explain. numpy, SimpleITK, pydicom and Pillow are Slicer's own (Slicer 5.10 ships numpy 2.0.2,
SimpleITK 2.5.2, pydicom 2.4.4, Pillow 11.2.1): they are used as they are and never installed or replaced,
whatever version pyproject.toml asks of a plain Python environment. What the explanation does not need
inside Slicer is listed with the reason. Together the three lists cover ``[project] dependencies`` of
pyproject.toml (a test keeps them in step).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from dataclasses import dataclass
from typing import Callable, Dict, Optional


@dataclass(frozen=True)
class Requirement:
    module: str  # the import name
    distribution: str  # the pip name
    minimum: Optional[str] = None  # lowest version that works, as in pyproject.toml

    @property
    def pipSpec(self) -> str:
        return f"{self.distribution}>={self.minimum}" if self.minimum else self.distribution


#: installed on the first Explain when missing or too old (minimum versions as in pyproject.toml)
REQUIREMENTS = (
    Requirement("torch", "torch", "2.4"),
    Requirement("safetensors", "safetensors", "0.4"),
)

#: Slicer's own packages: they must import, and are never installed or replaced (distribution -> import name)
SLICER_PROVIDES: Dict[str, str] = {"numpy": "numpy", "SimpleITK": "SimpleITK", "pydicom": "pydicom",
                                   "pillow": "PIL"}

#: pyproject.toml dependencies that the explanation does not need inside Slicer, and why
NOT_NEEDED_IN_SLICER: Dict[str, str] = {
    "pylibjpeg": "the module gives the background process an NRRD file: compressed DICOM is decoded by Slicer",
    "pylibjpeg-openjpeg": "as pylibjpeg",
    "pylibjpeg-libjpeg": "as pylibjpeg",
    "pylibjpeg-rle": "as pylibjpeg",
    "tqdm": "the background process reports progress as JSON lines; tqdm only draws the terminal's bar",
    "highdicom": "it writes DICOM results (acat explain --dicom), which need a DICOM input: the module gives the "
                 "background process an NRRD file",
}


def _versionTuple(text: str) -> tuple:
    """"2.13.0+cpu" -> (2, 13, 0): the leading numeric release parts only."""
    parts = []
    for piece in re.split(r"[.+-]", text):
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts)


def isSatisfied(requirement: Requirement,
                version: Callable[[str], str] = importlib.metadata.version) -> bool:
    """True when the module imports here and its distribution is at least ``minimum``."""
    if importlib.util.find_spec(requirement.module) is None:
        return False
    if requirement.minimum is None:
        return True
    try:
        installed = version(requirement.distribution)
    except importlib.metadata.PackageNotFoundError:
        return True  # importable but installed without metadata (e.g. bundled by Slicer): accept it
    return _versionTuple(installed) >= _versionTuple(requirement.minimum)


def missingRequirements(requirements=REQUIREMENTS) -> list[Requirement]:
    """The requirements that are not importable here or are too old, in `REQUIREMENTS` order."""
    return [r for r in requirements if not isSatisfied(r)]


def missingSlicerPackages(provided: Optional[Dict[str, str]] = None) -> list:
    """Slicer's own packages (`SLICER_PROVIDES`) that do not import here: a damaged Slicer, never installed by us."""
    provided = SLICER_PROVIDES if provided is None else provided
    return [distribution for distribution, module in provided.items() if importlib.util.find_spec(module) is None]


PIP, PYTORCH_UTILS = "pip", "PyTorchUtils"


@dataclass(frozen=True)
class InstallStep:
    """One installation, shown as one step of the progress dialog.

    ``installer``: `PIP` (``slicer.util.pip_install(spec)``) or `PYTORCH_UTILS` (the PyTorch extension's
    ``installTorch(torchVersionRequirement=spec)``, which picks the CUDA build for the GPU and driver).
    ``spec``: the pip requirement (``"safetensors>=0.4"``), or the version requirement (``">=2.4"``)."""

    requirement: Requirement
    installer: str
    spec: str

    @property
    def description(self) -> str:
        """The line the confirmation and the progress dialog show."""
        if self.installer == PYTORCH_UTILS:
            return f"torch{self.spec} (through the PyTorch extension, the build that matches this computer's GPU)"
        return self.spec

    def commandLine(self, python: str = "PythonSlicer") -> list[str]:
        """What the step runs (``slicer.util.pip_install`` runs ``PythonSlicer -m pip install SPEC``)."""
        if self.installer == PYTORCH_UTILS:
            return [python, "-c", f"import PyTorchUtils; PyTorchUtils.PyTorchUtilsLogic().installTorch("
                                  f"askConfirmation=False, torchVersionRequirement='{self.spec}')"]
        return [python, "-m", "pip", "install", self.spec]


def installSteps(missing: list[Requirement], pyTorchUtilsAvailable: bool) -> list[InstallStep]:
    """The steps that install ``missing``, torch first (the largest, and the others may need it)."""
    ordered = sorted(missing, key=lambda r: r.module != "torch")
    return [InstallStep(r, PYTORCH_UTILS, f">={r.minimum}" if r.minimum else "")
            if r.module == "torch" and pyTorchUtilsAvailable else InstallStep(r, PIP, r.pipSpec) for r in ordered]


def confirmationText(steps: list[InstallStep]) -> str:
    """The one question asked before anything is installed (English; the widget translates its frame)."""
    lines = "\n".join(f"  - {s.description}" for s in steps)
    return (f"ACAT needs these Python packages, which are not installed yet:\n{lines}\n\n"
            "Install them now? This needs a network connection and may take several minutes.")


class InstallError(RuntimeError):
    """An install step failed; the message says which and what to do."""


def pyTorchUtilsAvailable() -> bool:
    """True when the PyTorch extension (its ``PyTorchUtils`` module) is installed in this Slicer."""
    return importlib.util.find_spec("PyTorchUtils") is not None


def runInstallSteps(steps: list[InstallStep], installers: dict, progress: Optional[Callable] = None,
                    stillMissing: Optional[Callable[[], list]] = missingRequirements) -> None:
    """Run ``steps`` in order with ``installers[step.installer](step.spec)``.

    An installer signals failure by raising. ``progress(done, total, step)`` is called before each step (done = steps finished so far) and once at
    the end with ``step=None``; it may raise to stop (the progress dialog's Cancel). A failing step
    raises `InstallError` naming the package; the steps before it stay installed. Afterwards
    ``stillMissing()`` (None: skip) must be empty, else `InstallError` (an install that "worked" but
    left an unimportable package, e.g. one that needs a restart)."""
    total = len(steps)
    for done, step in enumerate(steps):
        if progress is not None:
            progress(done, total, step)
        try:
            installers[step.installer](step.spec)
        except Exception as exc:  # noqa: BLE001 - pip and PyTorchUtils raise anything; say which step
            detail = " ".join(str(exc).split())[:200]
            raise InstallError(f"installing {step.description} failed ({detail}); check the network connection "
                               "and the Python console, then press Explain again") from exc
    if progress is not None:
        progress(total, total, None)
    missing = stillMissing() if stillMissing is not None else []
    if missing:
        raise InstallError(f"still missing after the installation: {', '.join(r.pipSpec for r in missing)}; "
                           "restart Slicer and press Explain again")


def installPlan(missing: list[Requirement], pyTorchUtilsAvailable: bool) -> tuple[bool, list[str]]:
    """(install torch through PyTorchUtils?, the pip specs to install with pip_install).

    PyTorchUtils picks the torch build that matches the GPU and driver; without it, plain pip gives
    the default build (CPU, or CUDA on Linux). A summary of `installSteps`."""
    steps = installSteps(missing, pyTorchUtilsAvailable)
    return any(s.installer == PYTORCH_UTILS for s in steps), [s.spec for s in steps if s.installer == PIP]
