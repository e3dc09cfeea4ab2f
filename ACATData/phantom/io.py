"""Phantom datasets on disk: cases in npz, DICOM or NRRD, masks as NRRD, and the manifest.

Layout of a dataset folder::

    manifest.csv        one row per case (columns below)
    manifest.json       the command, every generator parameter, the seed, the split rule, the counts
    cases/<case_id>/    image.npz | image/ (a CT DICOM series) | image.nrrd,
                        lesion_mask.nrrd, organ_mask.nrrd, [territory_map.nrrd], info.json

manifest.csv columns: case_id, task, split, label, label_name, image, lesion_mask, organ_mask,
territory_map, size_class, lesion_territories, severity, involvement_pct (paths relative to the
manifest's folder; several lesions' values joined by ";").
"""

from __future__ import annotations

import csv
import io as _io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import SimpleITK as sitk

from ACATLogic.errors import ACATInputError
from ACATLogic.io import read_volume, write_dicom_series, write_volume
from ACATLogic.io.atomic import atomic_path
from ACATLogic.io.itk_files import to_sitk
from ACATLogic.volume import CTVolume

from .common import PhantomCase

MANIFEST_COLUMNS = ("case_id", "task", "split", "label", "label_name", "image", "lesion_mask", "organ_mask",
                    "territory_map", "size_class", "lesion_territories", "severity", "involvement_pct")
FORMATS = ("npz", "dicom", "nrrd")


@dataclass
class LoadedCase:
    """A case read back: the volume and its masks, all on the volume's grid (K, J, I)."""

    row: dict
    volume: CTVolume
    lesion_mask: Optional[np.ndarray]
    organ_mask: Optional[np.ndarray]
    territory_map: Optional[np.ndarray]


def write_mask(mask: np.ndarray, like: CTVolume, path: Path) -> None:
    """A uint8 label map as NRRD on ``like``'s grid (atomic)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(mask.astype(np.uint8)))
    ref = to_sitk(like.with_voxels(np.zeros(like.voxels_hu.shape, np.float32)))
    image.CopyInformation(ref)
    with atomic_path(path, overwrite=True) as tmp:
        sitk.WriteImage(image, str(tmp), True)


def read_mask(path: Path, like: CTVolume) -> np.ndarray:
    """A label map NRRD, checked to lie on ``like``'s grid (same size, spacing, origin, direction)."""
    image = sitk.ReadImage(str(path))
    if image.GetSize() != tuple(like.size_ijk):
        raise ACATInputError(f"mask size {image.GetSize()} differs from the image's {like.size_ijk}", path)
    if not (np.allclose(image.GetSpacing(), like.spacing_mm, atol=1e-4)
            and np.allclose(image.GetOrigin(), like.origin_mm, atol=1e-3)
            and np.allclose(np.reshape(image.GetDirection(), (3, 3)), like.direction, atol=1e-5)):
        raise ACATInputError("the mask's geometry differs from the image's", path)
    return sitk.GetArrayFromImage(image).astype(np.uint8)


def _npz_bytes(case: PhantomCase) -> bytes:
    v = case.volume
    arrays = {"hu": np.rint(v.voxels_hu).astype(np.int16), "spacing_mm": v.spacing_mm, "origin_mm": v.origin_mm,
              "direction": v.direction, "lesion_mask": case.lesion_mask.astype(np.uint8),
              "organ_mask": case.organ_mask.astype(np.uint8)}
    if case.territory_map is not None:
        arrays["territory_map"] = case.territory_map.astype(np.uint8)
    buf = _io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def right_handed(case: PhantomCase) -> PhantomCase:
    """The same case with its slice axis reversed when the grid is left-handed.

    A DICOM reader stacks slices along row x column (the slice normal), so a left-handed grid comes back
    with its slices reversed; writing it right-handed keeps the NRRD masks on the grid that is read.
    """
    v = case.volume
    if np.linalg.det(v.direction) > 0:
        return case
    k = v.voxels_hu.shape[0]
    direction = v.direction.copy()
    direction[:, 2] *= -1
    volume = CTVolume(v.voxels_hu[::-1].copy(), v.spacing_mm, v.index_to_lps([0, 0, k - 1]), direction,
                      dict(v.metadata), list(v.warnings))
    flip = lambda m: None if m is None else m[::-1].copy()  # noqa: E731
    return PhantomCase(volume, flip(case.lesion_mask), flip(case.organ_mask), flip(case.territory_map),
                       case.label, case.label_name, case.info)


