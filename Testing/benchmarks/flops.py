"""FLOPs of the counterfactual loop, counted by `torch.utils.flop_counter.FlopCounterMode`.

The count is taken on the ``meta`` device: shapes only, no arithmetic, so it costs seconds whatever the
scan's size and never disturbs a timed run. The loop is the same code (`CounterfactualSaliency.explain`)
with the same models, shapes, targets and steps as the timed run; FLOPs depend on shapes only.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from ACATLogic.saliency.counterfactual import CounterfactualSaliency


class _NoModuleTracker:
    """Stands in for FlopCounterMode's per-module tracker: that tracker hooks every module's backward,
    and ``torch.autograd.grad`` with respect to a leaf (the latent code z) then fails with "A leaf node
    was passed to _will_engine_execute_node". Only the global total is needed here."""

    parents = {"Global"}

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def flop_counter() -> FlopCounterMode:
    """A FlopCounterMode that counts every aten op into the global total (no per-module breakdown)."""
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _NoModuleTracker()
    return counter


def counterfactual_flops(classifier: torch.nn.Module, autoencoder: torch.nn.Module, x_shape: Sequence[int],
                         targets: Sequence[int], num_classes: int, *, steps: int, alpha: float = 100.0,
                         step_size: float = 0.1, optimizer: str = "sgd", reference: str = "reconstruction",
                         start: str = "reconstruction") -> int:
    """FLOPs of ``CounterfactualSaliency(...).explain(x)`` for x of ``x_shape`` (B, S, 1, H, W), every step
    run (no early stop)."""
    meta_classifier = copy.deepcopy(classifier).to("meta").eval()
    meta_autoencoder = copy.deepcopy(autoencoder).to("meta").eval()
    method = CounterfactualSaliency(meta_classifier, meta_autoencoder, alpha=alpha, steps=steps, step_size=step_size,
                                    optimizer=optimizer, reference=reference, start=start, num_classes=num_classes)
    x = torch.empty(tuple(x_shape), device="meta")
    with flop_counter() as counter:
        method.explain(x, targets=list(targets), normalise="joint")
    return int(counter.get_total_flops())
