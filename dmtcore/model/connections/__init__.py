"""Transfer connections: the learned links that fuse several tasks' features at one stage.

A connection for task i after stage l reads the stage-l features of every task in its source
set S(i), in the order of that set, and returns the input of task i's stage l+1. `own` is the
position of task i itself in that list.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class ParamGroup:
    """Parameters that share a learning-rate multiplier and a weight decay in the optimiser;
    `task`: the task they belong to, where a run gives tasks learning rates of their own."""

    params: list[nn.Parameter]
    lr_mult: float = 1.0
    weight_decay: float = 0.0
    task: str | None = None


class StackedSources(Mapping[str, list[torch.Tensor]]):
    """Stage outputs of several source tasks for one batch, held stacked: per stage one tensor
    of len(sources) × batch × the stage's feature shape, sources in `sources` order (the
    feature cache keeps them so, and a batch is one gather per stage). As a mapping it is what
    `MultiTaskModel.forward` takes as `given` (task -> its stage outputs, views into the
    stacks); the model also hands a stack on whole to a connection that reads exactly these
    sources (`SourceList.others`), so that no connection copies them into a stack again."""

    def __init__(self, sources: list[str], stages: list[torch.Tensor]) -> None:
        self.sources = sources
        self.stages = stages
        self._position = {name: i for i, name in enumerate(sources)}

    def __getitem__(self, name: str) -> list[torch.Tensor]:
        position = self._position[name]
        return [stage[position] for stage in self.stages]

    def __iter__(self) -> Iterator[str]:
        return iter(self.sources)

    def __len__(self) -> int:
        return len(self.sources)

    def __contains__(self, name: object) -> bool:
        return name in self._position

    def feature(self, name: str, stage: int) -> torch.Tensor:
        return self.stages[stage][self._position[name]]


class SourceList(list[torch.Tensor]):
    """A connection's input (one tensor per source, in the task's source order, its own at
    `own`) whose other sources also come as one stack (`others`: sources × batch × shape, in
    source order without the own one). A connection may read `others` instead of stacking the
    list itself; the list holds views of it, so either way reads the very same numbers."""

    def __init__(self, own: torch.Tensor, position: int, others: torch.Tensor) -> None:
        super().__init__(others.unbind(0))
        self.insert(position, own)
        self.others = others


class TransferConnection(nn.Module):
    """Base of every connection kind; subclasses implement `forward` and, if they have
    per-source weights, `drop_source` and `relation_weights`."""

    def __init__(self, own: int, num_sources: int, lr_mult: float = 1.0) -> None:
        super().__init__()
        if not 0 <= own < num_sources:
            raise ValueError(f"own position {own} outside {num_sources} sources")
        self.own = own
        self.num_sources = num_sources
        self.lr_mult = float(lr_mult)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def drop_source(self, position: int) -> None:
        """Forget source `position` (its task was removed); the own source cannot be dropped."""
        if position == self.own or not 0 <= position < self.num_sources:
            raise ValueError(
                f"cannot drop source {position} (own={self.own}, n={self.num_sources})"
            )
        if position < self.own:
            self.own -= 1
        self.num_sources -= 1

    def relation_weights(self) -> list[float]:
        """How much this task draws from each source (own = 1.0), for reports and tracking."""
        return [1.0 if i == self.own else 0.0 for i in range(self.num_sources)]

    def param_groups(self) -> list[ParamGroup]:
        params = [p for p in self.parameters() if p.requires_grad]
        return [ParamGroup(params, self.lr_mult)] if params else []


def feature_norm(shape: tuple[int, ...]) -> nn.Module:
    """BatchNorm over the channel axis for maps (C×H×W) or vectors (C)."""
    return nn.BatchNorm2d(shape[0]) if len(shape) == 3 else nn.BatchNorm1d(shape[0])
