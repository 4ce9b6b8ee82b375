"""How each task was trained, recorded with the task and reused where it trains again.

A task's entry in the manifest keeps the settings it was trained with (`training`: epochs,
batch size, learning rate, optimiser, ...). remove-task's reconnection retrains the tasks
that read the removed one: each with its own recorded settings, unless the command line
names a setting, which then holds for every task. Settings a step shares (epochs, optimiser,
precision, weighting, ...) that the reconnected tasks recorded differently take the command
line's value, said in a note; the learning rate stays each task's own (its parameter
groups), and batch size and class balance are each task's own loader.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from dmtcore.train.loop import Target, TrainSettings

# The settings that describe how a task was trained (not where or how fast it ran).
TASK_SETTINGS = (
    "epochs",
    "batch_size",
    "lr",
    "optimizer",
    "balance",
    "precision",
    "connection_lr_mult",
    "bn_recalibration",
    "weighting",
    "weighting_options",
)
PER_TASK = ("batch_size", "balance", "lr")  # each task keeps its own in a reconnection


def training_record(settings: TrainSettings, target: Target) -> dict[str, Any]:
    """The task's `training` entry: the settings as it trained (its batch size as chosen)."""
    record = {name: getattr(settings, name) for name in TASK_SETTINGS}
    record["batch_size"] = target.train.batch_size
    return record


def task_settings(
    settings: TrainSettings, recorded: dict[str, Any] | None, given: Iterable[str]
) -> TrainSettings:
    """`settings` with the task's recorded values for every setting the command line did
    not give (`given`: the names it did). A task recorded before settings were kept per
    task (no `training`) takes the command's settings."""
    given = set(given)
    kept = {
        name: value
        for name, value in (recorded or {}).items()
        if name in TASK_SETTINGS and name not in given
    }
    return dataclasses.replace(settings, **kept)


def group_settings(
    settings: TrainSettings, per_task: dict[str, TrainSettings]
) -> tuple[TrainSettings, dict[str, TrainSettings], list[str]]:
    """The settings of one run over several tasks' own: where they all agree, their value;
    where they differ, the command's (`settings`), said in a note. Also what each task then
    trains with: the run's settings with its own batch size, balance and learning rate."""
    shared: dict[str, Any] = {}
    notes = []
    for name in TASK_SETTINGS:
        if name in PER_TASK or not per_task:
            continue
        values = {task: getattr(s, name) for task, s in per_task.items()}
        if len({repr(v) for v in values.values()}) == 1:
            shared[name] = next(iter(values.values()))
        else:
            used = getattr(settings, name)
            each = ", ".join(f"{task} {value}" for task, value in values.items())
            notes.append(
                f"the tasks were trained with different {name.replace('_', ' ')} ({each}): "
                f"reconnecting them with {used}"
            )
    run = dataclasses.replace(settings, **shared)
    used = {
        task: dataclasses.replace(run, **{name: getattr(s, name) for name in PER_TASK})
        for task, s in per_task.items()
    }
    return run, used, notes


def described(per_task: dict[str, TrainSettings], targets: dict[str, Target]) -> dict[str, Any]:
    """Which settings each task used, for the operation's record."""
    return {task: training_record(s, targets[task]) for task, s in per_task.items()}
