"""Which 3D Slicer versions the module supports, and the one sentence it shows on any other.

Slicer 5.10 or newer: its Python 3.12 runs ACATLogic and the ``acat`` command as they are tested
(the project needs Python >= 3.10), and it ships every package the background process needs except
torch and safetensors. Slicer 5.6 and 5.8 ship Python 3.9: the module still loads there (this file and
everything imported when the module loads is Python 3.9 syntax, checked by
Testing/test_slicer_module_files.py) and its panel says which version to install instead of failing.
How each Slicer call was checked against Slicer's own source: ACATSlicer/SLICER_API.md.
"""

from __future__ import annotations

#: the oldest Slicer release the module runs on (major, minor)
MINIMUM_SLICER = (5, 10)


def slicerVersionProblem(major: int, minor: int) -> str:
    """"" on a supported Slicer, else the sentence the module's panel and help show (English; the module
    translates it)."""
    if (int(major), int(minor)) >= MINIMUM_SLICER:
        return ""
    return (f"ACAT Explain needs 3D Slicer {MINIMUM_SLICER[0]}.{MINIMUM_SLICER[1]} or newer; this is Slicer "
            f"{major}.{minor}, whose Python (3.9 or older) cannot run ACAT, which needs Python 3.10 or newer. "
            "Install the current Slicer release (download.slicer.org) and add this module there.")
