"""Lung phantom (SIMULATED COVID-19 lesions on Slicer's real CTChest scan): ground truth checks.

A handful of cases, made once per module: a CT-2 case stored in a random orientation, the same case
stored canonically, its healthy twin (same seed and index, label 0), a CT-3 case and a CT-1 case.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from ACATLogic.volume import METADATA_KEYS, to_canonical
from ACATData.phantom.lung import (LEFT_LUNG, RIGHT_LUNG, SEVERITY_RANGES, TISSUE_HU, LungParams,
                                   generate_lung_case, lung_template)

SEED = 20230
FIXED = LungParams(vary_orientation=False)


@pytest.fixture(scope="module")
def ct2():
    return generate_lung_case(SEED, 1, 1, severity="CT-2")


@pytest.fixture(scope="module")
def ct2_canonical_storage():
    return generate_lung_case(SEED, 1, 1, FIXED, severity="CT-2")


@pytest.fixture(scope="module")
def twin():
    """The healthy twin of ``ct2``: same seed and index, label normal."""
    return generate_lung_case(SEED, 1, 0)


@pytest.fixture(scope="module")
def ct3():
    return generate_lung_case(SEED, 2, 1, severity="CT-3")


def _canonical(case):
    """volume, lesion mask and lung mask on the canonical (i -> L, j -> P, k -> S) grid."""
    volume, r = to_canonical(case.volume)
    return volume, np.ascontiguousarray(r.apply(case.lesion_mask)), np.ascontiguousarray(r.apply(case.organ_mask))


def _depth_to_chest_wall_mm(lung: np.ndarray, spacing_mm) -> np.ndarray:
    """Distance (mm) from each lung voxel to the costal / diaphragmatic / apical pleura, canonical grid.

    The mediastinum (whatever lies between the two lungs along a left-right row) is counted as inside,
    so that its border with the lungs is not "periphery"; written independently of the generator.
    """
    inside = lung > 0
    seen_from_right = np.cumsum(inside, axis=2) > 0
    seen_from_left = np.cumsum(inside[:, :, ::-1], axis=2)[:, :, ::-1] > 0
    cavity = inside | (seen_from_right & seen_from_left)
    return _distance_inside_mm(cavity, spacing_mm) * inside


def _distance_inside_mm(inside: np.ndarray, spacing_mm) -> np.ndarray:
    img = sitk.GetImageFromArray((~inside).astype(np.uint8))
    img.SetSpacing([float(s) for s in spacing_mm])
    dist = sitk.SignedMaurerDistanceMap(img, insideIsPositive=False, squaredDistance=False, useImageSpacing=True)
    return np.where(inside, sitk.GetArrayFromImage(dist), 0.0)


def _fraction_more_peripheral_than_median(lesion: np.ndarray, lung: np.ndarray, depth: np.ndarray) -> float:
    """Fraction of lesion voxels nearer the pleura than their own lung's median depth."""
    hits = total = 0
    for side in (LEFT_LUNG, RIGHT_LUNG):
        in_lung = lung == side
        lesion_here = (lesion > 0) & in_lung
        hits += int(np.sum(depth[lesion_here] < np.median(depth[in_lung])))
        total += int(lesion_here.sum())
    return hits / total


# -- template ------------------------------------------------------------------------------------
def test_template_lungs_are_on_their_sides():
    t = lung_template()
    assert np.allclose(t.volume.direction, np.eye(3))
    assert t.lung_mask.shape == t.volume.voxels_hu.shape and t.lung_mask.dtype == np.uint8
    assert set(np.unique(t.lung_mask)) == {0, LEFT_LUNG, RIGHT_LUNG}
    x = {v: t.volume.index_to_lps(np.argwhere(t.lung_mask == v)[:, ::-1])[:, 0].mean() for v in (1, 2)}
    assert x[LEFT_LUNG] > 30 and x[RIGHT_LUNG] < -30  # LPS: +x is the patient's left
    assert np.median(t.volume.voxels_hu[t.lung_mask > 0]) < -800  # aerated lung
    assert t.volume.voxels_hu.min() >= -1024


