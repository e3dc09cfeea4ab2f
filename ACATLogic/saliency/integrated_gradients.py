"""Integrated Gradients (Sundararajan, Taly & Yan, "Axiomatic Attribution for Deep Networks", ICML 2017,
Eq. 1 and its Riemann approximation in Sec. 5).

    IG_i(x) = (x_i - x'_i) * integral_0^1  d logit_target(x' + a (x - x')) / d x_i  da

The integral is approximated with Gauss-Legendre quadrature on [0, 1] (captum's ``"gausslegendre"``):
with n nodes it is exact for integrands that are polynomials of degree <= 2n - 1, so completeness
(sum_i IG_i = f(x) - f(x'), the paper's Prop. 1) holds far more tightly than with a Riemann sum of the
same cost, and its weights sum to exactly 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np
import torch
from torch import Tensor

from .base import (Classifier, ScanSaliency, Target, as_target_index, check_scans, explanation_mode, fresh_input,
                   input_gradient)


def gauss_legendre_on_unit_interval(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """(alphas, weights), each (steps,) float64: nodes in (0, 1) and weights summing to 1."""
    nodes, weights = np.polynomial.legendre.leggauss(steps)  # on [-1, 1], weights sum to 2
    return (nodes + 1.0) / 2.0, weights / 2.0


@dataclass
class IntegratedGradients(ScanSaliency):
    """Integrated Gradients of the target logit along the straight path from ``baseline`` to x.

    The attribution is signed (positive: the voxel's difference from the baseline raises the target
    logit); `attribute` returns it, and calling the method returns ``|attribution|`` normalised per scan.

    Args:
        classifier: ``classifier(x: (B, S, 1, H, W)) -> logits (B, num_classes)``. With ``batch_steps > 1``
            it is called with ``batch_steps * B`` scans at once; a classifier bound to per-scan extra
            inputs of batch B must then repeat them, or use ``batch_steps=1`` (always batch B).
        steps: number of Gauss-Legendre nodes along the path (one gradient each).
        baseline: the reference image x' ("absence of signal"): a float (0.0 = black, i.e. air after
            the [0, 1] windowing) or a tensor broadcastable to x.
        batch_steps: path points evaluated per forward/backward pass; bounds memory at about
            ``batch_steps`` times one forward pass with gradients.

    Example::

        ig = IntegratedGradients(model, steps=32)
        saliency = ig(x, target=1)                  # (B, S, 1, H, W) in [0, 1]
        signed = ig.attribute(x, target=1)          # (B, S, 1, H, W), sums to f(x) - f(x')
    """

    classifier: Classifier
    steps: int = 32
    baseline: Union[float, Tensor] = 0.0
    batch_steps: int = 8

    def __post_init__(self) -> None:
        if int(self.steps) < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if int(self.batch_steps) < 1:
            raise ValueError(f"batch_steps must be >= 1, got {self.batch_steps}")

    def attribute(self, x: Tensor, target: Target) -> Tensor:
        """x: (B, S, 1, H, W) -> signed attributions (B, S, 1, H, W), unnormalised."""
        check_scans(x)
        target_index = as_target_index(target, x.shape[0], x.device)
        with explanation_mode(*self.modules_to_freeze()):
            return self._integrate(fresh_input(x), target_index)

    def saliency_magnitude(self, x: Tensor, target_index: Tensor) -> Tensor:
        return self._integrate(x, target_index).abs()

    def baseline_like(self, x: Tensor) -> Tensor:
        """The baseline x' expanded to x's shape, dtype and device."""
        baseline = torch.as_tensor(self.baseline, dtype=x.dtype, device=x.device)
        return baseline.expand(torch.broadcast_shapes(baseline.shape, x.shape)).expand_as(x)

    def _integrate(self, x: Tensor, target_index: Tensor) -> Tensor:
        baseline = self.baseline_like(x)
        delta = x - baseline
        alphas, weights = gauss_legendre_on_unit_interval(int(self.steps))
        alphas = torch.as_tensor(alphas, dtype=x.dtype, device=x.device)
        weights = torch.as_tensor(weights, dtype=x.dtype, device=x.device)
        batch = x.shape[0]
        path_shape = (-1,) + (1,) * x.ndim  # one alpha per path point, broadcast over a scan batch
        mean_gradient = torch.zeros_like(x)
        for start in range(0, alphas.numel(), int(self.batch_steps)):
            a = alphas[start:start + int(self.batch_steps)]
            k = a.numel()
            # step-major: rows [j * B, (j + 1) * B) are the B scans at alpha_j
            points = (baseline.unsqueeze(0) + a.view(path_shape) * delta.unsqueeze(0)).reshape(k * batch, *x.shape[1:])
            grad = input_gradient(self.classifier, points, target_index.repeat(k))
            w = weights[start:start + k].view(path_shape)
            mean_gradient += (w * grad.reshape(k, *x.shape)).sum(dim=0)
        return (delta * mean_gradient).detach()
