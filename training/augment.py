"""Random flips and class weights.

Flips act on model-space scans ``(B, S, 1, H, W)``: columns (W) run towards the patient's left, rows (H)
towards posterior (`ACATLogic.preprocess`). Mirroring along W therefore turns the patient's left
hemisphere into the right one, and a brain label must follow: none -> none, left <-> right, both -> both.
Lung labels (normal / covid19) do not depend on the side.

Whether a scan is flipped is a pure function of (seed, epoch, cache row): not of the global random
generator, the process or the batch it lands in. So a resumed run, a run on 8 GPUs and a run on one
process flip exactly the same scans.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

#: brain label after a left-right mirror: none, left, right, both -> none, right, left, both
BRAIN_MIRROR = (0, 2, 1, 3)


def flip_decisions(rows: torch.Tensor, epoch: int, seed: int, p: float, salt: int) -> torch.Tensor:
    """(B,) bool: flip scan ``rows[b]`` in this epoch? Deterministic in (seed, epoch, row, salt)."""
    if p <= 0:
        return torch.zeros(len(rows), dtype=torch.bool)
    values = [np.random.default_rng([int(seed), int(epoch), int(r), int(salt)]).random() for r in rows.tolist()]
    return torch.tensor(values) < p


def mirror_labels(labels: torch.Tensor, task: str) -> torch.Tensor:
    """Labels after a left-right mirror (brain: left <-> right; lung: unchanged)."""
    if task != "brain":
        return labels
    table = torch.tensor(BRAIN_MIRROR, dtype=labels.dtype, device=labels.device)
    return table[labels]


def flip_left_right(x: torch.Tensor, labels: torch.Tensor, task: str, mask: Optional[torch.Tensor] = None,
                    saliency: Optional[torch.Tensor] = None):
    """Mirror the scans selected by ``mask`` (all if None) along W and fix their labels.

    x, saliency: (B, S, 1, H, W); labels: (B,) int64; mask: (B,) bool.
    Returns (x, labels, saliency) with the selected scans mirrored (saliency None stays None).
    """
    if mask is None:
        mask = torch.ones(x.shape[0], dtype=torch.bool)
    mask = mask.to(x.device)
    m5 = mask.view(-1, 1, 1, 1, 1)
    x = torch.where(m5, x.flip(-1), x)
    labels = torch.where(mask, mirror_labels(labels, task), labels)
    if saliency is not None:
        saliency = torch.where(m5, saliency.flip(-1), saliency)
    return x, labels, saliency


def flip_antero_posterior(x: torch.Tensor, mask: torch.Tensor, saliency: Optional[torch.Tensor] = None):
    """Mirror the selected scans along H (front <-> back); labels never change."""
    m5 = mask.to(x.device).view(-1, 1, 1, 1, 1)
    x = torch.where(m5, x.flip(-2), x)
    if saliency is not None:
        saliency = torch.where(m5, saliency.flip(-2), saliency)
    return x, saliency


def augment_batch(batch: dict, *, epoch: int, seed: int, flip_lr: float, flip_ap: float, task: str) -> dict:
    """Random flips of a training batch {"x", "y", "row", ["saliency"]} (the same flip for a scan and its map)."""
    rows = batch["row"].cpu()
    out = dict(batch)
    lr = flip_decisions(rows, epoch, seed, flip_lr, salt=1)
    if lr.any():
        out["x"], out["y"], sal = flip_left_right(out["x"], out["y"], task, lr, out.get("saliency"))
        if sal is not None:
            out["saliency"] = sal
    ap = flip_decisions(rows, epoch, seed, flip_ap, salt=2)
    if ap.any():
        out["x"], sal = flip_antero_posterior(out["x"], ap, out.get("saliency"))
        if sal is not None:
            out["saliency"] = sal
    return out


def inverse_frequency(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """w_c = n / (C * n_c): the classes weigh equally in the loss overall; absent classes get 0."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    n = counts.sum()
    weights = np.where(counts > 0, n / (num_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)
