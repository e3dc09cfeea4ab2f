"""Export one explanation: the child's results folder as it is, plus what the user added.

One writer: ``acat explain`` wrote the folder (volumes, report.json, overview.png, and whatever else it
writes, e.g. DICOM objects); the export copies it byte for byte and never rewrites a file of it. What the
user added in Slicer goes beside it, in files of its own:

* ``localisation.json`` - the localisation score (hit, IoU, Dice) and the lesion it was scored against;
* ``lesion_mask.nrrd`` - that lesion on the CT's grid (a labelmap, or a segmentation put on the grid).

The export is assembled under a temporary name and renamed into place: never half an export.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

from .results import ExplanationNodes

LOCALISATION_FILE, LESION_FILE = "localisation.json", "lesion_mask.nrrd"


def exportResults(result: ExplanationNodes, outDir, overwrite: bool = False, localisation: Optional[dict] = None,
                  lesionNode=None) -> list[Path]:
    """Copy the results folder of ``result`` into ``outDir`` (a new or empty folder, or any with
    ``overwrite``), adding `LOCALISATION_FILE` and `LESION_FILE` when a localisation was scored. Returns the
    files written, sorted. Raises ValueError if ``outDir`` is not empty, or the results folder is gone."""
    from ACATLogic.io.atomic import atomic_directory

    from .localisation import lesionMaskArray
    from .nrrd_exchange import writeNrrd
    from .volume_nodes import ijkToRasArray

    outDir = Path(outDir)
    if outDir.exists() and (not outDir.is_dir() or any(outDir.iterdir())) and not overwrite:
        raise ValueError(f"{outDir} is not an empty folder; choose another or allow overwriting")
    if result.outDir is None or not (Path(result.outDir) / "report.json").is_file():
        raise ValueError("the results folder of this explanation is no longer available; explain the volume again")
    with atomic_directory(outDir, overwrite=True) as tmp:
        shutil.copytree(result.outDir, tmp, dirs_exist_ok=True)
        if localisation is not None:
            score = {k: (None if isinstance(v, float) and v != v else v) for k, v in localisation.items()}
            if lesionNode is not None:
                score["lesion_file"] = LESION_FILE  # no node name: names can hold patient data
                mask = lesionMaskArray(lesionNode, result.inputNode).astype("uint8")
                writeNrrd(mask, ijkToRasArray(result.inputNode), tmp / LESION_FILE)
            (tmp / LOCALISATION_FILE).write_text(json.dumps(score, indent=2) + "\n", encoding="utf-8")
    return sorted(p for p in outDir.rglob("*") if p.is_file())
