"""Column recipes. A backbone builds a `Column`: a task's stages plus the shape each produces."""

from __future__ import annotations

import torch
from torch import nn

from dmtcore.errors import InvalidValueError


class Column(nn.Module):
    """One task's stages `s^1 … s^L`. Connections sit between stages, so they need the shape of
    every stage's output (`feature_shapes`, without the batch dimension)."""

    def __init__(
        self,
        stages: list[nn.Module],
        input_shape: tuple[int, int, int],
        stage_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.feature_shapes = infer_feature_shapes(self.stages, input_shape)
        # What each stage holds, in the library's own layer names ("conv1-layer1", "layer2"),
        # so a user can see where the connections sit; recorded in the manifest at init.
        self.stage_names = stage_names or [f"stage{i + 1}" for i in range(len(stages))]
        self.input_shape = tuple(input_shape)

    def describe_stages(self) -> list[dict[str, object]]:
        """Per stage: its name, output channels and reduction (input side ÷ output side; None
        for a flat output), as `dmt backbones` and `dmt init --json` show them."""
        side = self.input_shape[1]
        return [
            {
                "name": name,
                "channels": shape[0],
                "reduction": round(side / shape[1], 2) if len(shape) == 3 else None,
                "shape": list(shape),
            }
            for name, shape in zip(self.stage_names, self.feature_shapes, strict=True)
        ]

    @property
    def out_shape(self) -> tuple[int, ...]:
        """The last stage's output shape, which the head reads: C, or C×h×w for a column with
        spatial features (which pixel-level heads need)."""
        return self.feature_shapes[-1]

    @property
    def spatial(self) -> bool:
        return len(self.out_shape) == 3


def check_flag(backbone: str, options: dict[str, object], key: str) -> bool:
    """A recipe's true/false option, refused by value when it is anything else."""
    value = options.get(key, False)
    if not isinstance(value, bool):
        raise InvalidValueError(f"{backbone} {key} must be true or false, got {value!r}")
    return value


class InputNormalization(nn.Module):
    """(x − mean) / std per channel: the input statistics pretrained weights expect (ImageNet's
    for torchvision and timm). It holds no weights of its own (non-persistent buffers), so it
    never enters a weight file; the manifest records the values and the model applies them once
    to its input, for training, evaluation, prediction and the registered model alike."""

    def __init__(self, mean: list[float], std: list[float], channels: int) -> None:
        super().__init__()
        mean_t, std_t = (
            torch.tensor(mean, dtype=torch.float32),
            torch.tensor(std, dtype=torch.float32),
        )
        if channels != len(mean):  # e.g. grey images on RGB weights: the average channel
            mean_t = mean_t.mean().repeat(channels)
            std_t = std_t.mean().repeat(channels)
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std_t.view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


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
