"""Building blocks shared by the classifiers and the autoencoder.

``SpatialAttention``, ``apply_attention`` and ``SliceAttention`` are the attention pieces of ACAT
(Fontanella et al., ICML 2023, Sec. 3); the rest are standard convolutional blocks (ResNet: He et al.,
CVPR 2016), written here because torchvision is not a dependency.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def init_weights(module: nn.Module) -> None:
    """He initialisation for convolutions, identity BatchNorm, small uniform linear layers.

    Kaiming fan-out keeps activation variance stable through deep ReLU stacks trained from scratch,
    which is the situation of every model here (1-channel CT: no ImageNet weights apply as they are).
    A model built on PyTorch's "meta" device (shapes only: `ACATLogic.model_check`) is left as it is: its
    tensors hold no values, and a normal draw on meta imports torch's compiler (1-2 s of a fresh process).
    """
    if any(p.is_meta for p in module.parameters()):
        return
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ConvBNReLU(nn.Sequential):
    """3x3 (by default) convolution -> BatchNorm -> ReLU, "same" padding.

    x: (N, in_channels, H, W) -> (N, out_channels, ceil(H/stride), ceil(W/stride))
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> None:
        super().__init__()
        # no conv bias: the BatchNorm shift that follows makes it redundant
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)


class Bottleneck(nn.Module):
    """ResNet-50 bottleneck: 1x1 reduce -> 3x3 (carries the stride) -> 1x1 expand (x4), plus shortcut.

    The stride sits on the 3x3 convolution ("ResNet v1.5"), which keeps more information than striding
    the 1x1. A 1x1 projection (+ BN) replaces the identity shortcut when the shape changes.

    x: (N, in_channels, H, W) -> (N, width * 4, ceil(H/stride), ceil(W/stride))
    """

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


class ResidualBlock(nn.Module):
    """Basic residual block (two 3x3 convolutions), used by the slice autoencoder.

    x: (N, in_channels, H, W) -> (N, out_channels, ceil(H/stride), ceil(W/stride))
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.shortcut is None else self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class SpatialAttention(nn.Module):
    """ACAT spatial attention mask from saliency-branch features (paper Sec. 3).

    Max over channels -> 3x3 conv (1 -> 1 channel, padding 1) -> optional BatchNorm2d(1) -> sigmoid.
    The channel max keeps the strongest saliency response at each position, whatever channel carries it.

    features: (N, C, h, w) -> mask S: (N, 1, h, w) float32 in (0, 1)
    """

    def __init__(self, batch_norm: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1, bias=not batch_norm)
        self.bn = nn.BatchNorm2d(1) if batch_norm else None

    def forward(self, features: Tensor) -> Tensor:
        pooled = features.amax(dim=1, keepdim=True)
        out = self.conv(pooled)
        if self.bn is not None:
            out = self.bn(out)
        return torch.sigmoid(out)


def apply_attention(features: Tensor, mask: Tensor) -> Tensor:
    """G = F + F * S (paper Sec. 3): the residual form can only amplify, never erase, image features.

    features F: (N, C, h, w); mask S: (N, 1, h, w) in (0, 1), broadcast over channels -> (N, C, h, w)
    """
    return features + features * mask


class SliceAttention(nn.Module):
    """Attention over the slices of a scan (paper Sec. 3): a learnt weighted mean instead of the mean.

    Linear(C, hidden) -> LeakyReLU -> Dropout(0.1) -> Linear(hidden, 1) -> sigmoid gives one weight per
    slice; the scan feature is sum_s w_s f_s / sum_s w_s. Sigmoid weights (not a softmax) let several
    slices count fully at once, and the sum is never zero because every w_s > 0.

    features: (B, S, C) -> (scan feature (B, C), weights (B, S) in (0, 1))
    """

    def __init__(self, in_features: int, hidden: int = 64) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_features, hidden), nn.LeakyReLU(), nn.Dropout(0.1), nn.Linear(hidden, 1))

    def weights(self, features: Tensor) -> Tensor:
        """features: (B, S, C) -> w: (B, S) in (0, 1)."""
        return torch.sigmoid(self.mlp(features)).squeeze(-1)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        w = self.weights(features)
        pooled = (features * w.unsqueeze(-1)).sum(dim=1) / w.sum(dim=1, keepdim=True)
        return pooled, w


def global_average_pool(features: Tensor) -> Tensor:
    """(N, C, h, w) -> (N, C): any feature-map size, so no input size is hard-coded."""
    return F.adaptive_avg_pool2d(features, 1).flatten(1)
