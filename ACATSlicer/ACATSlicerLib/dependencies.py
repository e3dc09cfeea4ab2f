"""The Python packages that ``acat explain`` needs inside Slicer, and which of them are missing.

Slicer ships numpy, SimpleITK, pydicom and Pillow; torch, safetensors and the JPEG decoders are
installed on the first Explain, after one confirmation (torch through the PyTorch extension's
PyTorchUtils when it is installed, so that the right CUDA build is chosen). The requirements mirror
``[project] dependencies`` of pyproject.toml (a test keeps them in step).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from dataclasses import dataclass
from typing import Callable, Optional


@dataclass(frozen=True)
class Requirement:
    module: str  # the import name
    distribution: str  # the pip name
    minimum: Optional[str] = None  # lowest version that works, as in pyproject.toml

    @property
    def pipSpec(self) -> str:
        return f"{self.distribution}>={self.minimum}" if self.minimum else self.distribution


REQUIREMENTS = (
    Requirement("torch", "torch", "2.4"),
    Requirement("numpy", "numpy", "1.24"),
    Requirement("SimpleITK", "SimpleITK", "2.3"),
    Requirement("pydicom", "pydicom", "3.0"),
    Requirement("pylibjpeg", "pylibjpeg", "2.0"),
    Requirement("openjpeg", "pylibjpeg-openjpeg", "2.3"),
    Requirement("libjpeg", "pylibjpeg-libjpeg", "2.1"),
    Requirement("rle", "pylibjpeg-rle", "2.0"),
    Requirement("safetensors", "safetensors", "0.4"),
    Requirement("tqdm", "tqdm", "4.60"),
    Requirement("PIL", "pillow", "10"),
)

#: pyproject.toml dependencies that the explanation does not need inside Slicer, and why.
NOT_NEEDED_IN_SLICER = {
    "slicerio": "only for the command line's sample data (Slicer has its own Sample Data module)",
    "pyyaml": "only for training configs",
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


def installPlan(missing: list[Requirement], pyTorchUtilsAvailable: bool) -> tuple[bool, list[str]]:
    """(install torch through PyTorchUtils?, the pip specs to install with pip_install).

    PyTorchUtils picks the torch build that matches the GPU and driver; without it, plain pip gives
    the default build (CPU, or CUDA on Linux)."""
    viaPyTorchUtils = pyTorchUtilsAvailable and any(r.module == "torch" for r in missing)
    pipSpecs = [r.pipSpec for r in missing if not (viaPyTorchUtils and r.module == "torch")]
    return viaPyTorchUtils, pipSpecs
