"""ACAT (Adversarial Counterfactual Attention) for CT: the science and the I/O.

Pure Python + torch + numpy + SimpleITK + pydicom. Never imports slicer, qt, vtk or trame, nor any front end
(ACATCli, ACATWeb, ACATSlicer), nor `ACATData` or `training` (README.md, "Layout"; Testing/test_project.py).

The Python API, in one import::

    from ACATLogic import read_volume, load_bundle, Explainer, ExplainOptions, CTVolume, write_explanation

    volume = read_volume("scans/head_ct/")                    # DICOM folder, NRRD, NIfTI (or CTVolume.from_array)
    bundle = load_bundle("brain-stroke-phantom")               # a bundled model's id, or a bundle folder
    explanation = Explainer(bundle).explain(volume, ExplainOptions())
    write_explanation(explanation, "results/", bundle=bundle, volume=volume)
    run_batch(list_studies("scans/"), "batch-results/", Explainer(bundle))   # one folder per study + summary.csv

The names below are loaded on first use, so that the standard-library-only modules (`ACATLogic.options`,
`ACATLogic.catalogue`) import without numpy, pydicom or SimpleITK: the Slicer module reads them before the
user has accepted to install what is missing.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {"ACATInputError": ".errors", "CTVolume": ".volume", "Reorientation": ".volume",
            "to_canonical": ".volume", "read_volume": ".io", "write_dicom_series": ".io", "write_volume": ".io",
            "ExplainOptions": ".options", "available_models": ".catalogue", "load_bundle": ".bundle",
            "ModelBundle": ".bundle", "Explainer": ".explain", "Explanation": ".explain",
            "write_explanation": ".outputs", "list_studies": ".batch", "run_batch": ".batch"}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
