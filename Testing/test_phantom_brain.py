"""The SIMULATED brain stroke phantom: template masks, territories, lesions, left/right in patient space.

About 8 cases on the real Cranium head CT (~2 s each) plus the template (~4 s), shared by the tests.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from ACATLogic.volume import CTVolume, to_canonical
from ACATData.phantom.brain import METADATA, BrainParams, generate_brain_case
from ACATData.phantom.brain_template import MidSagittalPlane, brain_template
from ACATData.phantom.common import BRAIN_LABELS, TERRITORIES

SEED = 1  # chosen so that the left case is stored with x reversed and permuted (code "RSP")
LEFT_IDS, RIGHT_IDS = {1, 3, 5}, {2, 4, 6}


@pytest.fixture(scope="module")
def template():
    return brain_template()


@pytest.fixture(scope="module")
def cases() -> dict:
    """label -> case (index = label), plus the lesion-free twin of the left case."""
    out = {label: generate_brain_case(SEED, label, label) for label in range(4)}
    out["twin_of_left"] = generate_brain_case(SEED, 1, 0)
    return out


def _canonical(case):
    """The case's volume and masks on the canonical grid (i -> L, j -> P, k -> S)."""
    vol, r = to_canonical(case.volume)
    return vol, {name: np.ascontiguousarray(r.apply(getattr(case, name)))
                 for name in ("lesion_mask", "organ_mask", "territory_map")}


def _lps(volume: CTVolume, mask: np.ndarray) -> np.ndarray:
    k, j, i = np.nonzero(mask)
    return volume.index_to_lps(np.stack([i, j, k], axis=1))


def _plane(case) -> MidSagittalPlane:
    p = case.info["midsagittal_plane_lps"]
    return MidSagittalPlane(tuple(p["point_mm"]), tuple(p["normal"]))


# -- template ---------------------------------------------------------------------------------------

def test_template_parenchyma_and_midline_are_plausible(template):
    voxel_ml = float(np.prod(template.volume.spacing_mm)) / 1000
    assert 900 < template.parenchyma.sum() * voxel_ml < 1500  # an adult brain without CSF
    hu = template.volume.voxels_hu[template.parenchyma > 0]
    assert 20 < np.median(hu) < 45
    n = np.asarray(template.plane.normal)
    assert n[0] > 0.98  # Cranium lies straight: the plane is nearly x = const, normal towards the left
    assert abs(template.plane.point_mm[0]) < 10  # and near the middle of the field of view (x = 0)


def test_template_territories_are_on_their_side_and_in_place(template):
    tmap = template.territory_map
    assert set(np.unique(tmap)) == {0, *TERRITORIES}
    assert not np.any((tmap > 0) & (template.parenchyma == 0))
    voxel_ml = float(np.prod(template.volume.spacing_mm)) / 1000
    stats = {}
    for tid, name in TERRITORIES.items():
        pts = _lps(template.volume, tmap == tid)
        assert len(pts) * voxel_ml > 20, name
        d = template.plane.signed_distance_mm(pts)
        assert (np.all(d > 0) if tid in LEFT_IDS else np.all(d < 0)), name
        stats[name] = {"medial_mm": float(np.mean(np.abs(d))), "y_mm": float(np.mean(pts[:, 1]))}
    for side in ("left", "right"):
        aca, mca, pca = (stats[f"{a}_{side}"] for a in ("ACA", "MCA", "PCA"))
        assert aca["medial_mm"] + 10 < mca["medial_mm"]  # ACA: the parasagittal strip
        assert pca["y_mm"] > mca["y_mm"] + 15 and pca["y_mm"] > aca["y_mm"] + 15  # PCA: posterior (+y)


# -- cases ------------------------------------------------------------------------------------------

def test_same_inputs_give_identical_cases_whatever_the_thread_count(cases):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        again = generate_brain_case(SEED, 3, 3)
    finally:
        torch.set_num_threads(threads)
    first = cases[3]
    assert np.array_equal(first.volume.voxels_hu, again.volume.voxels_hu)
    for name in ("lesion_mask", "organ_mask", "territory_map"):
        assert np.array_equal(getattr(first, name), getattr(again, name)), name
    assert np.array_equal(first.volume.direction, again.volume.direction)
    assert first.info == again.info
    other = cases[0]  # another index (and label): another patient
    assert other.volume.voxels_hu.shape != first.volume.voxels_hu.shape or \
        not np.array_equal(other.volume.voxels_hu, first.volume.voxels_hu)
    assert other.info["deformation"] != first.info["deformation"]


def test_case_records_are_complete_and_serialisable(cases):
    for label in range(4):
        case = cases[label]
        assert case.label == label and case.label_name == BRAIN_LABELS[label]
        assert case.volume.metadata == METADATA
        for name in ("lesion_mask", "organ_mask", "territory_map"):
            arr = getattr(case, name)
            assert arr.dtype == np.uint8 and arr.shape == case.volume.voxels_hu.shape, name
        info = json.loads(json.dumps(case.info))
        assert info["simulated"] is True and len(info["lesions"]) == (0, 1, 1, 2)[label]
        for key in ("deformation", "spacing_mm", "noise", "hu_calibration", "orientation"):
            assert key in info, key
        assert info["shape_kji"] == list(case.volume.voxels_hu.shape)
        assert 0.9 <= min(case.volume.spacing_mm) and max(case.volume.spacing_mm) <= 5.0
        # air stays air: the corners of the field of view (outside the head)
        hu = case.volume.voxels_hu
        corners = np.concatenate([hu[a, b, c].ravel() for a in (slice(0, 3), slice(-3, None))
                                  for b in (slice(0, 8), slice(-8, None)) for c in (slice(0, 8), slice(-8, None))])
        assert -1025 <= np.median(corners) <= -975  # Cranium's air is -1000; calibration moves it < 15 HU
    assert json.loads(json.dumps(BrainParams().to_dict()))["class_proportions"] == [0.46, 0.2, 0.2, 0.14]
    # the seed exercises the storage variation, including a reversed x axis
    assert cases[1].info["orientation"]["varied"] and cases[1].volume.direction[0, 0] < 0.5


