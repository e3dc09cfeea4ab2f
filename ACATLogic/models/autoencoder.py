"""`SliceAutoencoder`: the per-slice autoencoder whose latent space ACAT's counterfactuals move in.

ACAT (Fontanella et al., ICML 2023, Sec. 3) perturbs a slice's latent code z until the classifier's
prediction changes, decodes the perturbed code, and takes |decoded counterfactual - decoded original|
as the saliency map. For that the decoder must reproduce anatomy faithfully, so the autoencoder has no
bottleneck: the latent keeps a spatial grid (16 channels at H/4 x W/4) rather than a vector.

Example:
    >>> ae = SliceAutoencoder()
    >>> z = ae.encode(torch.rand(4, 1, 128, 128))     # (4, 16, 32, 32)
    >>> ae.decode(z).shape                            # (4, 1, 128, 128), values in [0, 1]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import ResidualBlock, init_weights
from .registry import register_model


@register_model("autoencoder")
class SliceAutoencoder(nn.Module):
    """Residual convolutional autoencoder for CT slices, three ResNet stages each way.

    Encoder stage i: ResidualBlock(channels[i-1] -> channels[i], stride=strides[i]) (channels[-1] := 1).
    Decoder: the mirror image, bilinear upsampling by strides[i] after each block, then a 3x3 conv to
    1 channel and a sigmoid, so decoded slices are in [0, 1] like the inputs.

    Shapes (H, W multiples of prod(strides) = 4 for the defaults; other sizes still decode to H x W,
    the last resize absorbing the rounding):
        encode: x (N, 1, H, W) -> z (N, channels[-1], H/4, W/4)
        decode: z (N, channels[-1], H/4, W/4) -> (N, 1, H, W) in [0, 1]
        Both also accept scans: (B, S, ...) leading dims are flattened to N = B*S and restored.

    Args:
        channels: output channels of the three encoder stages.
        strides: stride of each encoder stage (and upsampling factor of its decoder mirror).
    """

    def __init__(self, channels: Sequence[int] = (6, 12, 16), strides: Sequence[int] = (1, 2, 2)) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        strides = tuple(int(s) for s in strides)
        if len(channels) != len(strides) or not channels:
            raise ValueError(f"one stride per stage: channels={channels}, strides={strides}")
        self.config = {"channels": list(channels), "strides": list(strides)}
        self.strides = strides
        self.latent_channels = channels[-1]
        inputs = (1,) + channels[:-1]
        self.encoder = nn.ModuleList(ResidualBlock(c_in, c_out, s) for c_in, c_out, s in zip(inputs, channels, strides))
        # decoder block i undoes encoder block i: channels[i] -> channels[i-1] (channels[0] for the first)
        targets = (channels[0],) + channels[:-1]
        self.decoder = nn.ModuleList(ResidualBlock(channels[i], targets[i]) for i in reversed(range(len(channels))))
        self.output = nn.Conv2d(channels[0], 1, 3, padding=1)
        init_weights(self)

    def encode(self, x: Tensor) -> Tensor:
        """x: (N, 1, H, W) or (B, S, 1, H, W) float32 in [0, 1] -> z: (N | B, S, C_z, H/4, W/4)."""
        lead, x = _flatten(x)
        for block in self.encoder:
            x = block(x)
        return x.reshape(*lead, *x.shape[1:])

    def decode(self, z: Tensor, output_size: tuple[int, int] | None = None) -> Tensor:
        """z: (N, C_z, h, w) or (B, S, C_z, h, w) -> (N | B, S, 1, H, W) float32 in [0, 1].

        output_size: (H, W) to decode to; default h and w times the total stride.
        """
        lead, z = _flatten(z)
        for block, stride in zip(self.decoder, reversed(self.strides)):
            z = block(z)
            if stride > 1:
                z = F.interpolate(z, scale_factor=stride, mode="bilinear", align_corners=False)
        if output_size is not None and tuple(z.shape[-2:]) != tuple(output_size):
            z = F.interpolate(z, size=tuple(output_size), mode="bilinear", align_corners=False)
        out = torch.sigmoid(self.output(z))
        return out.reshape(*lead, *out.shape[1:])

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, 1, H, W) or (B, S, 1, H, W) -> reconstruction of the same shape, in [0, 1]."""
        return self.decode(self.encode(x), output_size=tuple(x.shape[-2:]))


def _flatten(t: Tensor) -> tuple[tuple[int, ...], Tensor]:
    """(N, C, H, W) or (B, S, C, H, W) -> (leading dims, (N', C, H, W))."""
    if t.dim() == 4:
        return (t.shape[0],), t
    if t.dim() == 5:
        return tuple(t.shape[:2]), t.flatten(0, 1)
    raise ValueError(f"expected (N, C, H, W) or (B, S, C, H, W), got shape {tuple(t.shape)}")