# -- determinism and bookkeeping -----------------------------------------------------------------
def test_same_arguments_same_case_other_index_other_case(ct2, ct3):
    again = generate_lung_case(SEED, 1, 1, severity="CT-2")
    assert np.array_equal(again.volume.voxels_hu, ct2.volume.voxels_hu)
    assert np.array_equal(again.lesion_mask, ct2.lesion_mask)
    assert np.array_equal(again.organ_mask, ct2.organ_mask)
    assert np.array_equal(again.volume.direction, ct2.volume.direction)
    assert np.array_equal(again.volume.origin_mm, ct2.volume.origin_mm)
    assert json.dumps(again.info, sort_keys=True) == json.dumps(ct2.info, sort_keys=True)
    assert ct3.volume.voxels_hu.shape != ct2.volume.voxels_hu.shape or \
        not np.array_equal(ct3.volume.voxels_hu, ct2.volume.voxels_hu)
    assert ct3.info["deformation"] != ct2.info["deformation"]


def test_case_contents_and_info_are_serialisable(ct2, twin):
    for case, label in ((ct2, 1), (twin, 0)):
        assert case.label == label and case.label_name == ("normal", "covid19")[label]
        assert case.territory_map is None
        assert case.lesion_mask.dtype == np.uint8 and case.organ_mask.dtype == np.uint8
        assert case.lesion_mask.shape == case.organ_mask.shape == case.volume.voxels_hu.shape
        assert case.volume.voxels_hu.dtype == np.float32
        assert case.volume.metadata == {"modality": "CT", "series_description": "SIMULATED lung phantom",
                                        "source_format": "phantom"}
        assert set(case.volume.metadata) <= set(METADATA_KEYS)
        info = json.loads(json.dumps(case.info))
        assert info["simulated"] is True and info["label"] == label
        assert LungParams.from_dict(info["params"]) == LungParams()
        # small cases: in-plane 2.5-3.5 mm, slices 5-10 mm
        spacing = sorted(case.volume.spacing_mm)
        assert 2.5 <= spacing[0] <= spacing[1] <= 3.5 and 5.0 <= spacing[2] <= 10.0
        assert case.volume.voxels_hu.size < 2_000_000


# -- labels and severities -----------------------------------------------------------------------
def test_normal_case_has_no_lesion(twin):
    assert twin.info["severity"] == "CT-0"
    assert not twin.lesion_mask.any()
    assert twin.info["involvement"] == {"total": 0.0, "left": 0.0, "right": 0.0}
    assert twin.info["lesions"] == []


@pytest.mark.parametrize("name", ["ct2", "ct3"])
def test_covid_lesions_are_in_the_lungs_at_the_severity_s_involvement(name, request):
    case = request.getfixturevalue(name)
    severity = name.upper().replace("CT", "CT-")
    assert case.info["severity"] == severity
    lesion, lung = case.lesion_mask > 0, case.organ_mask > 0
    assert np.sum(lesion & lung) >= 0.99 * lesion.sum() > 0
    achieved = lesion.sum() / lung.sum()
    assert achieved == pytest.approx(case.info["involvement"]["total"], abs=1e-9)
    assert achieved == pytest.approx(case.info["target_involvement"], abs=0.02)
    lo, hi = SEVERITY_RANGES[severity]
    assert lo - 0.02 <= achieved <= hi + 0.02
    for side, key in ((LEFT_LUNG, "left"), (RIGHT_LUNG, "right")):
        here = case.organ_mask == side
        assert np.sum(lesion & here) / here.sum() == pytest.approx(case.info["involvement"][key], abs=1e-9)
        assert case.info["involvement"][key] > 0  # bilateral
    # multifocal: several foci, numbered 1..n as listed in info
    ids = sorted(int(v) for v in np.unique(case.lesion_mask) if v)
    assert len(ids) >= 2
    assert ids == [f["id"] for f in case.info["lesions"]] == list(range(1, len(ids) + 1))
    assert [int(np.sum(case.lesion_mask == n)) for n in ids] == [f["voxels"] for f in case.info["lesions"]]


