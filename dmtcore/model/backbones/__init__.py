"""Column recipes. A backbone builds a `Column`: a task's stages plus the shape each produces."""

from __future__ import annotations

import torch
from torch import nn


class Column(nn.Module):
    """One task's stages `s^1 … s^L`. Connections sit between stages, so they need the shape of
    every stage's output (`feature_shapes`, without the batch dimension)."""

    def __init__(self, stages: list[nn.Module], input_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.feature_shapes = infer_feature_shapes(self.stages, input_shape)

    @property
    def out_shape(self) -> tuple[int, ...]:
        """The last stage's output shape, which the head reads: C, or C×h×w for a column with
        spatial features (which pixel-level heads need)."""
        return self.feature_shapes[-1]

    @property
    def spatial(self) -> bool:
        return len(self.out_shape) == 3


def infer_feature_shapes(
    stages: nn.ModuleList, input_shape: tuple[int, int, int]
) -> list[tuple[int, ...]]:
    """Run one zero image through the stages to learn each output shape exactly."""
    shapes = []
    was_training = stages.training
    stages.eval()
    with torch.no_grad():
        h = torch.zeros(1, *input_shape)
        for stage in stages:
            h = stage(h)
            shapes.append(tuple(h.shape[1:]))
    stages.train(was_training)
    return shapes
