"""Random flips, blur and noise, and class weights.

Flips act on model-space scans ``(B, S, 1, H, W)``: columns (W) run towards the patient's left, rows (H)
towards posterior (`ACATLogic.preprocess`). Mirroring along W therefore turns the patient's left
hemisphere into the right one, and a brain label must follow: none -> none, left <-> right, both -> both.
Lung labels (normal / covid19) do not depend on the side.

Whether a scan is flipped is a pure function of (seed, epoch, cache row): not of the global random
generator, the process or the batch it lands in. So a resumed run, a run on 8 GPUs and a run on one
process flip exactly the same scans. Blur and noise (`blur_and_noise`) draw their amounts the same way.

Why blur and noise: a classifier trained on one noise texture reads a slightly smoothed scan otherwise
(measured on the brain phantom: an autoencoder reconstructing to 3.6 HU RMS still changed the CPU
baseline's class probabilities by 0.25 on average, and its prediction on 29 % of the scans). Such a
classifier flips with a change too small to see, so its counterfactuals stay adversarial; trained to
give the same answer under small in-plane blur and added noise, it has to be convinced by content.
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


def _amounts(rows: torch.Tensor, epoch: int, seed: int, salt: int) -> torch.Tensor:
    """(B, 2) uniform [0, 1) draws per scan, deterministic in (seed, epoch, row, salt)."""
    return torch.tensor([np.random.default_rng([int(seed), int(epoch), int(r), int(salt)]).random(2).tolist()
                         for r in rows.tolist()], dtype=torch.float32)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x: (N, 1, H, W); sigma: (N,) pixels (0 = unchanged) -> separable Gaussian blur per image."""
    radius = max(1, int(np.ceil(3 * float(sigma.max()))))
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    s = sigma.to(x.device, x.dtype).clamp_min(1e-6).view(-1, 1)
    kernel = torch.exp(-0.5 * (offsets.view(1, -1) / s) ** 2)
    kernel = torch.where(sigma.view(-1, 1).to(x.device) > 0, kernel, (offsets == 0).to(x.dtype).view(1, -1))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (N, K)
    n = x.shape[0]
    padded = torch.nn.functional.pad(x, (radius, radius, 0, 0), mode="replicate").transpose(0, 1)  # (1, N, H, W+2r)
    rows = torch.nn.functional.conv2d(padded, kernel.view(n, 1, 1, -1), groups=n)
    padded = torch.nn.functional.pad(rows, (0, 0, radius, radius), mode="replicate")
    return torch.nn.functional.conv2d(padded, kernel.view(n, 1, -1, 1), groups=n).transpose(0, 1)


def blur_and_noise(x: torch.Tensor, rows: torch.Tensor, *, epoch: int, seed: int, blur_sigma_px: float,
                   noise_std: float) -> torch.Tensor:
    """x: (B, S, 1, H, W) in [0, 1] -> each scan blurred in-plane (sigma uniform in [0, blur_sigma_px)) and
    given Gaussian noise (std uniform in [0, noise_std), in window units), clipped to [0, 1]; every slice
    of a scan alike. Amounts and noise are deterministic in (seed, epoch, cache row)."""
    if blur_sigma_px <= 0 and noise_std <= 0:
        return x
    b, s, _, h, w = x.shape
    draws = _amounts(rows.cpu(), epoch, seed, salt=3)
    out = x
    if blur_sigma_px > 0:
        sigma = (draws[:, 0] * blur_sigma_px).repeat_interleave(s)
        out = _gaussian_blur(out.reshape(b * s, 1, h, w), sigma).reshape(b, s, 1, h, w)
    if noise_std > 0:
        noise = torch.stack([torch.randn((s, 1, h, w), generator=torch.Generator().manual_seed(
            int(np.random.default_rng([int(seed), int(epoch), int(r), 4]).integers(2 ** 62)))) for r in rows.tolist()])
        out = out + noise.to(out.device, out.dtype) * (draws[:, 1] * noise_std).to(out.device).view(b, 1, 1, 1, 1)
    return out.clamp(0.0, 1.0)


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


def augment_batch(batch: dict, *, epoch: int, seed: int, flip_lr: float, flip_ap: float, task: str,
                  blur_sigma_px: float = 0.0, noise_std: float = 0.0) -> dict:
    """Random flips of a training batch {"x", "y", "row", ["saliency"]} (the same flip for a scan and its map),
    then blur and noise of the scans (`blur_and_noise`; never of the saliency maps)."""
    rows = batch["row"].cpu()
    out = dict(batch)
    out["x"] = blur_and_noise(out["x"], rows, epoch=epoch, seed=seed, blur_sigma_px=blur_sigma_px,
                              noise_std=noise_std)
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
