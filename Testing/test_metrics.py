"""`ACATLogic.metrics` on tiny hand-computed cases: every expected number below is worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ACATLogic.metrics import (CounterfactualOutcome, argmax_voxel, binary_iou_dice, chance_hit, chance_iou_dice,
                               classification_metrics, contrast_map, counterfactual_success, counterfactual_summary,
                               hit_score, iou_dice, mean_abs_change_outside_lesion, mean_and_sem, paired_comparison,
                               saliency_hit, top_p_mask)

BRAIN = ["none", "left", "right", "both"]


# --- classification --------------------------------------------------------------------------------------
def test_confusion_matrix_accuracy_and_recall_per_class():
    y_true = [0, 0, 1, 1, 1, 2, 3, 3]
    y_pred = [0, 1, 1, 1, 2, 2, 3, 0]
    m = classification_metrics(y_true, y_pred, BRAIN)
    assert m["n"] == 8
    assert m["confusion_matrix"] == [[1, 1, 0, 0],   # true none:  1 right, 1 called left
                                     [0, 2, 1, 0],   # true left:  2 right, 1 called right
                                     [0, 0, 1, 0],   # true right: 1 right
                                     [1, 0, 0, 1]]   # true both:  1 right, 1 called none
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert m["per_class_accuracy"] == pytest.approx({"none": 1 / 2, "left": 2 / 3, "right": 1.0, "both": 1 / 2})
    assert m["per_class_n"] == {"none": 2, "left": 3, "right": 1, "both": 2}
    assert "sensitivity" not in m  # four classes: no single "positive" class


def test_names_are_accepted_as_labels():
    m = classification_metrics(["none", "left"], [0, "right"], BRAIN)
    assert m["confusion_matrix"][1] == [0, 0, 1, 0]
    assert m["accuracy"] == 0.5


def test_class_without_scans_is_nan_not_zero():
    m = classification_metrics([0, 1], [0, 1], BRAIN)
    assert m["per_class_accuracy"]["none"] == 1.0
    assert math.isnan(m["per_class_accuracy"]["right"])


def test_binary_sensitivity_and_specificity():
    # 4 positives (covid19, class 1): 3 found; 6 negatives: 5 correctly normal
    y_true = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    y_pred = [1, 1, 1, 0, 0, 0, 0, 0, 0, 1]
    m = classification_metrics(y_true, y_pred, ["normal", "covid19"])
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(5 / 6)
    assert m["confusion_matrix"] == [[5, 1], [1, 3]]
    assert m["accuracy"] == pytest.approx(8 / 10)


def test_accuracy_by_group_counts_multi_lesion_scans_in_each_group():
    y_true = [1, 2, 3, 0, 1]
    y_pred = [1, 0, 3, 0, 2]
    groups = ["IS-1", "IS-2", ["IS-1", "IS-3"], None, "IS-1"]
    m = classification_metrics(y_true, y_pred, BRAIN, groups=groups)
    assert m["accuracy_by_group"] == {"IS-1": {"n": 3, "accuracy": pytest.approx(2 / 3)},
                                      "IS-2": {"n": 1, "accuracy": 0.0},
                                      "IS-3": {"n": 1, "accuracy": 1.0}}


def test_classification_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown class"):
        classification_metrics(["nothing"], [0], BRAIN)
    with pytest.raises(ValueError, match="not in 0..3"):
        classification_metrics([4], [0], BRAIN)
    with pytest.raises(ValueError, match="y_pred has 1"):
        classification_metrics([0, 1], [0], BRAIN)
    with pytest.raises(ValueError, match="groups"):
        classification_metrics([0, 1], [0, 1], BRAIN, groups=["IS-1"])


def test_mean_and_sem():
    mean, sem = mean_and_sem([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert sem == pytest.approx(1.0 / math.sqrt(3))  # std(ddof=1) = 1
    mean, sem = mean_and_sem([0.7])
    assert mean == 0.7 and math.isnan(sem)
    assert all(math.isnan(v) for v in mean_and_sem([]))


# --- hit score (Sec. 4.4) --------------------------------------------------------------------------------
def _territories_3x3x3() -> np.ndarray:
    """Slice 0 is territory 1, slice 1 is territory 2, slice 2 is territory 0 (outside)."""
    t = np.zeros((3, 3, 3), np.uint8)
    t[0], t[1] = 1, 2
    return t


def test_saliency_hit_when_the_maximum_is_in_a_lesion_territory():
    saliency = np.zeros((3, 3, 3), np.float32)
    saliency[1, 2, 0] = 0.9  # the maximum, in territory 2
    saliency[0, 0, 0] = 0.5
    assert argmax_voxel(saliency) == (1, 2, 0)
    assert saliency_hit(saliency, _territories_3x3x3(), [2]) is True
    assert saliency_hit(saliency, _territories_3x3x3(), [1, 3]) is False
    assert saliency_hit(saliency, _territories_3x3x3(), {5, 2}) is True


def test_saliency_hit_ties_go_to_the_first_voxel_in_c_order():
    saliency = np.zeros((3, 3, 3), np.float32)
    saliency[2, 0, 0] = saliency[1, 1, 1] = 1.0  # tie: (1, 1, 1) comes first in C order
    assert argmax_voxel(saliency) == (1, 1, 1)
    assert saliency_hit(saliency, _territories_3x3x3(), [2])
    flat = np.ones((3, 3, 3))
    assert argmax_voxel(flat) == (0, 0, 0)  # a flat map "points" at the first voxel
    saliency[0, 0, 0] = np.nan  # NaN is never the maximum
    assert argmax_voxel(saliency) == (1, 1, 1)


def test_saliency_hit_takes_the_maximum_over_the_six_territories_by_default():
    saliency = np.zeros((3, 3, 3), np.float32)
    saliency[2, 1, 1] = 1.0  # the global maximum, outside every territory (slice 2)
    saliency[0, 1, 2] = 0.4  # the maximum within the territories: territory 1
    saliency[1, 0, 0] = 0.3  # territory 2
    assert saliency_hit(saliency, _territories_3x3x3(), [1]) is True
    assert saliency_hit(saliency, _territories_3x3x3(), [2]) is False
    assert saliency_hit(saliency, _territories_3x3x3(), [1], within_territories=False) is False  # whole volume
    with pytest.raises(ValueError, match="no territory voxel"):
        saliency_hit(saliency, np.zeros((3, 3, 3), np.uint8), [1])


def test_saliency_hit_rejects_scans_without_a_lesion_and_grid_mismatch():
    with pytest.raises(ValueError, match="no lesion"):
        saliency_hit(np.ones((3, 3, 3)), _territories_3x3x3(), [])
    with pytest.raises(ValueError, match="shapes differ"):
        saliency_hit(np.ones((3, 3, 2)), _territories_3x3x3(), [1])


def test_hit_score():
    assert hit_score(3, 1) == 0.75
    assert hit_score(0, 2) == 0.0
    assert math.isnan(hit_score(0, 0))
    with pytest.raises(ValueError):
        hit_score(-1, 2)


# --- top-p, IoU, Dice (Appendix H) -----------------------------------------------------------------------
def test_top_p_mask_keeps_the_n_highest_voxels():
    saliency = np.array([[0.1, 0.9, 0.3], [0.8, 0.2, 0.05]])  # ranking: 0.9 (0,1), 0.8 (1,0), 0.3, ...
    np.testing.assert_array_equal(top_p_mask(saliency, 2), [[False, True, False], [True, False, False]])
    assert top_p_mask(saliency, 0).sum() == 0
    assert top_p_mask(saliency, 100).all()  # more than the map holds: everything


def test_top_p_mask_breaks_ties_in_c_order_and_keeps_exactly_n():
    saliency = np.array([[0.5, 0.9, 0.5], [0.5, 0.1, 0.5]])  # four 0.5s tie for places 2..5
    mask = top_p_mask(saliency, 3)
    np.testing.assert_array_equal(mask, [[True, True, True], [False, False, False]])
    assert mask.sum() == 3
    np.testing.assert_array_equal(top_p_mask(np.full((2, 2), 0.3), 1), [[True, False], [False, False]])
    nan_first = np.array([np.nan, 0.1, 0.2])
    np.testing.assert_array_equal(top_p_mask(nan_first, 2), [False, True, True])


def test_binary_iou_dice_of_known_overlaps():
    a = np.array([1, 1, 1, 0, 0, 0])
    b = np.array([0, 1, 1, 1, 1, 0])
    iou, dice = binary_iou_dice(a, b)
    assert iou == pytest.approx(2 / 5)           # |A n B| = 2, |A u B| = 5
    assert dice == pytest.approx(2 * 2 / (3 + 4))
    assert binary_iou_dice(a, a) == (1.0, 1.0)
    assert binary_iou_dice(a, 1 - a) == (0.0, 0.0)
    assert all(math.isnan(v) for v in binary_iou_dice(np.zeros(3), np.zeros(3)))


def test_iou_dice_binarises_at_the_lesion_size():
    saliency = np.zeros((2, 2, 3))
    saliency[0, 0, :] = [0.9, 0.8, 0.7]  # the three most salient voxels
    lesion = np.zeros((2, 2, 3), np.uint8)
    lesion[0, 0, 1:] = 1   # lesion 1: two voxels, both among the top three
    lesion[1, 1, 2] = 2    # lesion 2: one voxel, not salient; both lesions count (n = 3)
    iou, dice = iou_dice(saliency, lesion)
    assert iou == pytest.approx(2 / 4)   # intersection 2, union 3 + 3 - 2
    assert dice == pytest.approx(2 / 3)  # 2 * 2 / (3 + 3)
    assert all(math.isnan(v) for v in iou_dice(saliency, np.zeros_like(lesion)))
    perfect = lesion.astype(float)
    assert iou_dice(perfect, lesion) == (1.0, 1.0)


# --- counterfactual quality (Fig. 5) ---------------------------------------------------------------------
def _trajectory(p_left: list[float]) -> list[dict]:
    return [{"none": 1 - p, "left": p, "right": 0.0, "both": 0.0} for p in p_left]


def test_counterfactual_success_on_hand_made_trajectories():
    assert counterfactual_success(_trajectory([0.9, 0.6, 0.25, 0.19, 0.1]), "left") == CounterfactualOutcome(True, 3)
    assert counterfactual_success(_trajectory([0.9, 0.6, 0.2]), "left") == CounterfactualOutcome(False, None)
    # below the threshold before any step (the paper variant's reconstruction read as healthy): the method did
    # nothing, so it is no success - whatever happens after
    assert counterfactual_success(_trajectory([0.1, 0.9]), "left") == CounterfactualOutcome(False, None, True)
    assert counterfactual_success(_trajectory([0.1, 0.05, 0.01]), "left") == CounterfactualOutcome(False, None, True)
    assert counterfactual_success(_trajectory([0.1]), "left").success is False
    assert counterfactual_success(_trajectory([0.9, 0.45]), "left", threshold=0.5).steps_to_success == 1
    with pytest.raises(ValueError, match="no probability"):
        counterfactual_success(_trajectory([0.9]), "covid19")


def test_mean_abs_change_outside_lesion():
    x = np.zeros((1, 2, 3))
    cf = np.array([[[10.0, -4.0, 2.0], [0.0, 100.0, -6.0]]])
    lesion = np.array([[[0, 0, 0], [0, 1, 0]]])     # the 100 HU change is inside the lesion
    organ = np.array([[[1, 1, 0], [1, 1, 1]]])      # (0, 0, 2) is air: ignored with the organ mask
    assert mean_abs_change_outside_lesion(cf, x, lesion) == pytest.approx((10 + 4 + 2 + 0 + 6) / 5)
    assert mean_abs_change_outside_lesion(cf, x, lesion, organ) == pytest.approx((10 + 4 + 0 + 6) / 4)
    assert math.isnan(mean_abs_change_outside_lesion(cf, x, np.ones_like(lesion)))
    with pytest.raises(ValueError, match="shapes differ"):
        mean_abs_change_outside_lesion(cf, x, lesion[:, :1])


def test_counterfactual_summary():
    outcomes = [CounterfactualOutcome(True, 3), CounterfactualOutcome(False, None), CounterfactualOutcome(True, 1),
                CounterfactualOutcome(False, None)]
    s = counterfactual_summary(outcomes, latent_l1=[0.5, 0.1, None, 0.3], change_outside_lesion_hu=[2.0, 4.0])
    assert s["n"] == 4 and s["successes"] == 2
    assert s["success_rate"] == 0.5
    assert s["mean_steps_to_success"] == 2.0  # (3 + 1) / 2, failures excluded
    assert s["mean_latent_l1"] == pytest.approx(0.3)
    assert s["mean_abs_change_outside_lesion_hu"] == 3.0
    empty = counterfactual_summary([])
    assert empty["n"] == 0 and math.isnan(empty["success_rate"]) and math.isnan(empty["mean_steps_to_success"])


# --- in-organ overlap, chance lines, paired comparisons ---------------------------------------------------
def test_iou_dice_inside_the_organ_ignores_maxima_outside_it():
    lesion = np.zeros((1, 4, 6), np.uint8)
    lesion[0, 1, 1:3] = 1
    organ = np.zeros_like(lesion)
    organ[0, :, :4] = 1
    saliency = np.zeros(lesion.shape)
    saliency[0, :, 4:] = 5.0  # the scalp: brighter than anything inside
    saliency[0, 1, 1:3] = 1.0
    assert iou_dice(saliency, lesion) == (0.0, 0.0)  # over the whole volume, the scalp wins
    assert iou_dice(saliency, lesion, organ) == (1.0, 1.0)
    with pytest.raises(ValueError, match="shapes differ"):
        iou_dice(saliency, lesion, organ[:, :2])


def test_chance_lines():
    territories = np.array([[[0, 1, 1, 2], [2, 2, 3, 0]]])
    assert chance_hit(territories, [2]) == pytest.approx(3 / 6)
    assert chance_hit(territories, [1, 3]) == pytest.approx(3 / 6)
    assert math.isnan(chance_hit(np.zeros((1, 2, 2)), [1]))
    iou, dice = chance_iou_dice(10, 1000)  # overlap 0.1 voxel expected
    assert dice == pytest.approx(0.01) and iou == pytest.approx(0.1 / 19.9)
    assert chance_iou_dice(50, 50) == (1.0, 1.0)
    assert all(math.isnan(v) for v in chance_iou_dice(0, 10))


def test_contrast_line_ranks_organ_voxels_by_their_distance_from_the_organ_median():
    hu = np.array([[[-850.0, -840.0, -600.0, 400.0], [-860.0, -500.0, -850.0, 900.0]]])
    organ = np.array([[[1, 1, 1, 0], [0, 1, 1, 0]]])  # the bright column is bone, outside the organ
    # the organ median of -850, -850, -840, -600, -500 is -840
    expected = np.array([[[10.0, 0.0, 240.0, 0.0], [0.0, 340.0, 10.0, 0.0]]], np.float32)
    assert np.array_equal(contrast_map(hu, organ), expected)
    lesion = np.array([[[0, 0, 1, 0], [0, 1, 0, 0]]])  # two dense voxels: found without a model
    assert iou_dice(contrast_map(hu, organ), lesion, organ) == (1.0, 1.0)
    assert not contrast_map(hu, np.zeros_like(organ)).any()
    with pytest.raises(ValueError, match="shapes differ"):
        contrast_map(hu, organ[:, :1])


def test_paired_comparison_counts_and_interval():
    a = [1, 1, 0, 1, None, 1, 1, 1]
    b = [0, 1, 0, 0, 1, 0, 1, 0]
    out = paired_comparison(a, b, resamples=2000, seed=1)
    assert out["n"] == 7 and (out["wins"], out["losses"], out["ties"]) == (4, 0, 3)
    assert out["mean_difference"] == pytest.approx(4 / 7)
    lo, hi = out["ci95"]
    assert 0 < lo < 4 / 7 < hi <= 1
    assert paired_comparison(a, b, resamples=2000, seed=1) == out  # reproducible
    same = paired_comparison([0.5, 0.2], [0.5, 0.2])
    assert same["mean_difference"] == 0 and same["ci95"] == [0.0, 0.0]
    with pytest.raises(ValueError, match="same cases"):
        paired_comparison([1, 2], [1])
