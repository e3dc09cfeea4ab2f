"""Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization", ICCV 2017, Sec. 3, Eq. 1-2) for scan-level classifiers with a 2-D backbone.

    alpha_c = mean over positions of  d logit_target / d A_c        (Eq. 1)
    cam     = ReLU(sum_c alpha_c A_c)                               (Eq. 2)

A is the backbone's last convolutional feature map (``classifier.gradcam_layer``), which the classifier
computes for B*S*k backbone images (k = 2 when a brain model runs each hemisphere separately, mirrored).
``classifier.layer_output_to_slices`` puts A and its gradient back in image layout (B, S, C, h, w_img)
before anything is combined, so this file needs no knowledge of how a model cuts up a scan.

Eq. 1 averages over every position of the input the class score is computed from. Here that input is
a whole scan, so by default the mean runs over all slices and positions of the scan (``weights="scan"``,
as Grad-CAM on a 3-D volume would); ``weights="slice"`` averages each slice separately instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Optional, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Classifier, ScanSaliency, select_target


@runtime_checkable
class GradCAMClassifier(Protocol):
    """A scan classifier that exposes its last convolutional layer (ACATLogic/models follow this)."""

    gradcam_layer: nn.Module

    def __call__(self, x: Tensor) -> Tensor: ...

    def layer_output_to_slices(self, t: Tensor, batch: int, slices: int) -> Tensor:
        """t: (B*S*k, C, h, w) the layer's output -> (B, S, C, h, w_img) in image layout."""


def _attribute_of(classifier: object, name: str) -> object:
    """``classifier.name``, looking through a functools.partial or a bound method to the model."""
    for candidate in (classifier, getattr(classifier, "func", None), getattr(classifier, "__self__", None)):
        if candidate is not None and hasattr(candidate, name):
            return getattr(candidate, name)
    raise TypeError(f"Grad-CAM needs the classifier's `{name}`; {type(classifier).__name__} has none "
                    f"(pass it to GradCAM explicitly)")


@dataclass
class GradCAM(ScanSaliency):
    """Grad-CAM of the target logit, upsampled bilinearly to the input's (H, W) and normalised per scan.

    The weighted sum of Eq. 2 is signed; the ReLU keeps the part that raises the target logit, so the
    map is non-negative before normalisation (and all zero if no region raises it).

    Args:
        classifier: ``classifier(x: (B, S, 1, H, W)) -> logits (B, num_classes)``.
        layer: the layer to explain (default ``classifier.gradcam_layer``); its forward output must be
            one tensor (B*S*k, C, h, w), produced once per forward pass.
        to_slices: ``(t, batch, slices) -> (B, S, C, h, w_img)`` (default
            ``classifier.layer_output_to_slices``); give both when the classifier is a wrapper.
        weights: ``"scan"`` (Eq. 1 over all slices of a scan) or ``"slice"`` (over each slice).

    Example::

        saliency = GradCAM(model)(x, target=1)     # (B, S, 1, H, W) in [0, 1]
    """

    classifier: Classifier
    layer: Optional[nn.Module] = None
    to_slices: Optional[Callable[[Tensor, int, int], Tensor]] = None
    weights: Literal["scan", "slice"] = "scan"

    def __post_init__(self) -> None:
        if self.weights not in ("scan", "slice"):
            raise ValueError(f"weights must be 'scan' or 'slice', not {self.weights!r}")
        if self.layer is None:
            self.layer = _attribute_of(self.classifier, "gradcam_layer")
        if self.to_slices is None:
            self.to_slices = _attribute_of(self.classifier, "layer_output_to_slices")
        if not isinstance(self.layer, nn.Module):
            raise TypeError(f"gradcam_layer must be an nn.Module, got {type(self.layer).__name__}")

    def modules_to_freeze(self) -> tuple:
        return (self.classifier, self.layer)

    def saliency_magnitude(self, x: Tensor, target_index: Tensor) -> Tensor:
        batch, slices, _, height, width = x.shape
        activation, score = self._forward(x.requires_grad_(True), target_index)
        (grad,) = torch.autograd.grad(score.sum(), activation)
        feature = self.to_slices(activation.detach(), batch, slices)  # (B, S, C, h, w_img)
        grad = self.to_slices(grad, batch, slices)
        if feature.ndim != 5 or feature.shape[:2] != (batch, slices):
            raise ValueError(f"layer_output_to_slices must return (B, S, C, h, w) = ({batch}, {slices}, ...), "
                             f"got {tuple(feature.shape)}")
        mean_over = (1, 3, 4) if self.weights == "scan" else (3, 4)
        alpha = grad.mean(dim=mean_over, keepdim=True)  # (B, 1 or S, C, 1, 1)
        cam = (alpha * feature).sum(dim=2, keepdim=True).relu()  # (B, S, 1, h, w_img)
        cam = F.interpolate(cam.reshape(batch * slices, 1, *cam.shape[-2:]), size=(height, width),
                            mode="bilinear", align_corners=False)
        return cam.reshape(batch, slices, 1, height, width)

    def _forward(self, x: Tensor, target_index: Tensor) -> tuple[Tensor, Tensor]:
        """Run the classifier once, capturing the layer's output inside the graph: (A, target logits (B,))."""
        captured: list = []
        handle = self.layer.register_forward_hook(lambda module, inputs, output: captured.append(output))
        try:
            logits = self.classifier(x)
        finally:
            handle.remove()
        if len(captured) != 1:
            raise RuntimeError(f"gradcam_layer ran {len(captured)} times in one forward pass; Grad-CAM needs "
                               f"exactly one output (B*S*k, C, h, w)")
        activation = captured[0]
        if not isinstance(activation, Tensor) or activation.ndim != 4:
            raise TypeError("gradcam_layer must output one tensor (B*S*k, C, h, w)")
        # x requires grad, so the activation is in the graph even if every parameter is frozen
        return activation, select_target(logits, target_index)