@pytest.mark.parametrize("label", [0, 1, 2, 3])
def test_lesions_match_the_label_in_patient_coordinates(cases, label):
    case = cases[label]
    vol, masks = _canonical(case)
    lesion, organ, tmap = masks["lesion_mask"], masks["organ_mask"], masks["territory_map"]
    expected_sides = {0: [], 1: ["left"], 2: ["right"], 3: ["left", "right"]}[label]
    assert sorted(np.unique(lesion).tolist()) == list(range(len(expected_sides) + 1))
    assert [les["side"] for les in case.info["lesions"]] == expected_sides
    plane = _plane(case)
    assert plane.normal[0] > 0.9  # the plane's normal points to the patient's left (+x)
    voxel_ml = float(np.prod(vol.spacing_mm)) / 1000
    for les in case.info["lesions"]:
        m = lesion == les["id"]
        # physical side: every voxel on its side of the mid-sagittal plane, in LPS millimetres
        d = plane.signed_distance_mm(_lps(vol, m))
        assert np.all(d > 0) if les["side"] == "left" else np.all(d < 0)
        # the territory map agrees, and the lesion lies in the parenchyma and its stated territory
        ids = tmap[m]
        assert set(np.unique(ids).tolist()) <= (LEFT_IDS if les["side"] == "left" else RIGHT_IDS)
        assert np.mean(ids == les["territory_id"]) >= 0.99 and TERRITORIES[les["territory_id"]] == les["territory"]
        assert np.mean(organ[m] > 0) >= 0.99
        # volume within its size class (25% for discretisation) and as recorded
        lo, hi = les["size_class_range_ml"]
        volume_ml = m.sum() * voxel_ml
        assert 0.75 * lo <= volume_ml <= 1.25 * hi, (les["size_class"], volume_ml)
        assert volume_ml == pytest.approx(les["volume_ml"], rel=1e-6)
        assert np.allclose(_lps(vol, m).mean(axis=0), les["centroid_lps_mm"], atol=1e-3)


def _ring(case, lesion_id: int, inner_mm: float = 2.5, outer_mm: float = 7.0) -> np.ndarray:
    """Parenchyma between inner_mm and outer_mm from the lesion (physical distance, stored grid)."""
    image = sitk.GetImageFromArray((case.lesion_mask == lesion_id).astype(np.uint8))
    image.SetSpacing(tuple(float(s) for s in case.volume.spacing_mm))
    dist = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(image, insideIsPositive=False,
                                                               squaredDistance=False, useImageSpacing=True))
    return (dist > inner_mm) & (dist <= outer_mm) & (case.organ_mask > 0) & (case.lesion_mask == 0)


def test_lesions_are_hypodense_by_the_drawn_contrast(cases):
    checked = 0
    for label in (1, 2, 3):
        case = cases[label]
        hu = case.volume.voxels_hu
        scale = case.info["hu_calibration"]["scale"]
        for les in case.info["lesions"]:
            m = case.lesion_mask == les["id"]
            drop = float(hu[_ring(case, les["id"])].mean() - hu[m].mean())
            assert drop == pytest.approx(les["contrast_hu"] * scale, abs=2.0), les
            checked += 1
    assert checked == 4
    # against the lesion-free twin (same patient, same noise): the change is exactly the lesion
    left, twin = cases[1], cases["twin_of_left"]
    les = left.info["lesions"][0]
    m = left.lesion_mask == les["id"]
    diff = left.volume.voxels_hu - twin.volume.voxels_hu
    scale = left.info["hu_calibration"]["scale"]
    assert float(diff[m].mean()) == pytest.approx(-les["contrast_hu"] * scale, abs=0.6)
    assert float(diff[m].max()) < 2.0  # nowhere brighter in the lesion than the tissue it replaced
    far = ~(_ring(left, les["id"], 0.0, 30.0) | m)
    assert float(np.abs(diff[far]).max()) < 1e-3  # and nothing changes away from it
    assert np.array_equal(twin.lesion_mask, np.zeros_like(twin.lesion_mask))


def test_storage_orientation_changes_the_array_not_the_anatomy():
    varied = generate_brain_case(SEED, 5, 1, BrainParams(orientation_probability=1.0))
    plain = generate_brain_case(SEED, 5, 1, BrainParams(orientation_variation=False))
    assert varied.info["orientation"]["varied"] and not plain.info["orientation"]["varied"]
    assert not np.allclose(varied.volume.direction, np.eye(3))
    assert np.allclose(plain.volume.direction, np.eye(3))
    canonical, r = to_canonical(varied.volume)
    assert np.array_equal(canonical.voxels_hu, plain.volume.voxels_hu)
    assert np.allclose(canonical.origin_mm, plain.volume.origin_mm, atol=1e-6)
    assert np.allclose(canonical.spacing_mm, plain.volume.spacing_mm)
    assert np.allclose(canonical.direction, plain.volume.direction)
    for name in ("lesion_mask", "organ_mask", "territory_map"):
        assert np.array_equal(r.apply(getattr(varied, name)), getattr(plain, name)), name
    assert varied.info["lesions"] == plain.info["lesions"]
