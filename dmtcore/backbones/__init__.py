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
    def out_features(self) -> int:
        """Width of the last stage's output, which the head reads."""
        shape = self.feature_shapes[-1]
        if len(shape) != 1:
            raise ValueError(f"the last stage must output flat features, got shape {shape}")
        return shape[0]


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
