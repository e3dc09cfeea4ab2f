"""Lung baseline: a 2-D ResNet (bottleneck blocks) on every axial slice, averaged over the slices.

The ACAT paper's lung experiments (Fontanella et al., ICML 2023; COVID-19 chest CT) classify slices
with a ResNet-50 trunk (He et al., CVPR 2016); "lung_resnet50" is that layout with a 1-channel stem,
and "lung_resnet_small" the same design shrunk for CPU tests and demos.

Example:
    >>> model = create_model("lung_resnet_small")
    >>> logits = model(torch.rand(1, 6, 1, 128, 128))   # (1, 2): ("normal", "covid19")
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

from torch import Tensor, nn

from .baseline import ScanClassifier
from .layers import Bottleneck, init_weights
from .layouts import SliceLayout
from .registry import register_model


class ResNetBackbone(nn.Module):
    """ResNet trunk without its classifier: stem + 4 layers of `Bottleneck` blocks.

    stem: 7x7 conv stride 2 -> BN -> ReLU -> 3x3 max-pool stride 2; layer i has depths[i] blocks of
    width base_width * 2**i (output channels x4) and stride 1, 2, 2, 2.

    x: (N, in_channels, H, W) -> (N, 32 * base_width, ~H/32, ~W/32)

    Attributes:
        stages: nn.ModuleList([stem, layer1, layer2, layer3, layer4]).
        stage_channels: output channels of each stage.
        attention_stages: (1, 2, 3): ACAT's early/middle/late masks come after layers 1, 2, 3.
        out_channels: channels of the last feature map.
    """

    attention_stages = (1, 2, 3)

    def __init__(self, depths: Sequence[int] = (3, 4, 6, 3), base_width: int = 64, in_channels: int = 1) -> None:
        super().__init__()
        depths = tuple(int(d) for d in depths)
        if len(depths) != 4 or min(depths) < 1:
            raise ValueError(f"a ResNet has 4 layers of at least one block each, got depths={depths}")
        stem = nn.Sequential(
            nn.Conv2d(in_channels, base_width, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(base_width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages: list[nn.Module] = [stem]
        channels = [base_width]
        previous = base_width
        for i, depth in enumerate(depths):
            width = base_width * 2 ** i
            blocks = []
            for j in range(depth):
                blocks.append(Bottleneck(previous, width, stride=(1 if i == 0 or j > 0 else 2)))
                previous = width * Bottleneck.expansion
            stages.append(nn.Sequential(*blocks))
            channels.append(previous)
        self.stages = nn.ModuleList(stages)
        self.stage_channels = channels
        self.out_channels = previous
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        for stage in self.stages:
            x = stage(x)
        return x


@register_model("lung_resnet")
class LungResNet(ScanClassifier):
    """COVID-19 vs normal chest CT: ResNet on each slice -> global average pool -> mean over slices -> Linear.

    x: (B, S, 1, H, W) float32 in [0, 1] -> (B, 2) logits of ("normal", "covid19").

    Args:
        depths: blocks per ResNet layer ((3, 4, 6, 3) is ResNet-50).
        base_width: channels of the stem and of layer1's bottleneck.
    """

    class_names = ("normal", "covid19")
    task = "lung"

    def __init__(self, depths: Sequence[int] = (3, 4, 6, 3), base_width: int = 64,
                 class_names: Optional[Sequence[str]] = None) -> None:
        super().__init__()
        self.config = {"depths": [int(d) for d in depths], "base_width": int(base_width)}
        if class_names is not None:  # another task's classes (recorded, so the card rebuilds the same head)
            self.class_names = check_class_names(class_names)
            self.config["class_names"] = list(self.class_names)
        self.layout = SliceLayout()
        self.backbone = ResNetBackbone(depths, base_width, in_channels=1)
        self.head = nn.Linear(self.feature_dim, len(self.class_names))


def check_class_names(class_names: Sequence[str]) -> tuple[str, ...]:
    """At least two distinct, non-empty class names (ValueError otherwise)."""
    names = tuple(str(n) for n in class_names)
    if len(names) < 2 or len(set(names)) != len(names) or not all(n.strip() for n in names):
        raise ValueError(f"class_names must be at least two distinct names, not {list(class_names)}")
    return names


def _named(model: LungResNet, name: str) -> LungResNet:
    # the name alone fixes the architecture, so the recorded config is empty (but for another task's classes)
    model.registry_name = name
    model.config = {"class_names": model.config["class_names"]} if "class_names" in model.config else {}
    return model


@register_model("lung_resnet50")
def lung_resnet50(class_names: Optional[Sequence[str]] = None) -> LungResNet:
    """The paper's layout: ResNet-50 trunk (depths (3, 4, 6, 3), base width 64), 1-channel input."""
    return _named(LungResNet(depths=(3, 4, 6, 3), base_width=64, class_names=class_names), "lung_resnet50")


@register_model("lung_resnet_small")
def lung_resnet_small(class_names: Optional[Sequence[str]] = None) -> LungResNet:
    """One bottleneck per layer, base width 8 (256 output channels): small enough for CPU."""
    return _named(LungResNet(depths=(1, 1, 1, 1), base_width=8, class_names=class_names), "lung_resnet_small")


@register_model("slice_resnet")
class SliceResNet(LungResNet):
    """Any task's classifier: the lung ResNet's design (a ResNet on every slice, averaged) with the task's own
    classes, for a task that is neither brain stroke nor lung COVID-19 (README, "Your own task").

    x: (B, S, 1, H, W) float32 in [0, 1] -> (B, len(class_names)) logits.

    Args:
        class_names: the classes in index order (the training config's ``data.labels``).
        depths, base_width: as `LungResNet`; the defaults are ``lung_resnet_small``'s (CPU-sized).
    """

    task = ""

    def __init__(self, class_names: Sequence[str] = ("negative", "positive"), depths: Sequence[int] = (1, 1, 1, 1),
                 base_width: int = 8) -> None:
        super().__init__(depths=depths, base_width=base_width, class_names=class_names)
