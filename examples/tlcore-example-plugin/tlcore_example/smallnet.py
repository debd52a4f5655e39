"""example:smallnet, a small residual convnet delivered under tlcore's backbone contract."""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from tlcore import Backbone, BackboneOptions, LayerGroup, Preprocessing, WeightsError

WIDTHS = {"example:smallnet": 16, "example:smallnet-wide": 32}


class ResidualBlock(nn.Module):
    """Two 3x3 conv-BN layers with a shortcut (a 1x1 projection when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """conv-bn-relu, conv-bn, plus the shortcut, relu."""
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def smallnet_module(width: int) -> nn.Sequential:
    """(N, 3, H, W) to pooled features (N, 4 * width): a stem and three stages, each halving the resolution."""
    return nn.Sequential(
        OrderedDict(
            stem=nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)),
            stage1=ResidualBlock(width, width, 2),
            stage2=ResidualBlock(width, 2 * width, 2),
            stage3=ResidualBlock(2 * width, 4 * width, 2),
            pool=nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()),
        )
    )


def build_smallnet(name: str, options: BackboneOptions) -> Backbone:
    """The backbone factory tlcore calls: ``factory(name, options) -> Backbone``."""
    if options.pretrained:
        # A one-line error, not a traceback: tlcore prints TlcoreErrors as `tlcore: error: ...`.
        raise WeightsError(f"{name} has no pretrained weights; use --weights none (or a weights file)")
    width = WIDTHS[name]
    return Backbone(
        name=name,
        module=smallnet_module(width),
        feature_dim=4 * width,
        # How images must be prepared: tlcore builds the transforms from this, whatever the dataset.
        preprocessing=Preprocessing(
            mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), input_size=32, interpolation="bilinear", crop_pct=1.0, min_size=8
        ),
        # Ordered from the input to the output; every parameter must be in exactly one group (the pool has none).
        layer_groups=[LayerGroup(group, (group,)) for group in ("stem", "stage1", "stage2", "stage3")],
        weights="none",
        extra={"width": width},
    )
