"""The multi-task model: one column, one connection per stage boundary, and one head per task.

Forward for task i (DESIGN.md §1): h_i^0 = x, h_i^l = s_i^l(c_i^{l-1}({h_j^{l-1}} for j in S(i))),
y_i = head_i(h_i^L), or y_i = head_i(c_i^L({h_j^L} for j in S(i))) where the store fuses the last
stage's features into the head (connection option `head_fusion`, DMT Table 6). A task's sources are itself, tasks added before it and the other members of
its jointly trained group. Features only flow from stage l to l+1, so computing the needed tasks
stage by stage does every column's work exactly once per batch, mutual links included.

Modules are keyed by a task's *slot* ('t0', 't1', ...), never by its name: names may contain
dots, which module keys may not, and slots make weight files independent of what users type.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dmtcore.errors import InvalidValueError
from dmtcore.hooks.kinds import BackboneKind, ConnectionKind, split_head_fusion
from dmtcore.model.backbones import Column, InputNormalization
from dmtcore.model.backbones.pretrained import adapt_to_column
from dmtcore.model.connections import (
    ParamGroup,
    SourceList,
    StackedSources,
    TransferConnection,
)
from dmtcore.model.heads import build_head
from dmtcore.tasks.names import InputSpec
from dmtcore.tasks.spec import HeadSpec


@dataclass
class TaskSlot:
    """A task inside the model: its slot key, its source set in order, and its output."""

    name: str
    slot: str
    sources: list[str]
    head: HeadSpec
    num_outputs: int


class TaskConnections(nn.Module):
    """A task's connections: one after every stage but the last, optionally a shortcut that
    merges all of their outputs into the last stage's input (NDDR-CNN-Shortcut), and
    optionally one after the last stage, into the head (`head_fusion`). Without the last two
    the weight keys are exactly those of stores written before they existed."""

    def __init__(
        self,
        stages: list[TransferConnection],
        shortcut: nn.Module | None = None,
        head: TransferConnection | None = None,
    ) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.shortcut = shortcut
        self.head = head

    def fusing(self) -> list[TransferConnection]:
        """The connections that fuse sources, in boundary order (the head's last)."""
        return [*self.stages, *([self.head] if self.head is not None else [])]

    def param_groups(self) -> list[ParamGroup]:
        groups = [g for connection in self.fusing() for g in connection.param_groups()]
        if self.shortcut is not None:
            groups.extend(self.shortcut.param_groups())
        return groups


@dataclass(frozen=True)
class TrainingPlan:
    """Which parts train: task names whose column, connections or head get gradients."""

    columns: frozenset[str] = frozenset()
    connections: frozenset[str] = frozenset()
    heads: frozenset[str] = frozenset()
    # The first N stages of every column in `columns` stay as they are (no gradients, eval
    # mode: their BatchNorm statistics do not move either).
    frozen_stages: int = 0

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
        normalization: dict[str, list[float]] | None = None,
    ) -> None:
        super().__init__()
        self.input_spec = input_spec
        # The input statistics pretrained weights expect, applied once to every input.
        self.normalize = (
            InputNormalization(normalization["mean"], normalization["std"], input_spec.channels)
            if normalization
            else None
        )
        # Where new columns start: None (the backbone's random initialisation), or a function
        # returning the store's initial column (pretrained weights); `initial_weights` names it.
        self.initial_column: Callable[[], dict[str, torch.Tensor]] | None = None
        self.initial_weights: str | None = None
        self.backbone = backbone
        self.backbone_options = backbone_options
        self.connection = connection
        self.connection_options = connection_options
        self.head_fusion, self._kind_options = split_head_fusion(connection_options)
        self.tasks: dict[str, TaskSlot] = {}
        self.columns = nn.ModuleDict()
        self.connections = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        self.plan = TrainingPlan()
        self._frozen: set[str] | None = None  # derived from the plan; see _frozen_tasks
        self._planned_only = False  # only the planned parts are in training mode; see train_mode

    # -- structure -------------------------------------------------------------------------

    def add_task(
        self, name: str, slot: str, sources: Sequence[str], head: HeadSpec, num_outputs: int
    ) -> None:
        """Build a new column, its connections and its head (fresh weights from torch's RNG).

        Sources are tasks already in the model or, for a jointly trained group, the group's
        other members (added right after): `check_sources` verifies a completed group."""
        if name in self.tasks or name not in sources or len(set(sources)) != len(sources):
            raise ValueError(f"bad source set {list(sources)} for task {name!r}")
        column: Column = self.backbone.build(self.input_spec, self.backbone_options)
        if self.initial_column is not None:
            initial = adapt_to_column(
                column.state_dict(), self.initial_column(), self.backbone.name
            )
            column.load_state_dict(initial)
        own = list(sources).index(name)
        options = self._kind_options
        boundaries = column.feature_shapes[:-1]
        stages = [self.connection.build(own, len(sources), shape, options) for shape in boundaries]
        shortcut = None
        if self.connection.build_shortcut is not None and boundaries:
            shortcut = self.connection.build_shortcut(boundaries, options)
        into_head = None
        if self.head_fusion:
            into_head = self.connection.build(own, len(sources), column.out_shape, options)
        self.tasks[name] = TaskSlot(name, slot, list(sources), head, num_outputs)
        self._frozen = None
        self._planned_only = False
        self.columns[slot] = column
        self.connections[slot] = TaskConnections(stages, shortcut, into_head)
        size = (self.input_spec.height, self.input_spec.width)
        self.heads[slot] = build_head(
            head, column.out_shape, num_outputs, size, column.feature_shapes
        )

    def copy_column(self, source: str, target: str) -> None:
        """Start task `target`'s column from task `source`'s trained one (weights and
        BatchNorm statistics; warm start, NDDR and cross-stitch Table 3). The copy shares no
        storage with the source, so training `target` leaves `source` bit-identical."""
        state = self.columns[self.tasks[source].slot].state_dict()
        self.columns[self.tasks[target].slot].load_state_dict(state)

    def check_sources(self) -> None:
        unknown = {s for t in self.tasks.values() for s in t.sources if s not in self.tasks}
        if unknown:
            raise ValueError(f"tasks read unknown sources {sorted(unknown)}")

    def remove_task(self, name: str) -> list[str]:
        """Cut a task out; every connection that read it loses that input. Returns the tasks
        whose features change: those that read it, and those that read one of them."""
        removed = self.tasks.pop(name)
        self._frozen = None
        self._planned_only = False
        for part in (self.columns, self.connections, self.heads):
            del part[removed.slot]
        affected: set[str] = set()
        for task in self.tasks.values():
            if name in task.sources:
                position = task.sources.index(name)
                for connection in self.connection_modules(task.name):
                    connection.drop_source(position)
                task.sources.remove(name)
                affected.add(task.name)
        changed = True
        while changed:  # a group's members read each other: iterate to a fixpoint
            changed = False
            for task in self.tasks.values():
                if task.name not in affected and affected.intersection(task.sources):
                    affected.add(task.name)
                    changed = True
        return [t for t in self.tasks if t in affected]

    def part(self, name: str, part: str) -> nn.Module:
        table = {"column": self.columns, "connections": self.connections, "head": self.heads}
        return table[part][self.tasks[name].slot]

    def connection_modules(self, name: str) -> list[TransferConnection]:
        """A task's fusing connections, one per boundary; the one into the head last."""
        return self.connections[self.tasks[name].slot].fusing()

    def read_shapes(self, name: str) -> list[tuple[int, ...]]:
        """The shapes of a task's stage outputs that connections read (other tasks' included):
        all but the last stage's, and the last one's too where it is fused into the head."""
        shapes = list(self.part(name, "column").feature_shapes)
        return shapes if self.head_fusion else shapes[:-1]

    def closure(self, names: Iterable[str], known: Iterable[str] = ()) -> list[str]:
        """Every task whose features the given tasks need, in model order; the sources of
        `known` tasks (whose features are supplied) are not needed for them."""
        needed: set[str] = set()
        known = set(known)
        stack = list(names)
        while stack:
            name = stack.pop()
            if name not in needed:
                needed.add(name)
                if name not in known:
                    stack.extend(self.tasks[name].sources)
        return [t for t in self.tasks if t in needed]

    def frozen_sources(self, names: Iterable[str]) -> list[str]:
        """The frozen tasks whose features the trained ones among `names` read directly: with
        their stage outputs at hand, no other frozen column needs computing for `names`."""
        frozen = self._frozen_tasks()
        needed = self.closure(names)
        readers = [t for t in needed if t not in frozen]
        read = {s for t in readers for s in self.tasks[t].sources}
        return [t for t in needed if t in frozen and t in read]

    # -- training state --------------------------------------------------------------------

    def configure_training(self, plan: TrainingPlan) -> None:
        """Freeze everything except the parts the plan trains (frozen parts: no grad, eval mode)."""
        self.plan = plan
        self._frozen = None
        self._planned_only = False
        for name in self.tasks:
            for part, trained in self._planned_parts():
                self.part(name, part).requires_grad_(name in trained)
        if plan.frozen_stages:
            for name in plan.columns:
                stages = self.part(name, "column").stages
                if plan.frozen_stages >= len(stages):
                    raise InvalidValueError(
                        f"--freeze-stages {plan.frozen_stages} leaves nothing of {name}'s "
                        f"column to train: it has {len(stages)} stages "
                        f"({', '.join(self.part(name, 'column').stage_names)}); valid: 0 to "
                        f"{len(stages) - 1}"
                    )
                stages[: plan.frozen_stages].requires_grad_(False)

    def _planned_parts(self) -> list[tuple[str, frozenset[str]]]:
        plan = self.plan
        return [("column", plan.columns), ("connections", plan.connections), ("head", plan.heads)]

    def train(self, mode: bool = True) -> MultiTaskModel:
        self._planned_only = False
        return super().train(mode)

    def train_mode(self) -> None:
        """Training mode for the planned parts only: frozen BatchNorm statistics never move.

        Walking every module of a model with many columns costs milliseconds, and training
        switches modes around every validation: once the frozen parts are in eval mode, later
        calls touch only the planned parts."""
        if not self._planned_only:
            self.eval()
        for module in self._planned_modules():
            module.train()
        self._planned_only = True

    def _planned_modules(self) -> list[nn.Module]:
        modules = []
        for part, trained in self._planned_parts():
            for name in trained:
                module = self.part(name, part)
                if part == "column" and self.plan.frozen_stages:
                    modules.extend(module.stages[self.plan.frozen_stages :])
                else:
                    modules.append(module)
        return modules

    def training_modules(self) -> list[nn.Module]:
        """The modules an evaluation must switch to eval mode (and back): after `train_mode`
        only the planned parts, otherwise the whole model."""
        return self._planned_modules() if self._planned_only else [self]

    def param_groups(self, connection_lr_mult: float | None = None) -> list[ParamGroup]:
        """Trainable parameters grouped by learning-rate multiplier and weight decay;
        `connection_lr_mult` overrides the connection kind's own multiplier."""
        groups: list[ParamGroup] = []
        for name in self.tasks:
            if name in self.plan.columns:
                stages = self.part(name, "column").stages[self.plan.frozen_stages :]
                groups.append(ParamGroup(list(stages.parameters()), task=name))
            if name in self.plan.heads:
                groups.append(ParamGroup(list(self.part(name, "head").parameters()), task=name))
            if name in self.plan.connections:
                for group in self.connections[self.tasks[name].slot].param_groups():
                    if connection_lr_mult is not None:
                        group.lr_mult = connection_lr_mult
                    group.task = name
                    groups.append(group)
        return [g for g in groups if g.params]

    def compile_planned(self) -> None:
        """torch.compile, in place, every module that trains and is called on its own (column
        stages, connections, head), so weight names stay as they are. Frozen columns stay
        eager: with the feature cache they run once per sample, and compiling costs more."""
        for name in self.plan.tasks():
            slot = self.tasks[name].slot
            modules: list[nn.Module] = []
            if name in self.plan.columns:
                modules.extend(self.columns[slot].stages[self.plan.frozen_stages :])
            if name in self.plan.connections:
                connections = self.connections[slot]
                modules.extend(connections.fusing())
                if connections.shortcut is not None:
                    modules.append(connections.shortcut)
            if name in self.plan.heads:
                modules.append(self.heads[slot])
            for module in modules:
                module.compile()

    def trained_state(self) -> dict[tuple[str, str], dict[str, torch.Tensor]]:
        """Copies of the planned parts' weights and BatchNorm statistics (best-epoch snapshot)."""
        return {
            (name, part): {
                k: v.detach().clone() for k, v in self.part(name, part).state_dict().items()
            }
            for part, trained in self._planned_parts()
            for name in trained
        }

    def load_trained_state(self, state: dict[tuple[str, str], dict[str, torch.Tensor]]) -> None:
        for (name, part), values in state.items():
            self.part(name, part).load_state_dict(values)

    def _frozen_tasks(self) -> set[str]:
        """Tasks whose features depend on no trainable part: computed without autograd.
        Cached, as every training step asks; structure and plan changes reset it."""
        if self._frozen is None:
            trained = self.plan.tasks()
            self._frozen = {t for t in self.tasks if trained.isdisjoint(self.closure([t]))}
        return self._frozen

    # -- forward ---------------------------------------------------------------------------

    def forward(
        self,
        x: torch.Tensor,
        tasks: Sequence[str] | None = None,
        given: Mapping[str, list[torch.Tensor]] | None = None,
        keep: dict[str, list[torch.Tensor]] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Logits of the requested tasks (all by default), computing each needed column once.

        `given` supplies the stage outputs that connections read (`read_shapes`: all but the
        last stage's, or all with head fusion) of some tasks for this batch, so their columns
        are not run: the feature cache of training. Given as `StackedSources` (the cache's
        own layout), a connection reading exactly those sources besides its own gets them as
        the one stack (`SourceList`). `keep` names tasks whose such outputs to append to its
        lists, to fill that cache."""
        wanted = list(self.tasks) if tasks is None else list(tasks)
        given = given or {}
        if self.normalize is not None:
            x = self.normalize(x)
        if not given.keys().isdisjoint(wanted):
            raise ValueError("tasks whose features are given have no output to compute")
        needed = self.closure(wanted, known=given)
        frozen = self._frozen_tasks() if torch.is_grad_enabled() else set()
        num_stages = len(self.columns[self.tasks[needed[0]].slot].stages) if needed else 0
        read = num_stages if self.head_fusion else num_stages - 1
        stacked = given if isinstance(given, StackedSources) else None
        previous: dict[str, torch.Tensor] = {}
        fused: dict[str, list[torch.Tensor]] = {name: [] for name in needed}
        # Region heads read every stage of their own column (a feature pyramid), not the last.
        stages_read = {name: [] for name in wanted if self._reads_stages(name)}
        for stage in range(num_stages):
            current: dict[str, torch.Tensor] = {}
            for name in needed:
                if name in given:
                    if stage < read and stacked is None:  # a stack is read where it lies
                        current[name] = given[name][stage]
                    continue
                task = self.tasks[name]
                with torch.no_grad() if name in frozen else nullcontext():
                    if stage == 0:
                        inputs = x
                    else:
                        connections = self.connections[task.slot]
                        sources = _sources(task, previous, stacked, stage - 1)
                        inputs = connections.stages[stage - 1](sources)
                        if connections.shortcut is not None:
                            fused[name].append(inputs)
                            if stage == num_stages - 1:
                                inputs = connections.shortcut(fused[name])
                    current[name] = self.columns[task.slot].stages[stage](inputs)
                if name in stages_read:
                    stages_read[name].append(current[name])
                if keep is not None and name in keep and stage < read:
                    keep[name].append(current[name])
            previous = current
        return {
            name: self._output(name, previous, stacked, read - 1, stages_read.get(name))
            for name in wanted
        }

    def _reads_stages(self, name: str) -> bool:
        return bool(getattr(self.heads[self.tasks[name].slot], "reads_stages", False))

    def _output(
        self,
        name: str,
        last: dict[str, torch.Tensor],
        stacked: StackedSources | None = None,
        stage: int = 0,
        stages: list[torch.Tensor] | None = None,
    ) -> Any:
        """A task's head on its last features, fused with its sources' where the store fuses
        (`stacked`, `stage`: given sources, and the position of the last stage among them); a
        region head (`stages` given) on all its stage outputs, the last one fused so."""
        task = self.tasks[name]
        into_head = self.connections[task.slot].head
        features = (
            last[name] if into_head is None else into_head(_sources(task, last, stacked, stage))
        )
        if stages is not None:
            return self.heads[task.slot]([*stages[:-1], features])
        return self.heads[task.slot](features)

    def relation_weights(self) -> dict[str, list[dict[str, float]]]:
        """For every task, per stage boundary, how much it draws from each source."""
        out: dict[str, list[dict[str, float]]] = {}
        for name, task in self.tasks.items():
            out[name] = [
                dict(zip(task.sources, c.relation_weights(), strict=True))
                for c in self.connection_modules(name)
            ]
        return out


def _sources(
    task: TaskSlot,
    computed: dict[str, torch.Tensor],
    stacked: StackedSources | None,
    stage: int,
) -> list[torch.Tensor]:
    """A connection's input at `stage`: its sources' outputs in its source order, from those
    computed in this pass or from the given stack; where the stack holds exactly its other
    sources, in order, the stack itself comes along (`SourceList`)."""
    if stacked is None:
        return [computed[s] for s in task.sources]
    if [s for s in task.sources if s != task.name] == stacked.sources:
        position = task.sources.index(task.name)
        return SourceList(computed[task.name], position, stacked.stages[stage])
    return [computed[s] if s in computed else stacked.feature(s, stage) for s in task.sources]


@contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode for the duration, then every switched module back to its own mode (a model
    training only some parts comes back exactly so)."""
    switch = getattr(model, "training_modules", None)
    modules = switch() if switch is not None else [model]
    modes = [m.training for m in modules]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for module, mode in zip(modules, modes, strict=True):
            module.train(mode)
