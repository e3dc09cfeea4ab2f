"""Evaluation metrics of the paper's experiments, in pure numpy (Fontanella et al., ICML 2023).

* Classification (Sec. 4.2-4.3, Table 1): `classification_metrics` - accuracy, recall per class,
  confusion matrix, sensitivity/specificity for binary tasks, accuracy per group (lesion size class);
  `mean_and_sem` over training seeds.
* Saliency localisation (Sec. 4.4): `saliency_hit` / `hit_score` - is the saliency maximum inside
  one of the scan's lesion territories?
* Saliency overlap (Appendix H): `top_p_mask` keeps the n most salient voxels, n = the lesion's voxel
  count; `iou_dice` compares that with the lesion mask, inside the organ when given.
* Chance lines (`chance_hit`, `chance_iou_dice`) and paired comparisons of two methods on the same
  cases (`paired_comparison`: wins/losses and a bootstrap 95 % interval of the mean difference).
* Counterfactual quality (Fig. 5): `counterfactual_success` on an explanation's trajectory,
  `mean_abs_change_outside_lesion` and `counterfactual_summary`.

Conventions: arrays are (K, J, I) like ``CTVolume.voxels_hu`` (any shape works as long as the arrays
agree); class labels are indices into ``class_names`` (names are accepted too); a metric that has no
data (no lesion, no case in a group) is ``nan`` - never a made-up 0 - and writers print it as "n/a".
Ties are always broken the same way, by C order (the first voxel in ``array.ravel()`` order wins), so
every number is reproducible across runs and platforms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Hashable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

#: a counterfactual "succeeds" when the original class's probability falls below this (paper Fig. 5)
SUCCESS_PROBABILITY = 0.2

Label = Union[int, str]
Group = Union[None, Hashable, Sequence[Hashable]]


# ---------------------------------------------------------------------------------------------------------
# Classification (Sec. 4.2-4.3, Table 1)
# ---------------------------------------------------------------------------------------------------------
def _class_indices(labels: Sequence[Label], class_names: Sequence[str], what: str) -> np.ndarray:
    """Labels as class indices; names are looked up in ``class_names``. Raises ValueError if out of range."""
    out = []
    for value in labels:
        if isinstance(value, str):
            if value not in class_names:
                raise ValueError(f"{what}: unknown class {value!r}; classes are {list(class_names)}")
            out.append(list(class_names).index(value))
        else:
            index = int(value)
            if index != value or not 0 <= index < len(class_names):
                raise ValueError(f"{what}: class index {value!r} is not in 0..{len(class_names) - 1}")
            out.append(index)
    return np.asarray(out, dtype=np.int64)


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, or nan when there is nothing to divide (an empty class or group)."""
    return float(numerator) / float(denominator) if denominator > 0 else math.nan


def _group_keys(group: Group) -> list:
    """The groups one case belongs to: None/"" -> none, a string -> itself, a sequence -> each item.

    A brain scan with two lesions has two size classes ("IS-1;IS-3" in the manifest); it counts once
    in each of its groups, because Table 1 asks "how often is a scan with a lesion of this size right".
    """
    if group is None or (isinstance(group, str) and group == ""):
        return []
    if isinstance(group, (str, bytes)) or not isinstance(group, Iterable):
        return [group]
    return list(dict.fromkeys(g for g in group if g is not None and g != ""))  # unique, in order