@pytest.mark.parametrize("name", ["ct2", "ct3"])
def test_lesions_are_mostly_peripheral(name, request):
    volume, lesion, lung = _canonical(request.getfixturevalue(name))
    depth = _depth_to_chest_wall_mm(lung, volume.spacing_mm)
    assert _fraction_more_peripheral_than_median(lesion, lung, depth) > 0.5


@pytest.mark.parametrize("name", ["ct2", "ct3"])
def test_lesions_are_mostly_posterior(name, request):
    """COVID-19 opacities favour the dependent (posterior) lung: most lesion voxels lie behind the median."""
    _, lesion, lung = _canonical(request.getfixturevalue(name))
    hits = total = 0
    for side in (LEFT_LUNG, RIGHT_LUNG):
        j_lung = np.argwhere(lung == side)[:, 1]  # canonical j grows towards the patient's back
        j_lesion = np.argwhere((lesion > 0) & (lung == side))[:, 1]
        hits += int(np.sum(j_lesion > np.median(j_lung)))
        total += j_lesion.size
    assert hits / total > 0.55


def test_ct2_shows_distinct_patches(ct2):
    """Moderate disease: several separate opacities with aerated lung between them, not one block."""
    _, lesion, _ = _canonical(ct2)
    components = sitk.ConnectedComponent(sitk.GetImageFromArray((lesion > 0).astype(np.uint8)))
    assert int(sitk.GetArrayFromImage(components).max()) >= 3
    assert len(ct2.info["lesions"]) >= 6


def test_lesions_are_peripheral_to_every_pleura_when_asked():
    """With the mediastinal pleura counted as periphery, the plain distance to any non-lung voxel."""
    case = generate_lung_case(SEED, 3, 1, LungParams(vary_orientation=False, exclude_mediastinal_pleura=False),
                              severity="CT-2")
    depth = _distance_inside_mm(case.organ_mask > 0, case.volume.spacing_mm)
    assert _fraction_more_peripheral_than_median(case.lesion_mask, case.organ_mask, depth) > 0.5


def test_ct1_only_when_enabled():
    assert "CT-1" not in LungParams(include_ct1=False).covid_severity_probabilities()
    assert set(LungParams().covid_severity_probabilities()) == {"CT-1", "CT-2", "CT-3", "CT-4"}  # the default
    assert LungParams().covid_severity_probabilities()["CT-1"] == pytest.approx(0.55)
    with pytest.raises(ValueError, match="CT-1"):
        generate_lung_case(SEED, 4, 1, LungParams(include_ct1=False), severity="CT-1")
    with pytest.raises(ValueError):
        generate_lung_case(SEED, 4, 0, severity="CT-2")
    mild = generate_lung_case(SEED, 4, 1, LungParams(include_ct1=True, vary_orientation=False), severity="CT-1")
    assert mild.label == 1 and mild.info["severity"] == "CT-1"
    assert 0 < mild.info["involvement"]["total"] < 0.25


# -- HU ------------------------------------------------------------------------------------------
def test_lesion_hu_lies_between_lung_and_soft_tissue_and_the_rest_is_unchanged(ct2, twin):
    sick, lesion, lung = _canonical(ct2)
    healthy, no_lesion, lung_twin = _canonical(twin)
    assert not no_lesion.any()
    assert np.array_equal(lung, lung_twin)  # the same patient
    hu, hu0 = sick.voxels_hu, healthy.voxels_hu
    lung_hu = float(np.median(hu0[lung > 0]))
    kinds = {f["id"]: f["kind"] for f in ct2.info["lesions"]}
    ggo = np.isin(lesion, [n for n, k in kinds.items() if k == "ggo"])
    assert ggo.any()
    assert -750 <= hu[ggo].mean() <= -250
    assert lung_hu + 100 < hu[lesion > 0].mean() < TISSUE_HU + 60
    assert np.all(hu[lesion > 0] >= hu0[lesion > 0])  # lesions only ever add tissue
    # outside the lesions (beyond their soft edge) the lung keeps its voxels exactly
    outside = (lung > 0) & (lesion == 0)
    assert np.mean(hu[outside] == hu0[outside]) > 0.9
    # and the lung stays near the real scan's HU (deformation, noise and calibration only)
    template = lung_template()
    original = float(np.median(template.volume.voxels_hu[template.lung_mask > 0]))
    assert abs(float(np.median(hu[outside])) - original) < 60


