"""The hard-sharing baseline (MT CNN): one trunk shared by every task, one head per task.

It exists for side-by-side comparison in examples and benchmarks. It cannot grow: adding a task
means retraining the trunk, which changes every old task's outputs — exactly what dmt avoids.
It offers what `dmtcore.train.loop.fit` needs, so it trains with the same loop and data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from dmtcore.hooks.kinds import BackboneKind
from dmtcore.model.backbones import InputNormalization
from dmtcore.model.backbones.pretrained import adapt_to_column
from dmtcore.model.connections import ParamGroup
from dmtcore.model.heads import build_head
from dmtcore.tasks.names import InputSpec
from dmtcore.tasks.spec import TaskSpec


class HardSharingModel(nn.Module):
    """A shared column and a head per task; forward returns the requested tasks' logits."""

    def __init__(
        self,
        input_spec: InputSpec,
        backbone: BackboneKind,
        backbone_options: dict[str, Any],
        specs: Sequence[TaskSpec],
        normalization: dict[str, list[float]] | None = None,
        initial_column: dict[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        self.trunk = backbone.build(input_spec, backbone_options)
        if initial_column is not None:
            self.trunk.load_state_dict(
                adapt_to_column(self.trunk.state_dict(), initial_column, backbone.name)
            )
        self.normalize = (
            InputNormalization(normalization["mean"], normalization["std"], input_spec.channels)
            if normalization
            else None
        )
        self.names = [spec.name for spec in specs]
        size = (input_spec.height, input_spec.width)
        self.heads = nn.ModuleList(
            build_head(
                spec.head, self.trunk.out_shape, spec.num_outputs, size, self.trunk.feature_shapes
            )
            for spec in specs
        )

    def forward(
        self,
        x: torch.Tensor,
        tasks: Sequence[str] | None = None,
        given: Any = None,
        keep: Any = None,
    ) -> dict[str, torch.Tensor]:
        """`given`/`keep` are the feature-cache arguments of `MultiTaskModel.forward`; nothing
        here is frozen, so the cache never asks for anything."""
        if self.normalize is not None:
            x = self.normalize(x)
        stages = []
        for stage in self.trunk.stages:
            x = stage(x)
            stages.append(x)
        wanted = self.names if tasks is None else list(tasks)
        return {name: self._output(self.heads[self.names.index(name)], stages) for name in wanted}

    @staticmethod
    def _output(head: nn.Module, stages: list[torch.Tensor]) -> Any:
        """A head on the trunk's last features; a region head (a feature pyramid) on all
        the trunk's stage outputs, as in a column of `MultiTaskModel`."""
        return head(stages) if getattr(head, "reads_stages", False) else head(stages[-1])

    def frozen_sources(self, names: Sequence[str]) -> list[str]:
        return []

    def param_groups(self, connection_lr_mult: float | None = None) -> list[ParamGroup]:
        return [ParamGroup(list(self.parameters()))]

    def train_mode(self) -> None:
        self.train()

    def compile_planned(self) -> None:
        for module in [*self.trunk.stages, *self.heads]:
            module.compile()

    def trained_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.state_dict().items()}

    def load_trained_state(self, state: dict[str, torch.Tensor]) -> None:
        self.load_state_dict(state)

    def relation_weights(self) -> dict[str, list[dict[str, float]]]:
        return {}
