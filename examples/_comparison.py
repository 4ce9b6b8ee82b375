"""What the paper-table examples (`dense_tables.py`, `detection_table6.py`) share: the
hard-sharing baseline scored on a test split, the mean and spread over seeds, the printed
table and the orderings of methods. Imported as a sibling module (`import _comparison`), as
the benchmarks import `_common`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from dmtcore.hooks.host import PluginHost
from dmtcore.model.baselines import HardSharingModel
from dmtcore.operations import DataOptions, make_target
from dmtcore.tasks.data import Batches, resolve_device
from dmtcore.tasks.names import InputSpec
from dmtcore.tasks.spec import DataRequest
from dmtcore.train.evaluation import evaluate
from dmtcore.train.loop import TrainSettings, fit


def hard_sharing_scores(
    host: PluginHost,
    tasks: Sequence[str],
    spec: InputSpec,
    backbone_name: str,
    options: dict[str, Any],
    settings: TrainSettings,
) -> dict[str, dict[str, float]]:
    """One trunk shared by `tasks`, a head each, trained jointly; each task's test metrics."""
    data = DataOptions()
    specs = [host.kinds.task(t) for t in tasks]
    device = resolve_device(settings.device)
    targets = [make_target(s, spec, settings, data, device) for s in specs]
    torch.manual_seed(settings.seed)
    backbone = host.kinds.backbone(backbone_name)
    model = HardSharingModel(spec, backbone, backbone.resolve_options(options), specs).to(device)
    fit(model, targets, settings)
    scores = {}
    for task_spec in specs:
        test = task_spec.datasets(DataRequest(data.data_dir, spec, settings.seed)).test
        batches = Batches(task_spec, test, spec, settings.batch_size, False, device, split="test")
        scores[task_spec.name] = evaluate(model, task_spec, batches)
    return scores


def average(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over seeds of each column and of the wall time, the sd of each column."""
    values = [run["values"] for run in runs]
    return {
        "values": [sum(column) / len(column) for column in zip(*values, strict=True)],
        "spread": [standard_deviation(column) for column in zip(*values, strict=True)],
        "seconds": sum(run["seconds"] for run in runs) / len(runs),
        "unchanged": all(run.get("unchanged", True) for run in runs),
    }


def standard_deviation(values: Sequence[float]) -> float:
    """The sample standard deviation; 0 for a single run."""
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def ordering(values: dict[str, Sequence[float | None]], column: int, higher_is_better: bool) -> str:
    """Methods from best to worst on one column ("a 45.2 > b 44.9")."""
    ranked = sorted(values, key=lambda m: values[m][column] or 0.0, reverse=higher_is_better)
    return " > ".join(f"{m} {values[m][column]:.1f}" for m in ranked)


def print_rows(header: list[str], rows: list[list[str]]) -> None:
    """A plain-text table, columns padded to their widest cell, a rule under the header."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for index, row in enumerate([header, *rows]):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if index == 0:
            print("  ".join("-" * w for w in widths))
