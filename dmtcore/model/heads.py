"""Task heads, built from a declarative `HeadSpec` so a store can rebuild them without plugins.

A head reads the last stage's features. Flat features (C) feed image-level heads directly;
spatial ones (C×h×w, from a column with spatial features) are averaged over the map first,
or, for pixel-level tasks, decoded into full-resolution maps by a `DenseHead`. Region-level
heads (`region_heads`) read several stages through a feature pyramid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dmtcore.errors import InvalidValueError
from dmtcore.model.region_heads import build_region_head
from dmtcore.tasks.spec import HeadSpec

# Atrous rates of the dense head's parallel branches, in feature-map pixels. Deeplab's ASPP
# uses 6/12/18 on 41×41 maps (stride 8 of 321×321 inputs); these fit the 2×2..48×48 maps of
# stride-8 columns at the 16..384 pixel inputs dmt is used with.
ASPP_RATES = (1, 2, 3)


class DenseHead(nn.Module):
    """ASPP-lite (Deeplab, as in the NDDR-CNN and cross-stitch setups): a 1×1 branch and 3×3
    atrous branches in parallel, fused by a 1×1 convolution, a 1×1 classifier, then bilinear
    upsampling to the input size, so every task predicts one value per input pixel."""

    def __init__(
        self, in_channels: int, width: int, num_outputs: int, output_size: tuple[int, int]
    ) -> None:
        super().__init__()
        self.output_size = tuple(output_size)
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(
                    in_channels,
                    width,
                    1 if rate == 1 else 3,
                    padding=0 if rate == 1 else rate,
                    dilation=rate,
                    bias=False,
                ),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            )
            for rate in ASPP_RATES
        )
        self.fuse = nn.Sequential(
            nn.Conv2d(width * len(ASPP_RATES), width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Conv2d(width, num_outputs, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        fused = self.fuse(torch.cat([branch(features) for branch in self.branches], 1))
        return F.interpolate(
            self.classifier(fused), size=self.output_size, mode="bilinear", align_corners=False
        )


def build_head(
    spec: HeadSpec,
    feature_shape: tuple[int, ...],
    num_outputs: int,
    output_size: tuple[int, int],
    stage_shapes: list[tuple[int, ...]] | None = None,
) -> nn.Module:
    """`linear`: one layer; `mlp`: hidden layers with ReLU (and dropout), then the output layer;
    both after global average pooling when the features are spatial. `dense`: a `DenseHead`,
    which needs spatial features. `fcos` and `roi-mlp`: region heads over several of the
    column's stages (`stage_shapes`, every stage's output shape; see `region_heads`)."""
    if spec.kind in ("fcos", "roi-mlp"):
        shapes = list(stage_shapes) if stage_shapes is not None else [tuple(feature_shape)]
        return build_region_head(spec.kind, spec.hidden, shapes, num_outputs, output_size)
    spatial = len(feature_shape) == 3
    if spec.kind == "dense":
        if not spatial:
            raise InvalidValueError(
                f"a dense head needs spatial features (C×H×W), but the column's last stage "
                f"outputs flat features of shape {tuple(feature_shape)}; create the store with "
                "a spatial column, e.g. --backbone resnet18 --backbone-option dilated=true, or "
                "--backbone dmt-cnn --backbone-option spatial=true"
            )
        return DenseHead(feature_shape[0], spec.hidden[0], num_outputs, output_size)
    layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()] if spatial else []
    width = feature_shape[0]
    for hidden in spec.hidden if spec.kind == "mlp" else ():
        layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
        if spec.dropout:
            layers.append(nn.Dropout(spec.dropout))
        width = hidden
    layers.append(nn.Linear(width, num_outputs))
    return nn.Sequential(*layers)
