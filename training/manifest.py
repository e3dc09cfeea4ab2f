"""The one manifest format: what training (``data.source=csv`` or ``phantom``) and evaluation
(``python -m training.evaluate --data``) read, and what ``acat explain`` takes as a batch list.

A CSV file, one row per scan::

    path,label,mask
    scans/case001/,normal,
    scans/case002.nrrd,cyst,masks/case002.nrrd

* ``path`` (or ``image``): the scan - a DICOM folder, NRRD or NIfTI (a phantom dataset's ``.npz`` too), relative
  to the CSV's folder or absolute;
* ``label``: the class, by name (the training config's ``data.labels``, the model card's ``labels``) or index;
* optional: ``case_id`` (default: the file name without its suffixes), ``split`` (train / val / test; all empty:
  a stratified split by seed), ``lesion_mask`` (or ``mask``: a label map on the scan's grid, for IoU / Dice),
  ``organ_mask``, ``territory_map`` (or ``territory``) for the phantom benchmark's hit score. Any other column
  (the phantom's ``task``, ``label_name``, ``size_class``, ``severity``, ...) is carried along.

The phantom benchmark's manifest.csv (`ACATData.phantom`) is one of these; its manifest.json says the data are
SIMULATED (`is_simulated`), which is what makes an evaluation call itself a SIMULATED benchmark.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Sequence

from ACATLogic.errors import ACATInputError

SPLITS = ("train", "val", "test")
ALIASES = {"path": "image", "mask": "lesion_mask", "territory": "territory_map"}


def parse_label(text, names: Sequence[str]) -> int:
    """A class name or index -> the class index; ValueError with the reason otherwise."""
    text = str(text).strip()
    lowered = [n.lower() for n in names]
    if text.lower() in lowered:
        return lowered.index(text.lower())
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"label {text!r} is neither an index nor one of {list(names)}") from None
    if not 0 <= value < len(names):
        raise ValueError(f"label {value} is out of range (0..{len(names) - 1}: {', '.join(names)})")
    return value


def read_manifest(path, class_names: Sequence[str]) -> tuple[list[dict], list[dict]]:
    """(rows, problems) of a manifest. Each row: ``case_id``, ``image`` (as written: relative to the CSV's
    folder or absolute), ``label`` (int), ``label_name``, ``split``, ``lesion_mask``, ``organ_mask``,
    ``territory_map`` ("" when absent), ``where`` ("manifest.csv line 7") and every other column as it is.
    A row whose path is empty or whose label cannot be read is a problem - {"image", "case_id", "message"},
    the message ending with where it is - not a row.

    Raises `ACATInputError` for what makes the whole file unusable (missing columns, a case_id twice)."""
    path = Path(path)
    if not path.is_file():
        raise ACATInputError("no such manifest file", path)
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = set(reader.fieldnames or [])
        if not ({"path", "image"} & columns) or "label" not in columns:
            raise ACATInputError(f"the manifest needs the columns 'path' (or 'image') and 'label'; it has "
                                 f"{sorted(columns)}", path)
        rows, problems, seen = [], [], {}
        for line, raw in enumerate(reader, start=2):
            row = {ALIASES.get(k, k): (v or "").strip() for k, v in raw.items() if k is not None}
            for name in ("image", "lesion_mask", "organ_mask", "territory_map", "split", "case_id"):
                row.setdefault(name, "")
            row["where"] = f"{path.name} line {line}"
            if not row["image"]:
                problems.append({"image": "", "case_id": row["case_id"], "message": f"line {line}: the path is empty"})
                continue
            row["case_id"] = row["case_id"] or Path(row["image"].rstrip("/")).name.split(".")[0]
            if row["case_id"] in seen:
                raise ACATInputError(f"line {line}: case_id {row['case_id']!r} appears twice (first on line "
                                     f"{seen[row['case_id']]})", path)
            seen[row["case_id"]] = line
            try:
                row["label"] = parse_label(row["label"], class_names)
            except ValueError as exc:
                problems.append({"image": row["image"], "case_id": row["case_id"],
                                 "message": f"{exc} ({row['where']})"})
                continue
            row["label_name"] = row.get("label_name") or class_names[row["label"]]
            row["split"] = row["split"].lower()
            rows.append(row)
    return rows, problems


def is_simulated(manifest) -> bool:
    """Whether a manifest lists SIMULATED data: the phantom benchmark writes a manifest.json beside it saying so."""
    description = Path(manifest).with_name("manifest.json")
    try:
        what = json.loads(description.read_text(encoding="utf-8")).get("what", "")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(what, str) and "SIMULATED" in what
