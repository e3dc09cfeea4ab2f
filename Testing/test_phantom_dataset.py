"""The phantom dataset builder: labels, splits, determinism, formats and ground-truth alignment."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from ACATLogic import read_volume, to_canonical
from ACATData.phantom.build import assign_labels, build, class_counts, main
from ACATData.phantom.io import load_case, read_manifest, stratified_splits


def test_class_counts_follow_proportions_and_every_class_occurs():
    assert class_counts(100, [0.46, 0.2, 0.2, 0.14]) == [46, 20, 20, 14]
    assert class_counts(4, [0.46, 0.2, 0.2, 0.14]) == [1, 1, 1, 1]
    assert sum(class_counts(17, [0.46, 0.2, 0.2, 0.14])) == 17
    labels = assign_labels(50, [0.46, 0.2, 0.2, 0.14], seed=3)
    assert labels == assign_labels(50, [0.46, 0.2, 0.2, 0.14], seed=3) != assign_labels(50, [0.46, 0.2, 0.2, 0.14], 4)
    assert [labels.count(c) for c in range(4)] == [23, 10, 10, 7]


def test_splits_are_stratified_70_15_15():
    labels = [0] * 40 + [1] * 20
    splits = stratified_splits(labels, seed=1)
    for c, n in ((0, 40), (1, 20)):
        got = [s for s, y in zip(splits, labels) if y == c]
        assert got.count("train") == round(0.7 * n) and got.count("val") == round(0.15 * n)
    assert splits == stratified_splits(labels, seed=1) != stratified_splits(labels, seed=2)


def _digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name not in ("manifest.json",):
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_lung_build_is_deterministic_whatever_the_worker_count(tmp_path):
    a = build("lung", 4, 5, tmp_path / "a", "npz", workers=1)
    b = build("lung", 4, 5, tmp_path / "b", "npz", workers=2)
    assert _digest(a.parent) == _digest(b.parent)
    rows = read_manifest(a)
    assert {r["label_name"] for r in rows} == {"normal", "covid19"}
    assert all(r["severity"] for r in rows)
    desc = json.loads((a.parent / "manifest.json").read_text())
    assert desc["what"].startswith("SIMULATED") and desc["n"] == 4
    case = load_case(a, rows[0])
    assert case.lesion_mask.shape == case.volume.voxels_hu.shape


def test_brain_dicom_case_round_trips_with_the_mask_aligned(tmp_path):
    """--format dicom: our reader and SimpleITK read the series; the NRRD masks sit on its grid."""
    from ACATData.phantom.brain import BrainParams, generate_brain_case

    manifest = build("brain", 1, 7, tmp_path / "d", "dicom", proportions=[0, 1, 0, 0], workers=1)
    row = read_manifest(manifest)[0]
    assert row["label_name"] == "left" and row["lesion_territories"].endswith("left")
    loaded = load_case(manifest, row)
    direct = generate_brain_case(7, 0, 1, BrainParams())
    a, _ = to_canonical(loaded.volume)
    b, rb = to_canonical(direct.volume)
    np.testing.assert_array_equal(a.voxels_hu, np.rint(b.voxels_hu))
    np.testing.assert_allclose(a.origin_mm, b.origin_mm, atol=1e-4)
    _, ra = to_canonical(loaded.volume)
    np.testing.assert_array_equal(ra.apply(loaded.lesion_mask), rb.apply(direct.lesion_mask))
    np.testing.assert_array_equal(ra.apply(loaded.territory_map), rb.apply(direct.territory_map))
    assert loaded.lesion_mask.any()
    # an independent reader agrees on the grid of the DICOM series
    reader = sitk.ImageSeriesReader()
    series = manifest.parent / row["image"]
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(series)))
    image = reader.Execute()
    np.testing.assert_allclose(image.GetOrigin(), loaded.volume.origin_mm, atol=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), loaded.volume.voxels_hu)


def test_cli_flags_override_parameters_and_bad_flags_exit_2(tmp_path, capsys):
    assert main(["--task", "lung", "--n", "2", "--seed", "1", "--out", str(tmp_path / "x"), "--workers", "1",
                 "--format", "nrrd"]) == 0
    rows = read_manifest(tmp_path / "x" / "manifest.csv")
    assert read_volume(tmp_path / "x" / rows[0]["image"]).voxels_hu.ndim == 3
    assert main(["--task", "lung", "--n", "2", "--out", str(tmp_path / "y"), "--no-such-parameter", "3"]) == 2
    assert "expected KEY=VALUE with KEY one of" in capsys.readouterr().err
    assert main(["--task", "lung", "--n", "0", "--out", str(tmp_path / "z")]) == 2


def test_demo_case_has_one_large_mca_lesion_on_the_asked_side(tmp_path):
    from training.evaluate import TERRITORY_IDS
    from ACATData.phantom.demo import write_demo_case
    from ACATData.phantom.io import load_case

    for side, label in (("left", 1), ("right", 2)):
        row = write_demo_case(tmp_path / side, side=side, fmt="npz")
        assert int(row["label"]) == label and row["lesion_territories"] == f"MCA_{side}"
        assert row["size_class"] == "IS-4"
        case = load_case(Path(row["manifest"]), row)
        lesion = case.lesion_mask > 0
        assert lesion.any()
        # inside its territory (the generator confines it to the territory's parenchyma)
        assert np.all(case.territory_map[lesion] == TERRITORY_IDS[f"MCA_{side}"])
        ml = lesion.sum() * np.prod(case.volume.spacing_mm) / 1000
        assert 40 <= ml <= 110, ml
