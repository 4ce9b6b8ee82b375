"""eval: the stored model of a version, and the metrics of its tasks on a split of their data."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from dmtcore.errors import (
    DmtError,
)
from dmtcore.hooks.host import PluginHost
from dmtcore.model.multitask import MultiTaskModel
from dmtcore.operations.lifecycle import (
    Notify,
)
from dmtcore.operations.task_data import (
    DataOptions,
    recorded_data_seed,
    specs_for,
    stored_plugins,
)
from dmtcore.runtime.progress import Stage
from dmtcore.store.checkpoint import load_model
from dmtcore.store.directory import Store
from dmtcore.tasks.data import Batches, load_splits, resolve_device
from dmtcore.tasks.names import unknown_name
from dmtcore.tasks.spec import DataRequest
from dmtcore.train.evaluation import evaluate_tasks
from dmtcore.train.loop import (
    TrainSettings,
)


def load_current(
    path: Path, host: PluginHost, version: int | None = None
) -> tuple[MultiTaskModel, dict[str, Any]]:
    """The model of a store's current (or given) version, for eval and predict."""
    store = Store.open(path)
    manifest = store.manifest(version)
    model = load_model(store, manifest, host.kinds)
    if model is None or not manifest["tasks"]:
        raise DmtError(f"store {str(path)!r} has no tasks yet; add one with 'dmt add-task NAME'")
    return model, manifest


def select_tasks(manifest: dict[str, Any], tasks: Sequence[str]) -> list[str]:
    stored = [t["name"] for t in manifest["tasks"]]
    for name in tasks:
        if name not in stored:
            raise unknown_name("task", name, stored, "in this store")
    return list(tasks) or stored


def evaluate_store(
    path: Path,
    host: PluginHost,
    tasks: Sequence[str] = (),
    split: str = "val",
    settings: TrainSettings = TrainSettings(),
    data: DataOptions = DataOptions(),
    notify: Notify | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics of the stored tasks on a split of their data. Each task's factory gets the
    split seed recorded with the task, never `settings.seed`: that seeds torch's RNG only.
    `notify` hears each stage (the CLI prints them); by default nothing is said."""
    notify = notify or (lambda message: None)
    notify(Stage(f"loading store {str(path)!r}"))
    model, manifest = load_current(path, host)
    names = select_tasks(manifest, tasks)
    specs = specs_for(manifest, names, host)
    device = resolve_device(settings.device)
    model.to(device)
    batches = []
    plugins = stored_plugins(manifest)
    seeds = {entry["name"]: recorded_data_seed(entry) for entry in manifest["tasks"]}
    torch.manual_seed(settings.seed)
    for name in names:
        notify(Stage(f"loading the data of {name}"))
        request = DataRequest(data.data_dir, model.input_spec, seeds[name], data.download)
        splits = load_splits(specs[name], request, plugins[name])
        dataset = getattr(splits, split, None)
        if dataset is None:
            raise DmtError(
                f"task {name!r} has no {split!r} split; valid: train, val"
                + (", test" if splits.test else "")
            )
        batches.append(
            Batches(
                specs[name],
                dataset,
                model.input_spec,
                settings.eval_batch_size,
                False,
                device,
                workers=settings.workers,
                split=split,
                plugin=plugins[name],
            )
        )
    notify(Stage(f"evaluating {', '.join(names)} on the {split} split"))
    return evaluate_tasks(model, [specs[n] for n in names], batches, settings.precision)