def test_ground_glass_is_mottled_keeps_vessels_visible_and_fades_out(ct2, twin):
    """Ground glass adds to the lung instead of painting over it, unevenly, with a soft margin."""
    sick, lesion, lung = _canonical(ct2)
    healthy, _, _ = _canonical(twin)
    hu, hu0 = sick.voxels_hu, healthy.voxels_hu
    kinds = {f["id"]: f["kind"] for f in ct2.info["lesions"]}
    ggo = np.isin(lesion, [n for n, k in kinds.items() if k == "ggo"])
    # vessels and bronchial walls (dense before) stay clearly brighter than the ground glass around them
    vessels = ggo & (hu0 > -300)
    assert vessels.sum() > 20
    assert hu[vessels].mean() > np.median(hu[ggo]) + 200
    # mottled: the HU added varies across a lesion far more than the scanner noise does
    added = (hu - hu0)[ggo & (hu0 <= -300)]
    assert added.std() > 50 and np.percentile(added, 90) - np.percentile(added, 10) > 150
    # the soft margin reaches past the mask's boundary, but not far: beyond edge_mm the lung is untouched
    distance = _distance_inside_mm(lesion == 0, sick.spacing_mm)
    rim = (lung > 0) & (lesion == 0) & (distance > 0) & (distance <= sick.spacing_mm[:2].min())
    assert np.mean(hu[rim] > hu0[rim]) > 0.5
    far = (lung > 0) & (lesion == 0) & (distance > ct2.info["params"]["edge_mm"])
    assert far.sum() > 1000 and np.array_equal(hu[far], hu0[far])


# -- geometry ------------------------------------------------------------------------------------
def test_left_lung_is_at_patient_left_whatever_the_storage(ct2, ct2_canonical_storage):
    assert ct2.info["storage"]["source_axis"] != [0, 1, 2] and any(ct2.info["storage"]["flip"])
    for case in (ct2, ct2_canonical_storage):
        # in the stored grid, through the stored geometry
        x_left = case.volume.index_to_lps(np.argwhere(case.organ_mask == LEFT_LUNG)[:, ::-1])[:, 0].mean()
        x_right = case.volume.index_to_lps(np.argwhere(case.organ_mask == RIGHT_LUNG)[:, ::-1])[:, 0].mean()
        assert x_left > 30 and x_right < -30
        # after to_canonical: the left lung is on the high-i side
        volume, _, lung = _canonical(case)
        i_left = np.argwhere(lung == LEFT_LUNG)[:, 2].mean()
        i_right = np.argwhere(lung == RIGHT_LUNG)[:, 2].mean()
        assert i_left > i_right
        assert volume.index_to_lps([i_left, 0, 0])[0] > 0


def test_storage_orientation_changes_nothing_but_the_storage(ct2, ct2_canonical_storage):
    assert ct2_canonical_storage.info["storage"]["orientation_code"] == "LPS"
    assert ct2.info["storage"]["orientation_code"] != "LPS"
    a, lesion_a, lung_a = _canonical(ct2)
    b, lesion_b, lung_b = _canonical(ct2_canonical_storage)
    assert np.array_equal(a.voxels_hu, b.voxels_hu)
    assert np.array_equal(lesion_a, lesion_b) and np.array_equal(lung_a, lung_b)
    assert np.allclose(a.origin_mm, b.origin_mm, atol=1e-6)
    assert np.allclose(a.spacing_mm, b.spacing_mm) and np.allclose(a.direction, b.direction)
    drop = ("params", "storage", "shape_kji")
    assert {k: v for k, v in ct2.info.items() if k not in drop} == \
        {k: v for k, v in ct2_canonical_storage.info.items() if k not in drop}
