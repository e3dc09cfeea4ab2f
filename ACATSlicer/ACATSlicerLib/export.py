"""Export one explanation to a folder: every result volume as NRRD, plus report.json.

The volumes are written from the scene (what the user sees, in the input's geometry), the folder is
assembled under a temporary name and renamed into place: never half an export. No patient data is
written: voxels, geometry, and the report (model, method, parameters, probabilities).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from .results import ExplanationNodes
from .volume_nodes import ctVolumeFromNode


def exportResults(result: ExplanationNodes, outDir, overwrite: bool = False,
                  localisation: Optional[dict] = None) -> list[Path]:
    """Write ``<stem>.nrrd`` for each result volume and ``report.json`` into ``outDir``.

    ``localisation``: a `localisationScore` dict to add to the report. Raises ValueError if ``outDir``
    exists and is not empty, unless ``overwrite``."""
    from ACATLogic.io.atomic import atomic_directory
    from ACATLogic.io.itk_files import write_itk_file

    outDir = Path(outDir)
    if outDir.exists() and (not outDir.is_dir() or any(outDir.iterdir())) and not overwrite:
        raise ValueError(f"{outDir} is not an empty folder; choose another or allow overwriting")
    report = dict(result.report)
    if localisation is not None:
        report["localisation"] = {k: (None if isinstance(v, float) and v != v else v) for k, v in localisation.items()}
    names = []
    with atomic_directory(outDir, overwrite=True) as tmp:
        for stem, node in result.volumeNodes().items():
            write_itk_file(ctVolumeFromNode(node, modality=None), tmp / f"{stem}.nrrd", overwrite=True)
            names.append(f"{stem}.nrrd")
        report["exported_files"] = names + ["report.json"]
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        names.append("report.json")
    return [outDir / n for n in names]
