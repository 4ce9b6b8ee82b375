"""An `mlp` column for the peer benchmarks, a dmt plugin loaded with `-p` (create_plugin_host).

Peer libraries for growing networks (Avalanche's PNN) build their columns from fully connected
layers. To compare the cost of adding a task on the same column, dmt needs that column too: this
plugin registers backbone `mlp` through the `dmt_register_backbones` hook, as any third-party
column would. It is benchmark-local on purpose: dmt's built-in columns are the papers' CNNs,
and an MLP column is only here so that both sides of a comparison train the same layers.

The column is `layers` stages of `Linear(width) + ReLU` on the flattened image, exactly the
column of `avalanche.models.PNN(num_layers=layers, hidden_features_per_column=width)`: dmt's
transfer connections sit between the stages (flat features, so ttc's BatchNorm is a
BatchNorm1d) and the task's head reads the last stage.
"""

from __future__ import annotations

from typing import Any

from dmtcore.errors import InvalidValueError
from dmtcore.hooks.kinds import BackboneKind, Kinds
from dmtcore.hooks.specs import hookimpl

LAYERS = 2
WIDTH = 100  # avalanche.models.PNN's default hidden_features_per_column


def build(input_spec: Any, options: dict[str, Any]) -> Any:
    """`layers` stages of Linear + ReLU, the first one flattening the C×H×W image."""
    from torch import nn

    from dmtcore.model.backbones import Column

    layers, width = int(options["layers"]), int(options["width"])
    if layers < 1 or width < 1:
        raise InvalidValueError(f"mlp layers and width must be positive, got {layers}, {width}")
    channels, height, width_in = input_spec.shape
    stages: list[nn.Module] = []
    features = channels * height * width_in
    for index in range(layers):
        flatten = [nn.Flatten()] if index == 0 else []
        stages.append(nn.Sequential(*flatten, nn.Linear(features, width), nn.ReLU()))
        features = width
    return Column(stages, input_spec.shape)


@hookimpl
def dmt_register_backbones(kinds: Kinds) -> None:
    kinds.add_backbone(
        BackboneKind(
            name="mlp",
            description="fully connected column: `layers` × (Linear `width` + ReLU)",
            build=build,
            default_options={"layers": LAYERS, "width": WIDTH},
        )
    )
