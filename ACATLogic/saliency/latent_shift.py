"""Latent Shift (Cohen et al., "Gifsplanation via Latent Shift: A Simple Autoencoder Approach to
Counterfactual Generation for Chest X-rays", MIDL 2021, Sec. 2): a counterfactual made by moving the
autoencoder's latent code along the classifier's gradient, and a map of what that move changed.

For each scan x (all its slices at once, through the scan-level classifier)::

    z     = E(x)                                         (every slice encoded; (S, C, H/4, W/4))
    g     = d log p_target(D(z)) / d z                   (one gradient for the whole scan)
    d     = g / max|g|                                   (so lambda is the largest change of any latent value)
    x_lam = D(z + lam * d)                               (lam > 0 moves towards `target`)
    lam*  = the smallest lam found with p_target(x_lam) > 0.5, or max_lambda
    map   = max over lam in [0, lam*] of |D(z) - x_lam|   (the paper's max over the generated frames)

Choices and why:

* log p_target rather than p_target: moving towards a class the model thinks unlikely starts where
  p_target ~ 0, and d p / d z = p * d log p / d z vanishes there; the direction is the same.
* The gradient is rescaled to unit max-norm per scan: the raw gradient's size varies over orders of
  magnitude between models and scans, which would make any fixed lambda range meaningless.
* D(z), not x, is the reference: the map shows what the shift changed, not the autoencoder's
  reconstruction error (as in the paper, whose frames all start from the reconstruction).
* The search grows lambda geometrically from ``initial_lambda`` (factor ``growth``) up to
  ``max_lambda``, then bisects ``refine_steps`` times between the last failure and the first success.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Classifier, ScanSaliency, select_target


@runtime_checkable
class Autoencoder(Protocol):
    """``encode(x2d: (N, 1, H, W)) -> z (N, C, H/4, W/4)`` and ``decode(z) -> (N, 1, H, W)`` in [0, 1]."""

    def encode(self, x: Tensor) -> Tensor: ...

    def decode(self, z: Tensor) -> Tensor: ...


@dataclass
class LatentShiftFrames:
    """The sweep behind the last map, for display (F frames, B scans, S slices).

    Attributes:
        lambdas: (B, F) the shifts, ascending; frame 0 is lambda = 0, i.e. D(z), unless ``lambdas`` was given.
        images: (B, F, S, 1, H, W) D(z + lambda * d), detached (None when ``keep_frames=False``).
        target_probability: (B, F) p_target of each frame.
        reached: (B,) whether some frame has p_target > ``target_probability`` threshold.
    """

    lambdas: Tensor
    images: Optional[Tensor]
    target_probability: Tensor
    reached: Tensor


@dataclass
class LatentShift(ScanSaliency):
    """Latent Shift counterfactual saliency towards ``target``; the map is normalised per scan.

    ``target`` is the class to move *towards* (e.g. "healthy" to explain a finding). If a scan is
    already classified as ``target`` (p_target > threshold at lambda = 0), lam* = 0 and its map is zero.

    Args:
        classifier: ``classifier(x: (B, S, 1, H, W)) -> logits (B, num_classes)``; always called with B scans.
        autoencoder: see `Autoencoder`; slices are flattened to N = B*S before encoding.
        lambdas: a fixed sweep (latent units, any sign) instead of the search; the map is the max
            over these frames.
        max_lambda: largest shift the search tries (latent units: the largest change of any latent value).
        initial_lambda: first shift the search tries; then multiplied by ``growth`` up to ``max_lambda``.
        refine_steps: bisection steps after the first success (each halves the uncertainty on lam*).
        frames: number of frames swept between 0 and lam* (both included).
        threshold: the target probability that counts as "the prediction changed" (0.5).
        keep_frames: keep the frames' images in `last_frames` (F times one scan batch of memory).

    Example::

        method = LatentShift(model, autoencoder)
        saliency = method(x, target=0)                  # (B, S, 1, H, W) in [0, 1]
        method.last_frames.images[:, -1]                # the counterfactual scans
    """

    classifier: Classifier
    autoencoder: Autoencoder
    lambdas: Optional[Sequence[float]] = None
    max_lambda: float = 32.0
    initial_lambda: float = 1.0 / 16.0
    growth: float = 2.0
    refine_steps: int = 4
    frames: int = 8
    threshold: float = 0.5
    keep_frames: bool = True
    last_frames: Optional[LatentShiftFrames] = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not (0 < self.initial_lambda <= self.max_lambda):
            raise ValueError(f"need 0 < initial_lambda <= max_lambda, got {self.initial_lambda}, {self.max_lambda}")
        if self.growth <= 1:
            raise ValueError(f"growth must be > 1, got {self.growth}")
        if self.frames < 2:
            raise ValueError(f"frames must be >= 2, got {self.frames}")
        if self.refine_steps < 0:
            raise ValueError(f"refine_steps must be >= 0, got {self.refine_steps}")
        if self.lambdas is not None and len(self.lambdas) == 0:
            raise ValueError("lambdas, when given, must not be empty")

    def modules_to_freeze(self) -> tuple:
        return (self.classifier, self.autoencoder)

    def saliency_magnitude(self, x: Tensor, target_index: Tensor) -> Tensor:
        batch, slices = x.shape[:2]
        with torch.no_grad():
            z = self.autoencoder.encode(x.reshape(batch * slices, *x.shape[2:]))
        z = z.detach().requires_grad_(True)
        reference = self._decode(z, x.shape)
        logits = self.classifier(reference)
        (grad,) = torch.autograd.grad(select_target(F.log_softmax(logits.float(), dim=1), target_index).sum(), z)
        reference = reference.detach()
        z = z.detach()
        direction = self._unit_max_norm(grad, batch)

        with torch.no_grad():
            def shifted(lam: Tensor) -> tuple[Tensor, Tensor]:
                """lam: (B,) -> (images (B, S, 1, H, W), p_target (B,))."""
                images = self._decode(z + lam.to(z.dtype).repeat_interleave(slices).view(-1, *[1] * (z.ndim - 1))
                                      * direction, x.shape)
                return images, self._target_probability(images, target_index)

            if self.lambdas is None:
                p_start = torch.softmax(logits.detach().float(), dim=1).gather(1, target_index.view(-1, 1))[:, 0]
                found = self._search(shifted, p_start)
                sweep = found.unsqueeze(1) * torch.linspace(0, 1, self.frames, device=x.device).unsqueeze(0)
            else:
                sweep = torch.as_tensor(list(self.lambdas), dtype=torch.float32, device=x.device).expand(batch, -1)

            magnitude = torch.zeros_like(x)
            images, probabilities = [], []
            for j in range(sweep.shape[1]):
                frame, p = shifted(sweep[:, j])
                magnitude = torch.maximum(magnitude, (reference - frame).abs())
                probabilities.append(p)
                if self.keep_frames:
                    images.append(frame)
        probability = torch.stack(probabilities, dim=1)
        self.last_frames = LatentShiftFrames(
            lambdas=sweep.detach().clone(), images=torch.stack(images, dim=1) if self.keep_frames else None,
            target_probability=probability, reached=(probability > self.threshold).any(dim=1))
        return magnitude

    def _search(self, shifted: Callable[[Tensor], tuple[Tensor, Tensor]], p_start: Tensor) -> Tensor:
        """(B,) the smallest lambda found with p_target > threshold per scan, or max_lambda."""
        batch = p_start.shape[0]
        device = p_start.device
        high = torch.full((batch,), float("nan"), device=device)
        high[p_start > self.threshold] = 0.0
        low = torch.zeros(batch, device=device)
        for lam in self._grid():
            todo = torch.isnan(high)
            if not bool(todo.any()):
                break
            _, p = shifted(torch.full((batch,), lam, device=device))
            high[todo & (p > self.threshold)] = lam
            low[todo & ~(p > self.threshold)] = lam
        refine = ~torch.isnan(high) & (high > 0)
        if bool(refine.any()):
            for _ in range(int(self.refine_steps)):
                middle = torch.where(refine, (low + high) / 2, torch.zeros_like(low))
                _, p = shifted(middle)
                passed = p > self.threshold
                high = torch.where(refine & passed, middle, high)
                low = torch.where(refine & ~passed, middle, low)
        return torch.where(torch.isnan(high), torch.full_like(high, float(self.max_lambda)), high)

    def _grid(self) -> list[float]:
        grid, lam = [], float(self.initial_lambda)
        while lam < self.max_lambda:
            grid.append(lam)
            lam *= float(self.growth)
        return grid + [float(self.max_lambda)]

    def _decode(self, z: Tensor, shape: torch.Size) -> Tensor:
        images = self.autoencoder.decode(z)
        if images.numel() != shape.numel():
            raise ValueError(f"autoencoder.decode returned {tuple(images.shape)}; expected {shape[0] * shape[1]} "
                             f"slices of {tuple(shape[2:])}")
        return images.reshape(shape)

    def _target_probability(self, images: Tensor, target_index: Tensor) -> Tensor:
        return select_target(torch.softmax(self.classifier(images).float(), dim=1), target_index)

    @staticmethod
    def _unit_max_norm(grad: Tensor, batch: int) -> Tensor:
        """Scale each scan's latent gradient (B*S, ...) to max |.| = 1; an all-zero gradient stays zero."""
        per_scan = grad.reshape(batch, -1)
        peak = per_scan.abs().amax(dim=1, keepdim=True)
        return (per_scan / torch.where(peak > 0, peak, torch.ones_like(peak))).reshape(grad.shape)
