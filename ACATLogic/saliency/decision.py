"""The healthy-vs-abnormal decision of any scan classifier, as a two-class classifier.

A classifier with a healthy class h (class 0 in every bundled model: "none", "normal") answers a yes/no
question - is anything there? - whatever its other classes add (the brain model's side). Its log-odds

    score(x) = log(1 - p_h(x)) - log p_h(x)

is the lesion head's logit difference for the brain model (p(none) = p(no lesion)) and the covid19 logit
difference for the lung model. `DecisionClassifier` returns logits ``[0, score]`` - softmax gives
``[p_h, 1 - p_h]`` - so the gradient, Integrated Gradients and Grad-CAM of its class 1 explain that
score, the strongest gradient baselines for a "where is the lesion" map (the 4-class output's gradient
also carries the side decision). Latent shift towards its class 0 moves towards healthy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .counterfactual import target_log_prob


class DecisionClassifier(nn.Module):
    """``(B, S, 1, H, W) -> (B, 2)`` logits ``[0, log(1 - p_h) - log p_h]`` of a wrapped classifier.

    Exposes the wrapped model's Grad-CAM layer and layout (`ACATLogic.saliency.gradcam`).
    """

    class_names = ("healthy", "abnormal")

    def __init__(self, classifier: nn.Module, healthy: int = 0) -> None:
        super().__init__()
        self.classifier = classifier
        self.healthy = int(healthy)

    @property
    def gradcam_layer(self) -> nn.Module:
        return self.classifier.gradcam_layer

    def layer_output_to_slices(self, t: Tensor, batch: int, slices: int) -> Tensor:
        return self.classifier.layer_output_to_slices(t, batch, slices)

    def forward(self, x: Tensor) -> Tensor:
        log_probs = F.log_softmax(self.classifier(x).float(), dim=-1)
        healthy = torch.full((x.shape[0],), self.healthy, dtype=torch.long, device=x.device)
        score = target_log_prob(log_probs, ~healthy) - target_log_prob(log_probs, healthy)
        return torch.stack([torch.zeros_like(score), score], dim=1)
