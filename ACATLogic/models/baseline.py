"""`ScanClassifier`: what the two baselines (brain MTL, lung ResNet) share.

A baseline classifies a scan from its slices: a 2-D backbone runs on every image of the layout
(slices or hemispheres, see layouts.py), each feature map is global-average-pooled, the per-slice
features are averaged over the slices, and a head turns the scan feature into the output. ACAT
(acat.py) keeps the backbone and the head and replaces the plain mean by attention.
"""

from __future__ import annotations

from torch import Tensor, nn

from .layers import global_average_pool
from .layouts import HemisphereLayout, SliceLayout


class ScanClassifier(nn.Module):
    """Base of the baseline classifiers. Subclasses set ``backbone``, ``head``, ``layout``, ``config``.

    Attributes:
        backbone: module with ``stages`` (nn.ModuleList), ``attention_stages``, ``stage_channels`` and
            ``out_channels``; maps (N, 1, h, w) images to (N, out_channels, h', w').
        head: (B, D) scan feature -> the model output.
        layout: `SliceLayout` or `HemisphereLayout`.
        class_names: one name per output class.
        task: "brain" or "lung".
        config: the constructor's keyword arguments, JSON-serialisable (see registry.py).
    """

    registry_name: str = ""
    class_names: tuple[str, ...] = ()
    task: str = ""
    backbone: nn.Module
    head: nn.Module
    layout: SliceLayout | HemisphereLayout
    config: dict

    @property
    def feature_dim(self) -> int:
        """Length D of a per-slice (and scan) feature vector."""
        return self.backbone.out_channels * self.layout.features_per_slice

    @property
    def gradcam_layer(self) -> nn.Module:
        """The module whose output is the last convolutional feature map (the backbone's last stage)."""
        return self.backbone.stages[-1]

    def slice_features(self, x: Tensor) -> Tensor:
        """x: (B, S, 1, H, W) float32 in [0, 1] -> per-slice features (B, S, D)."""
        batch, slices = x.shape[:2]
        features = self.backbone(self.layout.to_images(x))
        return self.layout.gather_features(global_average_pool(features), batch, slices)

    def scan_features(self, x: Tensor) -> Tensor:
        """x: (B, S, 1, H, W) -> (B, D): the mean of the slice features (every slice counts equally)."""
        return self.slice_features(x).mean(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, S, 1, H, W) float32 in [0, 1] -> (B, len(class_names)); see the subclass for what."""
        return self.head(self.scan_features(x))

    def layer_output_to_slices(self, t: Tensor, batch: int, slices: int) -> Tensor:
        """A backbone layer's output (N, C, h, w) -> (B, S, C, h, w_image) in image layout (Grad-CAM)."""
        return self.layout.to_slices(t, batch, slices)

    def attention_maps(self) -> dict[str, Tensor]:
        """Baselines have no attention masks: always {} (the same call as on ACAT models)."""
        return {}
