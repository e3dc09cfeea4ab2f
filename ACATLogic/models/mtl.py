"""Brain baseline "MTL": a shared hemisphere backbone with a lesion head and a side head.

This is the multi-task brain CT classifier that ACAT (Fontanella et al., ICML 2023) starts from and
compares against in its brain CT experiments: every slice is split at the midline, one shared 7-layer CNN
encodes both hemispheres (the right one mirrored), and two heads answer "is there a lesion?" and
"on which side?". The two answers combine into four classes: none / left / right / both.

Example:
    >>> model = BrainMTL()
    >>> log_p = model(torch.rand(2, 8, 1, 128, 128))   # (2, 4) log-probabilities
    >>> log_p.exp().sum(-1)                           # tensor([1., 1.])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .baseline import ScanClassifier
from .layers import ConvBNReLU, init_weights
from .layouts import HemisphereLayout
from .registry import register_model

#: 2x2 max-pool after these (zero-based) convolutions: three halvings -> output stride 8
_POOLED_STAGES = (1, 3, 5)


class MTLBackbone(nn.Module):
    """Seven 3x3 ConvBNReLU stages; stages 1, 3, 5 (zero-based) end with a 2x2 max-pool.

    x: (N, in_channels, H, W) -> (N, widths[-1], H//8, W//8)

    Attributes:
        stages: nn.ModuleList of the 7 stages (ACAT walks them in lockstep with its saliency branch).
        stage_channels: output channels of each stage.
        attention_stages: (0, 2, 4): ACAT's early/middle/late masks come after convolutions 1, 3, 5.
        out_channels: channels of the last feature map.
    """

    attention_stages = (0, 2, 4)

    def __init__(self, in_channels: int = 1, widths: Sequence[int] = (16, 32, 32, 64, 64, 128, 128)) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) != 7:
            raise ValueError(f"the MTL backbone has exactly 7 convolutions, got {len(widths)} widths")
        stages = []
        previous = in_channels
        for i, width in enumerate(widths):
            conv = ConvBNReLU(previous, width)
            stages.append(nn.Sequential(conv, nn.MaxPool2d(2)) if i in _POOLED_STAGES else conv)
            previous = width
        self.stages = nn.ModuleList(stages)
        self.stage_channels = list(widths)
        self.out_channels = widths[-1]
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        for stage in self.stages:
            x = stage(x)
        return x


def four_class_log_probs(lesion_logits: Tensor, side_logits: Tensor) -> Tensor:
    """Combine the two heads into log-probabilities of ("none", "left", "right", "both").

    log p(none) = log p(no lesion); log p(k) = log p(lesion) + log p(k | lesion) for k in left/right/both.
    The four probabilities sum to one, so softmax(output) = exp(output) and cross-entropy applies.

    lesion_logits: (B, 2) [no, yes]; side_logits: (B, 3) [left, right, both] -> (B, 4)
    """
    lesion = F.log_softmax(lesion_logits, dim=-1)
    side = F.log_softmax(side_logits, dim=-1)
    return torch.cat([lesion[:, :1], lesion[:, 1:] + side], dim=-1)


class BrainHeads(nn.Module):
    """The two MTL heads on a scan feature [left hemisphere, right hemisphere] of length D.

    Attributes:
        lesion: (B, D) -> (B, 2) logits [no lesion, lesion].
        side: (B, D) -> (B, 3) logits [left, right, both], meaningful given a lesion.
    """

    def __init__(self, in_features: int, hidden: int = 64) -> None:
        super().__init__()
        self.lesion = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 2))
        self.side = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 3))

    def forward_heads(self, features: Tensor) -> dict[str, Tensor]:
        """features: (B, D) -> {"lesion": (B, 2), "side": (B, 3)} raw logits (for the two training losses)."""
        return {"lesion": self.lesion(features), "side": self.side(features)}

    def forward(self, features: Tensor) -> Tensor:
        """features: (B, D) -> (B, 4) log-probabilities of ("none", "left", "right", "both")."""
        return four_class_log_probs(self.lesion(features), self.side(features))


@register_model("brain_mtl")
class BrainMTL(ScanClassifier):
    """Brain CT lesion classifier by hemisphere (the ACAT brain baseline).

    x: (B, S, 1, H, W) float32 in [0, 1], W even, columns towards the patient's left ->
    forward: (B, 4) log-probabilities of `class_names`; forward_heads: raw logits of both heads.

    Hemispheres: left = x[..., W//2:], right = x[..., :W//2] mirrored; one shared backbone; per slice
    the pooled features are concatenated as [left, right] (the order tells the heads the side), then
    averaged over slices.

    Args:
        widths: channels of the 7 backbone convolutions.
        hidden: hidden units of each head.
    """

    class_names = ("none", "left", "right", "both")
    task = "brain"

    def __init__(self, widths: Sequence[int] = (16, 32, 32, 64, 64, 128, 128), hidden: int = 64) -> None:
        super().__init__()
        self.config = {"widths": [int(w) for w in widths], "hidden": int(hidden)}
        self.layout = HemisphereLayout()
        self.backbone = MTLBackbone(1, widths)
        self.head = BrainHeads(self.feature_dim, hidden)

    def forward_heads(self, x: Tensor) -> dict[str, Tensor]:
        """x: (B, S, 1, H, W) -> {"lesion": (B, 2), "side": (B, 3)} raw logits."""
        return self.head.forward_heads(self.scan_features(x))
