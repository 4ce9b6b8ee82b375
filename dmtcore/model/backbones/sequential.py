"""Columns cut out of a network whose `features` run one after another (MobileNet, EfficientNet,
ConvNeXt in torchvision): a stage ends wherever the feature map's resolution is about to halve,
the boundaries torchvision's and timm's feature extractors report, so connections sit between
resolutions as they do between ResNet's residual stages."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from dmtcore.model.backbones import check_flag
from dmtcore.model.backbones.pretrained import load_into


def replace_first_conv(module: Any, channels: int) -> None:
    """Give the first convolution of `module` `channels` input channels (fresh weights; the
    store's initial column supplies adapted pretrained ones, see `pretrained.adapt_to_column`)."""
    from torch import nn

    for parent in module.modules():
        for key, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                setattr(
                    parent,
                    key,
                    nn.Conv2d(
                        channels,
                        child.out_channels,
                        child.kernel_size,
                        child.stride,
                        child.padding,
                        child.dilation,
                        child.groups if child.groups == 1 else channels,
                        child.bias is not None,
                    ),
                )
                return


def cut_column(
    name: str,
    input_spec: Any,
    options: dict[str, Any],
    net: Any,
    weights: dict[str, Any] | None,
    cuts: Sequence[int],
    names: Sequence[str],
    tail: Sequence[Any] = (),
    skip: tuple[str, ...] = ("classifier.",),
) -> Any:
    """The column of `net.features` cut before each index in `cuts`; the image-level form
    ends with global average pooling and `tail` (e.g. ConvNeXt's LayerNorm), the spatial one
    (`spatial=true`) with the last feature map, at stride 32."""
    from torch import nn

    from dmtcore.model.backbones import Column

    spatial = check_flag(name, options, "spatial")
    if weights is not None:
        load_into(net, weights, name, skip=skip)
    features = net.features
    if input_spec.channels != 3:
        replace_first_conv(features[0], input_spec.channels)
    bounds = [0, *cuts, len(features)]
    stages = [nn.Sequential(*features[a:b]) for a, b in itertools.pairwise(bounds)]
    if not spatial:
        stages[-1] = nn.Sequential(*stages[-1], nn.AdaptiveAvgPool2d(1), *tail, nn.Flatten())
    return Column(stages, input_spec.shape, list(names))
