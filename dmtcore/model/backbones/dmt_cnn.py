"""`dmt-cnn`: the column of the DMT paper (Fang et al. 2017, §4.1).

Five convolutions (40@5×5, 60@5×5, 80@3×3, 100@3×3, 140@2×2), each with BatchNorm and ReLU,
non-overlapping 2×2 max-pooling between them while the map is at least 2 pixels wide, then a
fully connected layer of 360 units. 'Same' padding lets the recipe adapt to any input size.

`spatial=true` is the column's form for pixel-level tasks: the same five convolutions, pooling
only after the first three (output stride 8, as the stride-8 columns of NDDR-CNN §4), and no
fully connected layer, so the last stage outputs a 140×H/8×W/8 map; image-level heads then
average it over the map.
"""

from __future__ import annotations

from typing import Any

from dmtcore.errors import InvalidValueError
from dmtcore.hooks.kinds import BackboneKind, Kinds
from dmtcore.hooks.specs import hookimpl

CONVOLUTIONS = ((40, 5), (60, 5), (80, 3), (100, 3), (140, 2))
FC_WIDTH = 360
SPATIAL_POOLS = 3  # output stride 8


def same_padding(kernel: int) -> list[Any]:
    """Zero padding that keeps the map size; explicit, because even kernels pad unevenly."""
    from torch import nn

    total = kernel - 1
    return (
        [nn.ZeroPad2d((total // 2, total - total // 2, total // 2, total - total // 2))]
        if total
        else []
    )


def build(input_spec: Any, options: dict[str, Any]) -> Any:
    from torch import nn

    from dmtcore.model.backbones import Column, check_flag

    channels, height, width = input_spec.shape
    spatial = check_flag("dmt-cnn", options, "spatial")
    pools = SPATIAL_POOLS if spatial else len(CONVOLUTIONS) - 1
    stages: list[nn.Module] = []
    for index, (out_channels, kernel) in enumerate(CONVOLUTIONS):
        layers: list[nn.Module] = [
            *same_padding(kernel),
            nn.Conv2d(channels, out_channels, kernel),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ]
        if index < pools and min(height, width) >= 2:
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        stages.append(nn.Sequential(*layers))
        channels = out_channels
    if spatial:
        return Column(stages, input_spec.shape)
    fc_width = int(options.get("fc_width", FC_WIDTH))
    if fc_width < 1:
        raise InvalidValueError(f"dmt-cnn fc_width must be positive, got {fc_width}")
    stages.append(
        nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * height * width, fc_width),
            nn.BatchNorm1d(fc_width),
            nn.ReLU(inplace=True),
        )
    )
    return Column(stages, input_spec.shape)


@hookimpl
def dmt_register_backbones(kinds: Kinds) -> None:
    kinds.add_backbone(
        BackboneKind(
            name="dmt-cnn",
            description=(
                "DMT paper column: 5 conv stages (40-60-80-100-140) + FC 360 "
                "(spatial=true: no FC, stride 8, for pixel-level tasks)"
            ),
            build=build,
            default_options={"fc_width": FC_WIDTH, "spatial": False},
        )
    )
