"""Stage 3: the ACAT classifier (Algorithm 1, last line), fine-tuned from the baseline.

`ACATLogic.models.ACATClassifier` on the baseline's architecture; its image branch (backbone, BatchNorm
statistics included) and head start from the trained baseline (`load_image_branch_from`), the saliency
branch and the attention modules from scratch. Inputs are the cached scan and its counterfactual
saliency map from the saliency stage; the losses are the baseline's (baseline.py), with the acat
section's settings (paper: 100 epochs at lr 1e-5).

ACAT's slice attention has dropout, which draws from the global random generator: resume restores
every process's generator, but a DDP run draws other masks than a one-process run (each process has
its own stream), so ACAT matches across process counts statistically, not bit for bit.
"""

from __future__ import annotations

from torch import nn

from ACATLogic.models import create_model

from ..checkpoint import load_weights
from ..config import TrainConfig
from .stage import TrainableStage
from .baseline import evaluate as _evaluate
from .baseline import make_loss as _make_loss
from .baseline import summarise


def build_model(cfg: TrainConfig, run) -> nn.Module:
    """ACAT with the image branch and head copied from ``run``'s trained baseline."""
    baseline = load_weights(run.weights("baseline"))
    model = create_model("acat", backbone=cfg.model.baseline, **cfg.model.acat_config, **cfg.baseline_model_config())
    model.load_image_branch_from(baseline)
    return model


def make_loss(model: nn.Module, cfg: TrainConfig, train_labels, run=None) -> nn.Module:  # noqa: ARG001
    return _make_loss(model, cfg, train_labels, uses_saliency=True)


def evaluate(model: nn.Module, batch: dict, cfg: TrainConfig) -> dict:
    return _evaluate(model, batch, cfg, uses_saliency=True)


STAGE = TrainableStage("acat", True, build_model, make_loss, evaluate, summarise)
