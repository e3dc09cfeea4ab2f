"""Vanilla gradient saliency (Simonyan, Vedaldi & Zisserman, "Deep Inside Convolutional Networks", ICLR
workshop 2014, Sec. 3.1): the magnitude of the derivative of the target class score with respect to each
voxel."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .base import (Classifier, ScanSaliency, Target, as_target_index, check_scans, explanation_mode, fresh_input,
                   input_gradient)


@dataclass
class Gradient(ScanSaliency):
    """``|d logit_target / d x|``, normalised per scan.

    The score is the target's logit (pre-softmax), as in the paper: the softmax probability's gradient
    also depends on the other classes' scores, so it would not show what makes *this* class likely.
    (A classifier that returns log-probabilities gives the gradient of log p_target instead.)
    The gradient is signed; the map is its absolute value (the paper's ``M = |w|``, Sec. 3.1).

    Args:
        classifier: ``classifier(x: (B, S, 1, H, W)) -> logits (B, num_classes)``.

    Example::

        saliency = Gradient(model)(x, target=1)    # (B, S, 1, H, W) in [0, 1]
    """

    classifier: Classifier

    def attribute(self, x: Tensor, target: Target) -> Tensor:
        """x: (B, S, 1, H, W) -> the signed gradient d logit_target / d x, (B, S, 1, H, W), unnormalised."""
        check_scans(x)
        target_index = as_target_index(target, x.shape[0], x.device)
        with explanation_mode(*self.modules_to_freeze()):
            return input_gradient(self.classifier, fresh_input(x), target_index).detach()

    def saliency_magnitude(self, x: Tensor, target_index: Tensor) -> Tensor:
        return input_gradient(self.classifier, x, target_index).abs()
