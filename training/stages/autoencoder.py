"""Stage 1b: the slice autoencoder E, D (Algorithm 1, line 1), whose latent space the counterfactuals move in.

Trained to reconstruct every slice of the training scans: ``autoencoder.loss`` mse (default) or l1,
averaged over each scan's pixels, then summed over the batch / batch size (DDP-exact, see baseline.py).
The best-validation checkpoint (lowest validation loss) is kept.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor, nn

from ACATLogic.models import create_model

from ..config import TrainConfig
from . import TrainableStage


def build_model(cfg: TrainConfig, run=None) -> nn.Module:  # noqa: ARG001
    return create_model("autoencoder", **cfg.model.autoencoder_config)


def _errors(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """x: (B, S, 1, H, W) -> per-scan (mse, l1), each (B,)."""
    diff = model(x).float() - x.float()
    return diff.pow(2).flatten(1).mean(1), diff.abs().flatten(1).mean(1)


class ReconstructionLoss(nn.Module):
    """forward(batch {"x"}) -> per-scan mean squared (or absolute) error, summed / batch size."""

    def __init__(self, model: nn.Module, loss: str = "mse") -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, batch: dict) -> Tensor:
        mse, l1 = _errors(self.model, batch["x"])
        per_scan = mse if self.loss == "mse" else l1
        return per_scan.sum() / per_scan.shape[0]


def make_loss(model: nn.Module, cfg: TrainConfig, train_labels=None) -> nn.Module:  # noqa: ARG001
    return ReconstructionLoss(model, cfg.autoencoder.loss)


def evaluate(model: nn.Module, batch: dict, cfg: TrainConfig) -> dict:  # noqa: ARG001
    mse, l1 = _errors(model, batch["x"])
    return {"mse": mse, "l1": l1}


def summarise(outputs: dict, cfg: TrainConfig) -> dict:
    mse = float(np.mean(outputs["mse"])) if len(outputs["mse"]) else float("nan")
    l1 = float(np.mean(outputs["l1"])) if len(outputs["l1"]) else float("nan")
    return {"loss": mse if cfg.autoencoder.loss == "mse" else l1, "mse": mse, "l1": l1}


STAGE = TrainableStage("autoencoder", False, build_model, make_loss, evaluate, summarise)