def classification_metrics(y_true: Sequence[Label], y_pred: Sequence[Label], class_names: Sequence[str],
                           groups: Optional[Sequence[Group]] = None) -> dict:
    """Accuracy, recall per class, confusion matrix (+ sensitivity/specificity, accuracy per group).

    Args:
        y_true, y_pred: one class index (or class name) per scan.
        class_names: the model's classes in index order; class 0 is the healthy class.
        groups: optional, one entry per scan: a group key (e.g. the lesion size class "IS-2"), a list of
            keys (a scan in several groups counts in each), or None/"" (the scan is in no group).

    Returns a JSON-serialisable dict:
        ``n``, ``accuracy``, ``class_names``,
        ``per_class_accuracy``: {name: recall of that class} (nan when the class has no scan),
        ``per_class_n``: {name: number of scans of that class},
        ``confusion_matrix``: list of rows, ``[true][predicted]`` counts,
        binary tasks only: ``sensitivity`` = recall of class 1 (positive = class 1, the finding) and
        ``specificity`` = recall of class 0,
        with ``groups``: ``accuracy_by_group``: {key: {"n": scans, "accuracy": fraction}} sorted by key.
    """
    names = list(class_names)
    if len(names) < 2:
        raise ValueError("classification needs at least two classes")
    true = _class_indices(y_true, names, "y_true")
    pred = _class_indices(y_pred, names, "y_pred")
    if true.shape != pred.shape:
        raise ValueError(f"y_true has {true.size} labels but y_pred has {pred.size}")
    n_classes = len(names)
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (true, pred), 1)
    correct = true == pred
    per_class_n = confusion.sum(axis=1)
    recall = [_ratio(confusion[c, c], per_class_n[c]) for c in range(n_classes)]
    result: dict = {
        "n": int(true.size),
        "accuracy": _ratio(correct.sum(), true.size),
        "class_names": names,
        "per_class_accuracy": dict(zip(names, recall)),
        "per_class_n": {name: int(k) for name, k in zip(names, per_class_n)},
        "confusion_matrix": confusion.tolist(),
    }
    if n_classes == 2:
        result["sensitivity"] = recall[1]
        result["specificity"] = recall[0]
    if groups is not None:
        if len(groups) != true.size:
            raise ValueError(f"groups has {len(groups)} entries but there are {true.size} scans")
        tally: dict = {}
        for group, ok in zip(groups, correct):
            for key in _group_keys(group):
                n, k = tally.get(key, (0, 0))
                tally[key] = (n + 1, k + int(ok))
        result["accuracy_by_group"] = {str(key): {"n": n, "accuracy": _ratio(k, n)}
                                       for key, (n, k) in sorted(tally.items(), key=lambda kv: str(kv[0]))}
    return result


