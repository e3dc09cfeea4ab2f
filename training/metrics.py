"""A classifier's scores after each training epoch, from per-scan probabilities (numpy; no scikit-learn).

The accuracies come from `ACATLogic.metrics.classification_metrics`, the project's one classification-metrics
function (the paper's tables use it too); this module adds what needs the probabilities themselves: the loss
(mean negative log-likelihood) and the ROC AUC.

probs: (N, C) class probabilities (rows sum to 1); labels: (N,) int.
"""

from __future__ import annotations

import math

import numpy as np

from ACATLogic.metrics import classification_metrics


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve = P(score of a random positive > a random negative), ties counted 1/2
    (the Mann-Whitney U statistic). NaN when one of the two groups is empty."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def epoch_metrics(probs: np.ndarray, labels: np.ndarray) -> dict:
    """{"loss": mean NLL, "accuracy", "balanced_accuracy" (mean recall of the classes present),
    "auc": binary ROC AUC of class 1, or the macro one-vs-rest AUC over classes with both groups}."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return {"loss": math.nan, "accuracy": math.nan, "balanced_accuracy": math.nan, "auc": math.nan}
    counted = classification_metrics(labels, probs.argmax(axis=1), [str(c) for c in range(probs.shape[1])])
    recalls = [r for r in counted["per_class_accuracy"].values() if not math.isnan(r)]  # nan: no scan of a class
    nll = -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None))
    if probs.shape[1] == 2:
        auc = roc_auc(probs[:, 1], labels == 1)
    else:
        per_class = [roc_auc(probs[:, c], labels == c) for c in range(probs.shape[1])]
        per_class = [a for a in per_class if not math.isnan(a)]
        auc = float(np.mean(per_class)) if per_class else math.nan
    return {"loss": float(nll.mean()), "accuracy": counted["accuracy"], "balanced_accuracy": float(np.mean(recalls)),
            "auc": auc}
