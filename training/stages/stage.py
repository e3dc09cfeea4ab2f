"""What the training loop needs to know about one trained stage (`TrainableStage`).

Its own module, below the package: the stage modules import it and the package's `trainable` imports them,
so that no import runs in a circle.
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
