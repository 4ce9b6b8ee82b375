"""The multi-task model: one column, one connection per stage boundary, and one head per task.

Forward for task i (DESIGN.md §1): h_i^0 = x, h_i^l = s_i^l(c_i^{l-1}({h_j^{l-1}} for j in S(i))),
y_i = head_i(h_i^L). A task's sources are itself and tasks added before it, so computing the
needed tasks stage by stage, in model order, does every column's work exactly once per batch.

Modules are keyed by a task's *slot* ('t0', 't1', ...), never by its name: names may contain
dots, which module keys may not, and slots make weight files independent of what users type.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dmtcore.backbones import Column
from dmtcore.connections import ParamGroup, TransferConnection
from dmtcore.heads import build_head
from dmtcore.names import InputSpec
from dmtcore.registry import BackboneKind, ConnectionKind
from dmtcore.taskspec import HeadSpec

PARTS = ("column", "connections", "head")


@dataclass
class TaskSlot:
    """A task inside the model: its slot key, its source set in order, and its output."""

    name: str
    slot: str
    sources: list[str]
    head: HeadSpec
    num_outputs: int


@dataclass(frozen=True)
class TrainingPlan:
    """Which parts train: task names whose column, connections or head get gradients."""

    columns: frozenset[str] = frozenset()
    connections: frozenset[str] = frozenset()
    heads: frozenset[str] = frozenset()

    def tasks(self) -> frozenset[str]:
        return self.columns | self.connections | self.heads


class MultiTaskModel(nn.Module):
    """Columns, connections and heads of every task, in the order tasks were added."""

    def __init__(
        self,
        input_spec: InputSpec,
        backbone: BackboneKind,
        backbone_options: dict[str, Any],
        connection: ConnectionKind,
        connection_options: dict[str, Any],
    ) -> None:
        super().__init__()
        self.input_spec = input_spec
        self.backbone = backbone
        self.backbone_options = backbone_options
        self.connection = connection
        self.connection_options = connection_options
        self.tasks: dict[str, TaskSlot] = {}
        self.columns = nn.ModuleDict()
        self.connections = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        self.plan = TrainingPlan()

    # -- structure -------------------------------------------------------------------------

    def add_task(
        self, name: str, slot: str, sources: Sequence[str], head: HeadSpec, num_outputs: int
    ) -> None:
        """Build a new column, its connections and its head (fresh weights from torch's RNG)."""
        unknown = [s for s in sources if s != name and s not in self.tasks]
        if name in self.tasks or name not in sources or unknown:
            raise ValueError(f"bad source set {list(sources)} for task {name!r}")
        column: Column = self.backbone.build(self.input_spec, self.backbone_options)
        own = list(sources).index(name)
        connections = nn.ModuleList(
            self.connection.build(own, len(sources), shape, self.connection_options)
            for shape in column.feature_shapes[:-1]
        )
        self.tasks[name] = TaskSlot(name, slot, list(sources), head, num_outputs)
        self.columns[slot] = column
        self.connections[slot] = connections
        self.heads[slot] = build_head(head, column.out_features, num_outputs)

    def remove_task(self, name: str) -> list[str]:
        """Cut a task out; every connection that read it loses that input. Returns the tasks
        whose source sets changed, directly or through a source that changed."""
        removed = self.tasks.pop(name)
        for part in (self.columns, self.connections, self.heads):
            del part[removed.slot]
        affected: list[str] = []
        for task in self.tasks.values():
            if name in task.sources:
                position = task.sources.index(name)
                for connection in self.connection_modules(task.name):
                    connection.drop_source(position)
                task.sources.remove(name)
                affected.append(task.name)
            elif any(s in affected for s in task.sources if s != task.name):
                affected.append(task.name)
        return affected

    def part(self, name: str, part: str) -> nn.Module:
        slot = self.tasks[name].slot
        return {"column": self.columns, "connections": self.connections, "head": self.heads}[part][
            slot
        ]

    def connection_modules(self, name: str) -> list[TransferConnection]:
        return list(self.connections[self.tasks[name].slot])

    def closure(self, names: Iterable[str]) -> list[str]:
        """Every task whose features the given tasks need, in model order."""
        needed: set[str] = set()
        stack = list(names)
        while stack:
            name = stack.pop()
            if name not in needed:
                needed.add(name)
                stack.extend(self.tasks[name].sources)
        return [t for t in self.tasks if t in needed]

    # -- training state --------------------------------------------------------------------

    def configure_training(self, plan: TrainingPlan) -> None:
        """Freeze everything except the parts the plan trains (frozen parts: no grad, eval mode)."""
        self.plan = plan
        for name in self.tasks:
            for part, trained in (
                ("column", plan.columns),
                ("connections", plan.connections),
                ("head", plan.heads),
            ):
                self.part(name, part).requires_grad_(name in trained)

    def train_mode(self) -> None:
        """Training mode for the planned parts only: frozen BatchNorm statistics never move."""
        self.eval()
        for name in self.tasks:
            for part, trained in (
                ("column", self.plan.columns),
                ("connections", self.plan.connections),
                ("head", self.plan.heads),
            ):
                if name in trained:
                    self.part(name, part).train()

    def param_groups(self, connection_lr_mult: float | None = None) -> list[ParamGroup]:
        """Trainable parameters grouped by learning-rate multiplier and weight decay;
        `connection_lr_mult` overrides the connection kind's own multiplier."""
        groups: list[ParamGroup] = []
        for name in self.tasks:
            if name in self.plan.columns:
                groups.append(ParamGroup(list(self.part(name, "column").parameters())))
            if name in self.plan.heads:
                groups.append(ParamGroup(list(self.part(name, "head").parameters())))
            if name in self.plan.connections:
                for connection in self.connection_modules(name):
                    for group in connection.param_groups():
                        if connection_lr_mult is not None:
                            group.lr_mult = connection_lr_mult
                        groups.append(group)
        return [g for g in groups if g.params]

    def _frozen_tasks(self) -> set[str]:
        """Tasks whose features depend on no trainable part: computed without autograd."""
        trained = self.plan.tasks()
        return {t for t in self.tasks if not any(s in trained for s in self.closure([t]))}

    # -- forward ---------------------------------------------------------------------------

    def forward(
        self, x: torch.Tensor, tasks: Sequence[str] | None = None
    ) -> dict[str, torch.Tensor]:
        """Logits of the requested tasks (all by default), computing each needed column once."""
        wanted = list(self.tasks) if tasks is None else list(tasks)
        needed = self.closure(wanted)
        frozen = self._frozen_tasks() if torch.is_grad_enabled() else set()
        num_stages = len(self.columns[self.tasks[needed[0]].slot].stages) if needed else 0
        previous: dict[str, torch.Tensor] = {}
        for stage in range(num_stages):
            current: dict[str, torch.Tensor] = {}
            for name in needed:
                task = self.tasks[name]
                with torch.no_grad() if name in frozen else nullcontext():
                    if stage == 0:
                        inputs = x
                    else:
                        connection = self.connections[task.slot][stage - 1]
                        inputs = connection([previous[s] for s in task.sources])
                    current[name] = self.columns[task.slot].stages[stage](inputs)
            previous = current
        return {name: self.heads[self.tasks[name].slot](previous[name]) for name in wanted}

    def relation_weights(self) -> dict[str, list[dict[str, float]]]:
        """For every task, per stage boundary, how much it draws from each source."""
        out: dict[str, list[dict[str, float]]] = {}
        for name, task in self.tasks.items():
            out[name] = [
                dict(zip(task.sources, c.relation_weights(), strict=True))
                for c in self.connection_modules(name)
            ]
        return out