def mean_and_sem(values: Iterable[float]) -> tuple[float, float]:
    """(mean, standard error of the mean) over seeds: sem = std(ddof=1) / sqrt(n).

    With one value the sem is nan, not 0: one seed says nothing about seed-to-seed spread, and a 0
    would read as "perfectly reproducible". No value -> (nan, nan). NaN values are not skipped (a
    failed seed must not silently vanish from a table).
    """
    x = np.asarray(list(values), dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan
    mean = float(x.mean())
    if x.size == 1:
        return mean, math.nan
    return mean, float(x.std(ddof=1) / math.sqrt(x.size))


# ---------------------------------------------------------------------------------------------------------
# Saliency localisation (Sec. 4.4): hit score
# ---------------------------------------------------------------------------------------------------------
def _same_shape(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what}: shapes differ, {a.shape} vs {b.shape}")


def argmax_voxel(saliency: np.ndarray) -> tuple[int, ...]:
    """Index of the saliency maximum. Ties: the first in C order; NaN voxels are ignored."""
    s = np.asarray(saliency, dtype=np.float64)
    if s.size == 0 or np.isnan(s).all():
        raise ValueError("the saliency map is empty or entirely NaN")
    flat = int(np.nanargmax(s))  # nanargmax returns the first maximum in C (ravel) order
    return tuple(int(i) for i in np.unravel_index(flat, s.shape))


def saliency_hit(saliency: np.ndarray, territory_map: np.ndarray, lesion_territory_ids: Iterable[int], *,
                 within_territories: bool = True) -> bool:
    """Paper Sec. 4.4: a hit when the saliency maximum lies in one of the scan's lesion territories.

    The paper localises the lesion "out of 6 possible regions": the map's answer is the territory that
    holds its maximum. With ``within_territories`` (the default) the maximum is therefore taken over the
    voxels of the six territories (the brain parenchyma), which is what the paper's brain-only maps
    cover; a map on the whole head would otherwise be scored on the skull base or the scalp, which are
    not among the answers. ``within_territories=False`` takes the maximum over the whole volume (a map
    peaking outside every territory is then a miss).

    Args:
        saliency: (K, J, I) saliency map on the scan's grid.
        territory_map: (K, J, I) integer territory ids (1..6, `ACATData.phantom.common.TERRITORIES`;
            0 = outside every territory), on the same grid.
        lesion_territory_ids: the territories that hold a lesion of this scan. Must not be empty: only
            scans with a lesion are scored (a scan without one has nothing to hit).

    Ties for the maximum go to the first voxel in C order (`argmax_voxel`): the result is deterministic.
    A flat map then "points" at the first candidate voxel: outside the brain (a miss) over the whole
    volume, and the first territory in C order within the territories (a hit only by chance).
    """
    ids = {int(t) for t in lesion_territory_ids}
    if not ids:
        raise ValueError("the scan has no lesion territory; only scans with a lesion are scored")
    s = np.asarray(saliency)
    territories = np.asarray(territory_map)
    _same_shape(s, territories, "saliency vs territory map")
    if within_territories:
        inside = territories > 0
        if not inside.any():
            raise ValueError("the territory map has no territory voxel")
        s = np.where(inside, np.asarray(s, dtype=np.float64), np.nan)
        if np.isnan(s[inside]).all():
            return False  # nothing to point with
    return int(territories[argmax_voxel(s)]) in ids


def hit_score(hits: int, misses: int) -> float:
    """Sec. 4.4: hits / (hits + misses); nan when no scan was scored."""
    if hits < 0 or misses < 0:
        raise ValueError("hits and misses must be >= 0")
    return _ratio(hits, hits + misses)


# ---------------------------------------------------------------------------------------------------------
# Saliency overlap (Appendix H): top-p binarisation, IoU and Dice
# ---------------------------------------------------------------------------------------------------------
def top_p_mask(saliency: np.ndarray, n_voxels: int) -> np.ndarray:
    """Appendix H: a bool mask of the ``n_voxels`` most salient voxels (p chosen = the lesion's size).

    Exactly ``min(n_voxels, saliency.size)`` voxels are kept, even when values tie at the cut: among
    equal values the first in C order win. A threshold ("everything >= the n-th value") would instead
    keep a variable number of voxels and, for a flat map, the whole volume. NaN voxels rank last.
    """
    if n_voxels < 0:
        raise ValueError("n_voxels must be >= 0")
    s = np.asarray(saliency, dtype=np.float64)
    flat = np.where(np.isnan(s), -np.inf, s).ravel()
    # A stable sort of the negated values ranks ties by ascending flat index, i.e. C order.
    order = np.argsort(-flat, kind="stable")
    mask = np.zeros(flat.size, dtype=bool)
    mask[order[: min(int(n_voxels), flat.size)]] = True
    return mask.reshape(s.shape)


def binary_iou_dice(predicted: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(IoU, Dice) of two binary masks (nonzero = inside); (nan, nan) when both are empty."""
    a = np.asarray(predicted) != 0
    b = np.asarray(truth) != 0
    _same_shape(a, b, "predicted vs truth")
    intersection = int(np.count_nonzero(a & b))
    union = int(np.count_nonzero(a | b))
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return _ratio(intersection, union), _ratio(2 * intersection, total)


def iou_dice(saliency: np.ndarray, lesion_mask: np.ndarray,
             organ_mask: Optional[np.ndarray] = None) -> tuple[float, float]:
    """Appendix H: IoU and Dice between the top-n saliency voxels and the lesion, n = lesion voxel count.

    ``lesion_mask``: nonzero inside any lesion (lesion n labelled n; all lesions count together).
    ``organ_mask``: when given, only its voxels compete for the top n (like the hit score, which looks
    inside the territories): a map is not scored on the scalp, the skull or the air, where no lesion can
    be, and lesion voxels outside the organ (none, in the phantom) are not counted.
    A scan without a lesion gives (nan, nan): it is not scored.
    """
    lesion = np.asarray(lesion_mask) != 0
    s = np.asarray(saliency, dtype=np.float64)
    _same_shape(s, lesion, "saliency vs lesion mask")
    if organ_mask is not None:
        organ = np.asarray(organ_mask) != 0
        _same_shape(organ, lesion, "organ mask vs lesion mask")
        s = np.where(organ, s, np.nan)  # NaN ranks last in top_p_mask
        lesion = lesion & organ
    n = int(np.count_nonzero(lesion))
    if n == 0:
        return math.nan, math.nan
    return binary_iou_dice(top_p_mask(s, n), lesion)


# ---------------------------------------------------------------------------------------------------------
# What chance scores: a map that points at a uniformly random voxel of the organ
# ---------------------------------------------------------------------------------------------------------
def chance_hit(territory_map: np.ndarray, lesion_territory_ids: Iterable[int]) -> float:
    """The hit probability of a uniformly random voxel of the territories: their share in lesion territories."""
    territories = np.asarray(territory_map)
    inside = np.count_nonzero(territories > 0)
    if inside == 0:
        return math.nan
    return float(np.count_nonzero(np.isin(territories, list(lesion_territory_ids)))) / inside


def chance_iou_dice(lesion_voxels: int, organ_voxels: int) -> tuple[float, float]:
    """Expected (IoU, Dice) of n uniformly random organ voxels against an n-voxel lesion inside the organ.

    The expected overlap is n * n / N (hypergeometric mean); IoU = overlap / (2n - overlap) and Dice =
    overlap / n at that overlap (a first-order expectation, exact enough for a chance line).
    """
    n, total = int(lesion_voxels), int(organ_voxels)
    if n <= 0 or total <= 0:
        return math.nan, math.nan
    overlap = n * min(n, total) / total
    return overlap / (2 * n - overlap), overlap / n


def contrast_map(hu: np.ndarray, organ_mask: np.ndarray) -> np.ndarray:
    """A map that needs no model: how far each organ voxel's HU lies from the organ's median (0 outside it).

    A reference line next to chance: where lesions differ from the tissue around them by their density alone
    (ground glass in aerated lung), this scores well without any classifier, and a map that scores no better
    than it has shown nothing a window setting would not. ``hu`` and ``organ_mask`` on the same grid; an
    empty organ gives an all-zero map."""
    values = np.asarray(hu, dtype=np.float32)
    organ = np.asarray(organ_mask) != 0
    _same_shape(values, organ, "volume vs organ mask")
    if not organ.any():
        return np.zeros(values.shape, np.float32)
    return np.where(organ, np.abs(values - np.median(values[organ])), 0.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------
# Paired comparison of two methods on the same cases
# ---------------------------------------------------------------------------------------------------------
def paired_comparison(a: Sequence[Optional[float]], b: Sequence[Optional[float]], *, resamples: int = 10000,
                      seed: int = 0) -> dict:
    """Method A against method B, case by case: wins, losses, ties and the mean difference A - B with a
    bootstrap 95 % interval (percentile, ``resamples`` resamplings of the cases, fixed ``seed``).

    ``a``, ``b``: one score per case (a hit as 1/0, an IoU...); cases where either is None/nan are left out.
    """
    x = np.asarray([np.nan if v is None else float(v) for v in a], dtype=np.float64)
    y = np.asarray([np.nan if v is None else float(v) for v in b], dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired scores need the same cases: {x.size} vs {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    d = x[keep] - y[keep]
    out = {"n": int(d.size), "wins": int((d > 0).sum()), "losses": int((d < 0).sum()), "ties": int((d == 0).sum()),
           "mean_difference": float(d.mean()) if d.size else math.nan, "ci95": [math.nan, math.nan]}
    if d.size >= 2:
        rng = np.random.default_rng(seed)
        means = d[rng.integers(0, d.size, size=(int(resamples), d.size))].mean(axis=1)
        out["ci95"] = [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]
    return out


# ---------------------------------------------------------------------------------------------------------
# Counterfactual quality (Fig. 5)
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CounterfactualOutcome:
    """Whether a counterfactual towards the healthy class flipped the prediction, and how fast.

    ``steps_to_success``: the first optimisation step (>= 1) after which the original class's probability
    is below the threshold; None when it never is. ``before_any_step``: it was already below at entry 0
    (the scan the optimisation started from was read otherwise than the real image: the paper variant's
    reconstruction) - never a success, since the method did nothing.
    """

    success: bool
    steps_to_success: Optional[int]
    before_any_step: bool = False


def counterfactual_success(trajectory: Sequence[Mapping[str, float]], original_class: str,
                           threshold: float = SUCCESS_PROBABILITY) -> CounterfactualOutcome:
    """Fig. 5: success when p(original class) drops below ``threshold`` at an optimisation step >= 1.

    ``trajectory``: `Explanation.trajectory[healthy class]`, a list over steps (entry 0 = what the
    classifier read before any update, entry t = after step t) of {class name: probability}.
    ``original_class``: the explained classifier's prediction on the real image. Entry 0 never counts:
    a probability already below the threshold there is the starting point's doing, not the method's.
    """
    for probabilities in trajectory:
        if original_class not in probabilities:
            raise ValueError(f"the trajectory has no probability for class {original_class!r}")
    if not trajectory:
        return CounterfactualOutcome(False, None)
    if float(trajectory[0][original_class]) < threshold:
        return CounterfactualOutcome(False, None, before_any_step=True)
    for step, probabilities in enumerate(trajectory[1:], start=1):
        if float(probabilities[original_class]) < threshold:
            return CounterfactualOutcome(True, step)
    return CounterfactualOutcome(False, None)


def mean_abs_change_outside_lesion(counterfactual_hu: np.ndarray, input_hu: np.ndarray, lesion_mask: np.ndarray,
                                   organ_mask: Optional[np.ndarray] = None) -> float:
    """Mean |counterfactual - input| in HU over voxels outside the lesion (and inside ``organ_mask``).

    A counterfactual should change the lesion, not the skull: this measures collateral change. The
    organ mask (brain parenchyma, lungs) keeps air and bone out of the mean, where a change would be
    diluted by thousands of untouched voxels. nan when no voxel is left to measure.
    """
    cf = np.asarray(counterfactual_hu, dtype=np.float64)
    x = np.asarray(input_hu, dtype=np.float64)
    _same_shape(cf, x, "counterfactual vs input")
    region = np.asarray(lesion_mask) == 0
    _same_shape(region, x, "lesion mask vs input")
    if organ_mask is not None:
        organ = np.asarray(organ_mask) != 0
        _same_shape(organ, x, "organ mask vs input")
        region &= organ
    if not region.any():
        return math.nan
    return float(np.abs(cf - x)[region].mean())


def _nanmean(values: Iterable[Optional[float]]) -> float:
    """Mean of the finite values (None/nan skipped); nan if none."""
    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else math.nan


def counterfactual_summary(outcomes: Sequence[CounterfactualOutcome],
                           latent_l1: Sequence[Optional[float]] = (),
                           change_outside_lesion_hu: Sequence[Optional[float]] = ()) -> dict:
    """Fig. 5 over scans: success rate, mean steps (over successes), mean latent L1 and HU change.

    Returns ``n``, ``successes``, ``success_rate``, ``mean_steps_to_success``, ``mean_latent_l1``,
    ``mean_abs_change_outside_lesion_hu`` (nan where there is nothing to average).
    """
    successes = [o for o in outcomes if o.success]
    return {
        "n": len(outcomes),
        "successes": len(successes),
        "success_rate": _ratio(len(successes), len(outcomes)),
        "mean_steps_to_success": _nanmean(o.steps_to_success for o in successes),
        "before_any_step": sum(o.before_any_step for o in outcomes),
        "mean_latent_l1": _nanmean(latent_l1),
        "mean_abs_change_outside_lesion_hu": _nanmean(change_outside_lesion_hu),
    }


__all__ = ["SUCCESS_PROBABILITY", "CounterfactualOutcome", "argmax_voxel", "binary_iou_dice", "chance_hit",
           "chance_iou_dice", "classification_metrics", "counterfactual_success", "counterfactual_summary",
           "hit_score", "iou_dice", "mean_abs_change_outside_lesion", "mean_and_sem", "paired_comparison",
           "saliency_hit", "top_p_mask"]
