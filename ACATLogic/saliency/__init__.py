"""Saliency methods, MONAI-style: ``method(x, target) -> tensor of x's shape``.

* `CounterfactualSaliency` - ACAT's class-agnostic counterfactual saliency (the product's default).
* Baselines to compare against: `Gradient` (Simonyan et al. 2014), `IntegratedGradients` (Sundararajan
  et al. 2017), `GradCAM` (Selvaraju et al. 2017), `LatentShift` (Cohen et al. 2021).
"""

from __future__ import annotations

from .base import SaliencyMethod, normalise_per_scan
from .counterfactual import CounterfactualResult, CounterfactualSaliency
from .gradcam import GradCAM
from .gradient import Gradient
from .integrated_gradients import IntegratedGradients
from .latent_shift import LatentShift

COMPARISON_METHODS = ("gradient", "integrated_gradients", "gradcam", "latent_shift")


def comparison_method(name: str, classifier, autoencoder=None):
    """The comparison method ``name`` wrapped around ``classifier`` (and the autoencoder for latent shift)."""
    if name == "gradient":
        return Gradient(classifier)
    if name == "integrated_gradients":
        return IntegratedGradients(classifier)
    if name == "gradcam":
        return GradCAM(classifier)
    if name == "latent_shift":
        return LatentShift(classifier, autoencoder)
    raise ValueError(f"unknown comparison method {name!r}; choose one of {COMPARISON_METHODS}")


__all__ = ["COMPARISON_METHODS", "CounterfactualResult", "CounterfactualSaliency", "GradCAM", "Gradient",
           "IntegratedGradients", "LatentShift", "SaliencyMethod", "comparison_method", "normalise_per_scan"]
