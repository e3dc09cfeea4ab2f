"""`ACATClassifier`: a baseline classifier steered by saliency maps through attention (paper Sec. 3).

ACAT (Fontanella et al., "ACAT: Adversarial Counterfactual Attention", ICML 2023) feeds the scan and
its counterfactual saliency map to two branches with the baseline's backbone architecture. At three
depths (early, middle, late) a spatial attention mask S_i is computed from the saliency branch and
amplifies the image branch: G = F + F * S_i. At the end the three masks are pooled to the last feature
map's size, fused by a 1x1 convolution into one mask M, applied the same way, and slice attention
replaces the baseline's plain mean over slices. The heads are the baseline's.

Example:
    >>> model = ACATClassifier("brain_mtl", widths=(4, 4, 8, 8, 8, 8, 8))
    >>> copied = model.load_image_branch_from(trained_baseline)   # start from the baseline (Algorithm 1)
    >>> log_p = model(x, saliency)                               # x, saliency: (B, S, 1, H, W)
    >>> model.attention_maps()["fused"].shape                    # (B, S, 1, H/8, W/8)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .baseline import ScanClassifier
from .layers import SliceAttention, SpatialAttention, apply_attention, global_average_pool
from .mtl import BrainHeads
from .registry import create_model, register_model

#: names of the three attention depths, in stage order
MASK_NAMES = ("early", "middle", "late")


@register_model("acat")
class ACATClassifier(nn.Module):
    """Two-branch attention classifier on top of a baseline architecture.

    Inputs: x: (B, S, 1, H, W) float32 in [0, 1]; saliency: the same shape, in [0, 1].
    Output: the baseline's output: brain (B, 4) log-probabilities of ("none", "left", "right", "both");
    lung (B, 2) logits of ("normal", "covid19").

    For the brain backbone both inputs are split into hemispheres exactly like `BrainMTL` (right side
    mirrored), so masks are computed per hemisphere and come back in image layout.

    Args:
        backbone: registered baseline whose architecture both branches use ("brain_mtl",
            "lung_resnet50", "lung_resnet_small", "lung_resnet").
        attention_batch_norm: BatchNorm2d(1) inside each `SpatialAttention`.
        slice_hidden: hidden units of the slice attention MLP.
        **backbone_config: the baseline's own keyword arguments (e.g. widths=..., hidden=...).

    Attributes:
        image_branch: the baseline backbone (all its stages) for the scan.
        saliency_branch: nn.ModuleList of the same architecture's stages for the saliency map, cut after
            the last attention stage: the later stages would never reach any output.
        attention: the three `SpatialAttention` modules (early, middle, late).
        fusion: 1x1 conv, 3 masks -> 1 (then sigmoid).
        slice_attention: `SliceAttention` over per-slice features.
        head: the baseline's head (brain: `BrainHeads`; lung: nn.Linear).
    """

    def __init__(self, backbone: str = "brain_mtl", attention_batch_norm: bool = False, slice_hidden: int = 64,
                 **backbone_config) -> None:
        super().__init__()
        image_model = create_model(backbone, **backbone_config)
        if not isinstance(image_model, ScanClassifier):
            raise ValueError(f"ACAT is built on a baseline classifier (brain_mtl, lung_resnet50, lung_resnet_small, "
                             f"lung_resnet); {backbone!r} is not one")
        saliency_model = create_model(backbone, **backbone_config)
        self.config = {"backbone": backbone, "attention_batch_norm": bool(attention_batch_norm),
                       "slice_hidden": int(slice_hidden), **image_model.config}
        self.class_names: tuple[str, ...] = tuple(image_model.class_names)
        self.task: str = image_model.task
        self.layout = image_model.layout
        self.feature_dim: int = image_model.feature_dim
        self.attention_stages = tuple(image_model.backbone.attention_stages)
        if len(self.attention_stages) != len(MASK_NAMES):
            raise ValueError(f"ACAT needs {len(MASK_NAMES)} attention stages, the backbone has {self.attention_stages}")

        self.image_branch = image_model.backbone
        self.saliency_branch = nn.ModuleList(list(saliency_model.backbone.stages)[: max(self.attention_stages) + 1])
        self.attention = nn.ModuleList(SpatialAttention(attention_batch_norm) for _ in MASK_NAMES)
        self.fusion = nn.Conv2d(len(MASK_NAMES), 1, 1)
        self.slice_attention = SliceAttention(self.feature_dim, slice_hidden)
        self.head = image_model.head
        self._last_maps: dict[str, Tensor] = {}

    @property
    def gradcam_layer(self) -> nn.Module:
        """The image branch's last stage: its output is the last feature map (before the fused mask M)."""
        return self.image_branch.stages[-1]

    def scan_features(self, x: Tensor, saliency: Tensor) -> Tensor:
        """x, saliency: (B, S, 1, H, W) in [0, 1] -> scan feature (B, D); records the attention maps."""
        if saliency.shape != x.shape:
            raise ValueError(f"the saliency map must have the scan's shape {tuple(x.shape)}, got {tuple(saliency.shape)}")
        batch, slices = x.shape[:2]
        features = self.layout.to_images(x)
        salient = self.layout.to_images(saliency)
        masks: list[Tensor] = []
        for i, stage in enumerate(self.image_branch.stages):
            features = stage(features)
            if i < len(self.saliency_branch):
                salient = self.saliency_branch[i](salient)
            if i in self.attention_stages:
                mask = self.attention[len(masks)](salient)
                features = apply_attention(features, mask)
                masks.append(mask)
        # masks from shallower stages are larger; averaging brings each to the last map's grid
        size = features.shape[-2:]
        stacked = torch.cat([F.adaptive_avg_pool2d(m, size) for m in masks], dim=1)
        fused = torch.sigmoid(self.fusion(stacked))
        features = apply_attention(features, fused)
        per_slice = self.layout.gather_features(global_average_pool(features), batch, slices)
        scan, weights = self.slice_attention(per_slice)

        maps = {name: self.layout.to_slices(m.detach(), batch, slices) for name, m in zip(MASK_NAMES, masks)}
        maps["fused"] = self.layout.to_slices(fused.detach(), batch, slices)
        maps["slices"] = weights.detach()
        self._last_maps = maps
        return scan

    def forward(self, x: Tensor, saliency: Tensor) -> Tensor:
        """x, saliency: (B, S, 1, H, W) in [0, 1] -> brain (B, 4) log-probabilities / lung (B, 2) logits."""
        return self.head(self.scan_features(x, saliency))

    def forward_heads(self, x: Tensor, saliency: Tensor) -> dict[str, Tensor]:
        """Brain only: {"lesion": (B, 2), "side": (B, 3)} raw logits for the two training losses."""
        if not isinstance(self.head, BrainHeads):
            raise TypeError(f"forward_heads is for the brain model; the {self.config['backbone']} head has one output")
        return self.head.forward_heads(self.scan_features(x, saliency))

    def layer_output_to_slices(self, t: Tensor, batch: int, slices: int) -> Tensor:
        """An image-branch layer output (N, C, h, w) -> (B, S, C, h, w_image) in image layout (Grad-CAM)."""
        return self.layout.to_slices(t, batch, slices)

    def attention_maps(self) -> dict[str, Tensor]:
        """The masks of the last forward pass, detached, in image layout ({} before any forward).

        "early", "middle", "late": (B, S, 1, h_i, w_i), each at its stage's resolution, in (0, 1);
        "fused": (B, S, 1, h, w) at the last feature map's resolution, in (0, 1);
        "slices": (B, S) slice attention weights in (0, 1).
        For the brain model the hemispheres are reassembled: right at the low columns, left at the high.
        """
        return dict(self._last_maps)

    def load_image_branch_from(self, baseline: nn.Module) -> list[str]:
        """Copy a trained baseline's backbone into the image branch, and its head where shapes match.

        Returns the names (in this model's state_dict) of every copied entry, parameters and BatchNorm
        buffers alike: running statistics are part of what the baseline learnt.

        Raises:
            ValueError: the baseline's backbone is not this architecture (other widths, depths or task).
        """
        source = baseline.backbone.state_dict()
        target = self.image_branch.state_dict()
        mismatched = sorted(set(source) ^ set(target)) + sorted(
            k for k in set(source) & set(target) if source[k].shape != target[k].shape)
        if mismatched:
            raise ValueError(f"the baseline's backbone differs from this model's image branch "
                             f"(first differences: {', '.join(mismatched[:3])}); build ACAT with its config")
        self.image_branch.load_state_dict(source)
        copied = [f"image_branch.{k}" for k in source]
        own_head = self.head.state_dict()
        head = {k: v for k, v in getattr(baseline, "head", nn.Identity()).state_dict().items()
                if k in own_head and own_head[k].shape == v.shape}
        self.head.load_state_dict(head, strict=False)
        return copied + [f"head.{k}" for k in head]
