"""Task heads, built from a declarative `HeadSpec` so a store can rebuild them without plugins."""

from __future__ import annotations

from torch import nn

from dmtcore.taskspec import HeadSpec


def build_head(spec: HeadSpec, in_features: int, num_outputs: int) -> nn.Module:
    """`linear`: one layer; `mlp`: hidden layers with ReLU (and dropout), then the output layer."""
    layers: list[nn.Module] = []
    width = in_features
    for hidden in spec.hidden if spec.kind == "mlp" else ():
        layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True)]
        if spec.dropout:
            layers.append(nn.Dropout(spec.dropout))
        width = hidden
    layers.append(nn.Linear(width, num_outputs))
    return nn.Sequential(*layers)
