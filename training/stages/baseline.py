"""Stage 1a: the baseline classifier f (Algorithm 1, line 1).

Brain ("brain_mtl"): the model has two heads and is trained with their two losses, as the MTL
baseline it reproduces -

* lesion: cross-entropy of "no lesion / lesion" on every scan (label 0 vs 1, 2, 3),
* side: cross-entropy of "left / right / both" on lesion scans only (labels 1, 2, 3 -> 0, 1, 2): a scan
  without a lesion has no side, so it contributes nothing to that head,

each weighted by the inverse frequency of its classes in the training split (``class_weights``), and
summed. The four-class output (log-probabilities) is what is evaluated. Lung ("lung_resnet*"): weighted
cross-entropy of the two logits.

Every loss is ``sum over the batch's scans / batch size`` rather than PyTorch's weighted mean (which
divides by the sum of the weights): then the mean of the per-process losses that DDP takes is exactly
the loss of the global batch.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ACATLogic.models import create_model

from ..augment import inverse_frequency
from ..config import TrainConfig
from ..metrics import epoch_metrics
from .stage import TrainableStage


def build_model(cfg: TrainConfig, run=None) -> nn.Module:  # noqa: ARG001 - same signature as acat's
    return create_model(cfg.model.baseline, **cfg.baseline_model_config())


def class_weights(task: str, train_labels, enabled: bool, num_classes: int = 2) -> dict[str, Tensor]:
    """Brain: {"lesion": (2,), "side": (3,)}; lung: {"classes": (2,)}. All ones when not ``enabled``."""
    labels = np.asarray(train_labels, dtype=np.int64)
    if task == "brain":
        weights = {"lesion": inverse_frequency((labels > 0).astype(np.int64), 2),
                   "side": inverse_frequency(labels[labels > 0] - 1, 3)}
    else:
        weights = {"classes": inverse_frequency(labels, num_classes)}
    if not enabled:
        weights = {k: torch.ones_like(v) for k, v in weights.items()}
    return weights


class ClassificationLoss(nn.Module):
    """forward(batch {"x", "y", ["saliency"]}) -> scalar loss (module docstring).

    x, saliency: (B, S, 1, H, W) float32 in [0, 1]; y: (B,) int64 class index.
    """

    def __init__(self, model: nn.Module, task: str, weights: dict[str, Tensor], uses_saliency: bool = False) -> None:
        super().__init__()
        self.model = model
        self.task = task
        self.uses_saliency = uses_saliency
        for name, w in weights.items():
            self.register_buffer(f"w_{name}", w.float(), persistent=False)

    def forward(self, batch: dict) -> Tensor:
        args = (batch["x"], batch["saliency"]) if self.uses_saliency else (batch["x"],)
        y = batch["y"]
        if self.task == "brain":
            heads = self.model.forward_heads(*args)
            lesion = (y > 0).long()
            side = (y - 1).clamp(min=0)
            lesion_loss = self.w_lesion[lesion] * F.cross_entropy(heads["lesion"].float(), lesion, reduction="none")
            side_loss = self.w_side[side] * F.cross_entropy(heads["side"].float(), side, reduction="none")
            # a product, not indexing: the side head stays in the graph when a batch has no lesion,
            # so DDP sees (zero) gradients for it on every process
            per_scan = lesion_loss + lesion.float() * side_loss
        else:
            logits = self.model(*args).float()
            per_scan = self.w_classes[y] * F.cross_entropy(logits, y, reduction="none")
        return per_scan.sum() / y.shape[0]


def make_loss(model: nn.Module, cfg: TrainConfig, train_labels, uses_saliency: bool = False, run=None) -> nn.Module:  # noqa: ARG001
    optim = cfg.acat if uses_saliency else cfg.baseline
    return ClassificationLoss(model, cfg.data.task, class_weights(cfg.data.task, train_labels, optim.class_weights,
                                                                  len(cfg.class_names)),
                              uses_saliency)


def probabilities(model: nn.Module, batch: dict, task: str, uses_saliency: bool = False) -> Tensor:
    """(B, C) class probabilities: brain models give log-probabilities, lung models logits."""
    args = (batch["x"], batch["saliency"]) if uses_saliency else (batch["x"],)
    out = model(*args).float()
    return out.exp() if task == "brain" else F.softmax(out, dim=-1)


def evaluate(model: nn.Module, batch: dict, cfg: TrainConfig, uses_saliency: bool = False) -> dict:
    return {"probs": probabilities(model, batch, cfg.data.task, uses_saliency), "labels": batch["y"]}


def summarise(outputs: dict, cfg: TrainConfig) -> dict:  # noqa: ARG001
    return epoch_metrics(outputs["probs"], outputs["labels"])


STAGE = TrainableStage("baseline", False, build_model, make_loss, evaluate, summarise)
