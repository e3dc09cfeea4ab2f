"""The four stages of Algorithm 1 (Fontanella et al., ICML 2023).

baseline, autoencoder and acat are trained by the same loop (train.py) and differ only in what a
`TrainableStage` gives it: the model, the training loss, and per-scan evaluation outputs with the
metrics computed from them. saliency is not trained; `saliency.run_saliency` computes the maps.
"""

from __future__ import annotations

from .stage import TrainableStage


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
