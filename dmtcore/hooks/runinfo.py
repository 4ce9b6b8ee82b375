"""The records lifecycle hooks receive: what an operation is, each epoch, and the outcome."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RunInfo:
    """One operation on a store: `operation` is 'add-task' or 'remove-task'."""

    operation: str
    tasks: list[str]
    store_path: Path
    store_name: str
    parent_version: int | None
    params: dict[str, Any]
    tracking_uri: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class EpochReport:
    """One validation point (after an epoch, or every N steps): mean training loss per trained
    task since the last point, validation metrics per task, and connection weights as flat
    `name -> value` pairs (e.g. 'alpha.digits.even.stage1.digits.class')."""

    epoch: int
    train_loss: dict[str, float]
    val_metrics: dict[str, dict[str, float]]
    connection_weights: dict[str, float]
    seconds: float
    is_best: bool
    step: int = 0  # optimiser steps so far
    # Each task's mean loss weight since the last point, where a weighting other than equal
    # trains a group (dmtcore.train.weighting); empty otherwise.
    task_weights: dict[str, float] = field(default_factory=dict)


@dataclass
class RunResult:
    """The committed outcome: the new store version and final metrics per task."""

    version: int
    metrics: dict[str, dict[str, float]]
    manifest_path: Path
    summary: dict[str, Any] = field(default_factory=dict)
