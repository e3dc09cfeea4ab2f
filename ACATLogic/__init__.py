"""ACAT (Adversarial Counterfactual Attention) for CT: the science and the I/O.

Pure Python + torch + numpy + SimpleITK + pydicom. Never imports slicer, qt, vtk or trame, nor any front end
(ACATCli, ACATWeb, ACATSlicer), nor `ACATData` or `training` (README.md, "Layout"; Testing/test_project.py).

The names below are loaded on first use, so that the standard-library-only modules (`ACATLogic.options`,
`ACATLogic.catalogue`) import without numpy, pydicom or SimpleITK: the Slicer module reads them before the
user has accepted to install what is missing.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {"ACATInputError": ".errors", "CTVolume": ".volume", "Reorientation": ".volume",
            "to_canonical": ".volume", "read_volume": ".io", "write_dicom_series": ".io", "write_volume": ".io"}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
