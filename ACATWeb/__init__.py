"""``acat view``: the ACAT Explain experience in a web browser, on Slicer's own views (trame-slicer).

Layers (Testing/test_project.py checks them): ACATWeb imports ``slicer``, ``vtk``, ``trame*``,
``ACATSlicerLib`` (the MRML display code shared with the Slicer module, written once) and ACATLogic;
none of those imports ACATWeb, and ``acat`` loads it by name only when ``acat view`` runs. One idea per
file:

* `session`   - the viewer's work on one MRML scene, without trame: open a CT, explain it in the
                background (ACATSlicerLib's controller and runner), show results, package a download
* `linked_slices` - the original and the counterfactual view kept on the same slice, zoom and pan
* `summary`   - what the page shows of a result: prediction, probabilities, overlay and view choices
* `plot_svg`  - class probability against optimisation step as a small SVG
* `download`  - the results as a zip (NRRD + report.json), written atomically in a private folder
* `demo_case` - the bundled demo case (the phantom head CT with a left MCA lesion), made on request
* `app`       - the trame application: Slicer views, layouts, the panel, the polling task
* `guard`     - only the viewer's own page may use it: foreign Origin and Host headers are refused
* `server`    - ``acat view`` itself: options, loopback by default, the URL printed
"""

from __future__ import annotations

import sys
from pathlib import Path

#: the folder holding the Slicer module; its ``ACATSlicerLib`` is imported from there (repository checkout)
SLICER_MODULE_DIR = Path(__file__).resolve().parents[1] / "ACATSlicer"


def ensure_slicer_lib_importable() -> None:
    """Put ``ACATSlicer/`` on ``sys.path`` so that ``import ACATSlicerLib`` finds the shared MRML code."""
    try:
        import ACATSlicerLib  # noqa: F401
        return
    except ImportError:
        pass
    if not (SLICER_MODULE_DIR / "ACATSlicerLib" / "__init__.py").is_file():
        raise ImportError("the web viewer needs ACATSlicer/ACATSlicerLib from a complete checkout of the "
                          "repository (pip install -e '.[slicer]' in that checkout)")
    sys.path.insert(0, str(SLICER_MODULE_DIR))


ensure_slicer_lib_importable()
