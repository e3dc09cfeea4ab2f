"""Inference copies of the models with every BatchNorm folded into the convolution before it.

In eval mode a BatchNorm is a fixed per-channel affine map, so ``bn(conv(x))`` is one convolution with
scaled weights and a bias (``torch.nn.utils.fusion.fuse_conv_bn_eval``). The counterfactual loop runs the
decoder and the classifier forward *and* backward 20 times per scan; without folding, BatchNorm's forward
and backward took a third of the loop's CPU time (``make bench``, docs/BENCHMARKS.md) for no arithmetic
that a convolution could not do.

Only pairs that are sure to run back to back are folded: a ``Conv2d`` followed by a ``BatchNorm2d`` in an
``nn.Sequential``, and the ``conv``/``bn``, ``conv1``/``bn1``, ... attribute pairs of the blocks in
`ACATLogic.models.layers`, whose ``forward`` applies ``bn*`` straight to ``conv*``'s output. `fold_batch_norm`
returns a copy; the original model is never changed. `folded_if_equal` checks the copy against the original
on a probe input and keeps the original when they differ (a block whose forward does something else).
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

#: attribute pairs (convolution, its BatchNorm) in this project's blocks (models/layers.py)
_PAIRS = (("conv", "bn"), ("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and bn.track_running_stats
            and bn.running_mean is not None and conv.out_channels == bn.num_features)


def fold_batch_norm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with its Conv2d -> BatchNorm2d pairs folded; no parameter requires grad.

    Returns the copy (the same function as ``model`` in eval mode, up to float rounding).
    """
    folded = copy.deepcopy(model).eval()
    for module in list(folded.modules()):
        children = dict(module.named_children())
        for conv_name, bn_name in _PAIRS:
            conv, bn = children.get(conv_name), children.get(bn_name)
            if conv is not None and bn is not None and _foldable(conv, bn):
                setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(module, bn_name, nn.Identity())
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                if _foldable(module[i], module[i + 1]):
                    module[i] = fuse_conv_bn_eval(module[i], module[i + 1])
                    module[i + 1] = nn.Identity()
    for p in folded.parameters():
        p.requires_grad_(False)
    return folded


def folded_if_equal(model: nn.Module, run: Callable[[nn.Module], torch.Tensor], *, rtol: float = 1e-4,
                    atol: float = 1e-5) -> nn.Module:
    """`fold_batch_norm(model)` when ``run(copy)`` matches ``run(model)``, else ``model`` itself.

    ``model`` must be in eval mode (a model in training mode is returned as it is: its BatchNorm uses the
    batch's statistics). ``run`` calls a model on a probe input and returns a tensor (logits, an image).
    """
    if any(m.training for m in model.modules()):
        return model
    folded = fold_batch_norm(model)
    with torch.no_grad():
        expected, got = run(model).float(), run(folded).float()
    if expected.shape != got.shape or not torch.allclose(got, expected, rtol=rtol, atol=atol):
        return model
    return folded
