"""The four stages of Algorithm 1 (Fontanella et al., ICML 2023).

baseline, autoencoder and acat are trained by the same loop (train.py) and differ only in what a
`TrainableStage` gives it: the model, the training loss, and per-scan evaluation outputs with the
metrics computed from them. saliency is not trained; `saliency.run_saliency` computes the maps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn


@dataclass(frozen=True)
class TrainableStage:
    """What the training loop needs to know about one stage.

    Attributes:
        name: "baseline", "autoencoder" or "acat".
        uses_saliency: batches carry "saliency" maps (ACAT).
        build_model: (cfg, run) -> the model to train, initialised (ACAT: from the baseline's weights).
        make_loss: (model, cfg, train_labels, run=) -> nn.Module whose forward(batch) is the loss to minimise:
            a sum over the batch's scans divided by the batch size (see distributed.py for why).
        evaluate: (model, batch, cfg) -> per-scan outputs {name: (B, ...) tensor} in eval mode.
        summarise: (outputs {name: (N, ...) array}, cfg) -> metrics {name: float}; "loss" is always one.
    """

    name: str
    uses_saliency: bool
    build_model: Callable
    make_loss: Callable[..., nn.Module]
    evaluate: Callable[..., dict]
    summarise: Callable[..., dict]


def trainable(name: str) -> TrainableStage:
    if name == "baseline":
        from .baseline import STAGE
    elif name == "autoencoder":
        from .autoencoder import STAGE
    elif name == "acat":
        from .acat import STAGE
    else:
        raise ValueError(f"{name!r} is not a trained stage (baseline, autoencoder, acat)")
    return STAGE


__all__ = ["TrainableStage", "trainable"]