def write_case(case: PhantomCase, root: Path, case_id: str, fmt: str) -> dict:
    """Write one case under ``root/cases/case_id``; returns the relative paths for the manifest."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}")
    folder = root / "cases" / case_id
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "dicom":
        case = right_handed(case)
    rel = lambda p: str(p.relative_to(root))  # noqa: E731
    paths = {"image": "", "lesion_mask": "", "organ_mask": "", "territory_map": ""}
    # HU are stored as integers in every format (as a scanner would): the phantom is rounded once here.
    volume = case.volume.with_voxels(np.rint(case.volume.voxels_hu).astype(np.float32))
    if fmt == "npz":
        target = folder / "image.npz"
        with atomic_path(target, overwrite=True) as tmp:
            tmp.write_bytes(_npz_bytes(case))
        paths["image"] = rel(target)
    else:
        if fmt == "dicom":
            target = folder / "image"
            write_dicom_series(volume, target, series_description="SIMULATED phantom", overwrite=True)
        else:
            target = folder / "image.nrrd"
            write_volume(volume, target, overwrite=True)
        paths["image"] = rel(target)
        for name in ("lesion_mask", "organ_mask", "territory_map"):
            mask = getattr(case, name)
            if mask is not None:
                write_mask(mask, volume, folder / f"{name}.nrrd")
                paths[name] = rel(folder / f"{name}.nrrd")
    with atomic_path(folder / "info.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps({"label": case.label, "label_name": case.label_name, **case.info}, indent=1))
    return paths


def load_case(manifest_path, row: dict) -> LoadedCase:
    """Read a manifest row's image and masks (any of the three formats)."""
    root = Path(manifest_path).parent
    image = root / row["image"]
    if image.suffix == ".npz":
        with np.load(image) as data:
            volume = CTVolume(data["hu"].astype(np.float32), data["spacing_mm"], data["origin_mm"], data["direction"],
                              {"modality": "CT", "source_format": "phantom"})
            masks = {k: data[k] if k in data else None for k in ("lesion_mask", "organ_mask", "territory_map")}
        return LoadedCase(row, volume, masks["lesion_mask"], masks["organ_mask"], masks["territory_map"])
    volume = read_volume(image)
    masks = {}
    for name in ("lesion_mask", "organ_mask", "territory_map"):
        masks[name] = read_mask(root / row[name], volume) if row.get(name) else None
    return LoadedCase(row, volume, masks["lesion_mask"], masks["organ_mask"], masks["territory_map"])


def stratified_splits(labels: list[int], seed: int, fractions=(0.7, 0.15, 0.15)) -> list[str]:
    """'train' / 'val' / 'test' per case, stratified by label, deterministic for ``seed``."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7919]))
    splits = [""] * len(labels)
    for label in sorted(set(labels)):
        idx = [i for i, y in enumerate(labels) if y == label]
        rng.shuffle(idx)
        n = len(idx)
        n_train = int(round(fractions[0] * n))
        n_val = int(round(fractions[1] * n))
        for rank, i in enumerate(idx):
            splits[i] = "train" if rank < n_train else ("val" if rank < n_train + n_val else "test")
    return splits


def write_manifest(root: Path, rows: list[dict], description: dict) -> Path:
    """manifest.csv (rows sorted by case_id) and manifest.json (how the data was made), atomically."""
    path = root / "manifest.csv"
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in sorted(rows, key=lambda r: r["case_id"]):
        writer.writerow({k: row.get(k, "") for k in MANIFEST_COLUMNS})
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(buf.getvalue())
    with atomic_path(root / "manifest.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(description, indent=2) + "\n")
    return path


def read_manifest(path) -> list[dict]:
    """The rows of manifest.csv (``label`` as int). Raises ACATInputError naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise ACATInputError("no such manifest file", path)
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = {"case_id", "label", "image"} - set(reader.fieldnames or [])
        if missing:
            raise ACATInputError(f"the manifest lacks the columns {sorted(missing)}", path)
        rows = []
        for n, row in enumerate(reader, start=2):
            try:
                row["label"] = int(row["label"])
            except (TypeError, ValueError):
                raise ACATInputError(f"line {n}: label {row.get('label')!r} is not an integer", path) from None
            rows.append(row)
    return rows
