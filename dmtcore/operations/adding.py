"""add-task and train: new columns connected to every stored task (DMT §4.1), old tasks frozen,
each new column started from fresh weights or a stored task's trained column (--init-from).
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from dmtcore.errors import (
    ConflictError,
    InvalidValueError,
    StoreError,
)
from dmtcore.hooks.host import PluginHost
from dmtcore.hooks.runinfo import RunResult
from dmtcore.model.multitask import MultiTaskModel, TrainingPlan
from dmtcore.operations.init import DEFAULT_BACKBONE, DEFAULT_CONNECTION, init_store
from dmtcore.operations.lifecycle import (
    Notify,
    commit_weights,
    committing,
    dense_previews,
    describe_store,
    epoch_hook,
    kept_features,
    operation_record,
    run_info,
    stderr,
    tracked,
    world_and_device,
    writer,
)
from dmtcore.operations.task_data import (
    DataOptions,
    make_target,
)
from dmtcore.operations.task_settings import training_record
from dmtcore.runtime.distributed import World
from dmtcore.runtime.faults import crash_point
from dmtcore.runtime.progress import Stage
from dmtcore.store.checkpoint import empty_model, load_model
from dmtcore.store.directory import Store
from dmtcore.tasks.metrics import delta_m
from dmtcore.tasks.names import InputSpec, unknown_name
from dmtcore.tasks.spec import TaskSpec
from dmtcore.train.loop import (
    Target,
    TrainSettings,
    connection_lr_mult_params,
    fit,
    joint_mode,
)
from dmtcore.train.weighting import Weighting, make_weighting

INIT_NONE, INIT_AUTO = "none", "auto"  # add-task --init-from: fresh weights, or pick a column


def add_task(
    path: Path,
    name: str,
    host: PluginHost,
    settings: TrainSettings = TrainSettings(),
    data: DataOptions = DataOptions(),
    notify: Notify = stderr,
    init_from: str = INIT_NONE,
) -> RunResult:
    """Train task `name` as a new column connected to every existing one; old tasks stay frozen.
    A missing store is created with the defaults (and removed again if the operation fails).
    `init_from` starts the new column from a stored task's column (see `warm_start`)."""
    return train_tasks(path, [name], host, settings, data, notify=notify, init_from=init_from)


def baseline_metrics(path: Path, names: Sequence[str]) -> dict[str, Any]:
    """The recorded validation metrics of `names` in the store at `path`, to measure Δm
    against (`train_tasks(baseline=...)`): {"path", "version", "metrics": {task: metrics}}.
    A missing store or task is refused naming what the store holds."""
    store = Store.open(path)
    manifest = store.manifest()
    held = {t["name"]: t["metrics"] for t in manifest["tasks"]}
    missing = [n for n in names if n not in held]
    if missing:
        raise InvalidValueError(
            f"store {str(path)!r} (compared with) has no task {missing[0]!r}; it holds "
            f"{', '.join(held) or 'no tasks'}: train the same tasks there first, e.g. each alone "
            f"with 'dmt init {path} --connection none' and 'dmt add-task {' '.join(names)} "
            f"--store {path}'"
        )
    return {
        "path": str(path),
        "version": manifest["version"],
        "metrics": {n: held[n] for n in names},
    }


def train_tasks(
    path: Path,
    names: Sequence[str],
    host: PluginHost,
    settings: TrainSettings = TrainSettings(),
    data: DataOptions = DataOptions(),
    connection: str | None = None,
    notify: Notify = stderr,
    init_from: str = INIT_NONE,
    baseline: dict[str, Any] | None = None,
) -> RunResult:
    """Train a group of new tasks together (DMT §4.1): each gets a column connected to every
    existing task and to the other members. Tasks that share their images train in one pass
    per batch, the others take turns, each on its own data and loss (`joint_mode`, recorded in
    the version and the run). With one task this is add-task. `connection` picks the kind when the
    store is created here, and must match the store's kind otherwise. `baseline`
    (`baseline_metrics`): the trained tasks' Δm against it is recorded in the version and
    the run. A weighting other than equal (settings.weighting) combines the group's losses."""
    names = list(names)
    if not names or len(set(names)) != len(names):
        raise InvalidValueError(f"give one or more distinct tasks to train, got {names}")
    specs = [host.kinds.task(name) for name in names]
    # An unknown method or option fails here, before a store is made or data is read.
    weighting = make_weighting(
        host.kinds, settings.weighting, settings.weighting_options, names, settings.seed
    )
    world, device = world_and_device(settings)
    created = not Path(path).exists()
    if world.is_main and not Store.exists(path):
        kind = connection or DEFAULT_CONNECTION
        # Pixel- and region-level tasks need spatial features: the default column's spatial form.
        spatial = any(spec.dense or spec.region for spec in specs)
        column_options = {"spatial": True} if spatial else {}
        try:
            init_store(path, host, connection=kind, backbone_options=column_options)
        except StoreError:
            if not Store.exists(path):  # not a race with another init: a real problem
                raise
        else:
            spatial = " spatial=true" if column_options else ""
            notify(
                f"initialised a new store at {path} (backbone {DEFAULT_BACKBONE}{spatial}, "
                f"connection {kind}, input {InputSpec.from_shape(specs[0].input_shape)} from "
                f"{names[0]})"
            )
    world.barrier()  # the other ranks open the store rank 0 made sure exists
    store = Store.open(path)
    operation = "add-task" if len(names) == 1 else "train"
    with writer(store, world, f"{operation} {' '.join(names)}"):
        try:
            return _train_tasks(
                store,
                specs,
                host,
                settings,
                data,
                device,
                connection,
                operation,
                notify,
                world,
                init_from,
                weighting,
                baseline,
            )
        except BaseException:
            # A store this command created, still empty, goes again (under the lock, so no other
            # writer can have used it); anything committed or pre-existing stays.
            if world.is_main and created and store.current_version() == 1:
                shutil.rmtree(path, ignore_errors=True)
                notify(f"removed the store created at {path}: its first tasks could not be trained")
            raise


def _train_tasks(
    store: Store,
    specs: list[TaskSpec],
    host: PluginHost,
    settings: TrainSettings,
    data: DataOptions,
    device: torch.device,
    connection: str | None,
    operation: str,
    notify: Notify,
    world: World,
    init_from: str = INIT_NONE,
    weighting: Weighting | None = None,
    baseline: dict[str, Any] | None = None,
) -> RunResult:
    names = [spec.name for spec in specs]
    manifest = store.manifest()
    stored = [t["name"] for t in manifest["tasks"]]
    for name in names:
        if name in stored:
            raise ConflictError(
                f"task {name!r} is already in store {str(store.path)!r} (version {manifest['version']}); "
                f"remove it first with 'dmt remove-task {name}'"
            )
    kind = manifest["connection"]["name"]
    if connection is not None and connection != kind:
        raise InvalidValueError(
            f"store {str(store.path)!r} uses connection kind {kind!r}, not {connection!r}; "
            "a store has one kind: create another store for it"
        )
    check_init_from(init_from, stored, str(store.path))
    input_spec = InputSpec.from_shape(manifest["input_spec"] or specs[0].input_shape)
    notify(Stage(f"loading {describe_store(store, manifest)}"))
    model = load_model(store, manifest, host.kinds) or empty_model(
        manifest, host.kinds, input_spec, store
    )
    torch.manual_seed(settings.seed)  # what a factory draws from torch's RNG, then the heads
    targets = []
    for spec in specs:
        notify(Stage(f"loading the data of {spec.name}"))
        owner = host.kinds.owner("task", spec.name)
        targets.append(make_target(spec, input_spec, settings, data, device, world, owner))
        for note in targets[-1].notes:
            notify(note)
    crash_point("data-loaded")
    torch.manual_seed(settings.seed)
    slots = {}
    for index, spec in enumerate(specs):
        sources = [spec.name] if model.connection.isolated else [*stored, *names]
        slots[spec.name] = f"t{manifest['next_slot'] + index}"
        model.add_task(spec.name, slots[spec.name], sources, spec.head, spec.num_outputs)
    model.check_sources()
    model.to(device)  # the probe of --init-from auto reads the data on the device
    init_record = warm_start(model, targets, stored, init_from, kind, notify)
    group = frozenset(names)
    model.configure_training(TrainingPlan(group, group, group, settings.freeze_stages))
    params = {"tasks": ",".join(names), **asdict(settings), "device": str(device)}
    params.update(connection_lr_mult_params(model, settings))
    params["processes"] = world.size
    params["joint_mode"] = joint_mode(targets, settings)[0]  # as run; checked before the run
    params["init_from"] = ",".join(c or INIT_NONE for c in init_record["columns"].values())
    params["init_from_requested"] = init_from
    run = run_info(operation, names, store, manifest, params)
    stored_features = kept_features(store, manifest, model, settings, device, world)

    def work() -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
        result = fit(
            model,
            targets,
            settings,
            epoch_hook(host, run, world),
            notify,
            world,
            kept=stored_features,
            weighting=weighting,
        )
        run.extra["previews"] = dense_previews(model, targets, notify, world)
        new = copy.deepcopy(manifest)
        new["input_spec"] = list(input_spec.shape)
        new["next_slot"] += len(specs)
        for spec, target in zip(specs, targets, strict=True):
            sources = model.tasks[spec.name].sources
            entry = task_entry(
                spec, host, slots[spec.name], sources, result.metrics[spec.name], settings.seed
            )
            entry["training"] = training_record(settings, target)
            new["tasks"].append(entry)
        new["operation"] = operation_record(operation, names, settings, result, result.metrics)
        new["operation"]["init_from"] = init_record
        if baseline is not None:
            new["operation"]["delta_m"] = {
                "value": round(delta_m(result.metrics, baseline["metrics"]), 4),
                "baseline": baseline["path"],
                "baseline_version": baseline["version"],
            }
        notify(Stage(committing(store)))
        commit_weights(store, model, new, set(names), write=world.is_main)
        return new, result.metrics

    return tracked(host, run, store, work, notify, world, stored_features)


def task_entry(
    spec: TaskSpec,
    host: PluginHost,
    slot: str,
    sources: list[str],
    metrics: dict[str, float],
    seed: int,
) -> dict[str, Any]:
    return {
        "name": spec.name,
        "slot": slot,
        "plugin": host.kinds.owner("task", spec.name),
        "sources": sources,
        **spec.describe(),
        "data_seed": seed,
        "metrics": metrics,
        "weights": {},
    }


def check_init_from(init_from: str, stored: Sequence[str], where: str) -> None:
    """Before anything is loaded: a named column must be a stored task's (unknown name
    otherwise); `none` and `auto` always do (auto starts fresh in an empty store)."""
    if init_from in (INIT_NONE, INIT_AUTO) or init_from in stored:
        return
    if not stored:
        raise unknown_name(
            "task",
            init_from,
            stored,
            f"to start from: store {where!r} has no tasks yet (use --init-from none or auto)",
        )
    raise unknown_name("task", init_from, stored, f"to start from in store {where!r}")


def warm_start(
    model: MultiTaskModel,
    targets: Sequence[Target],
    stored: Sequence[str],
    init_from: str,
    kind: str,
    notify: Notify,
) -> dict[str, Any]:
    """Start each new column from a stored task's trained column (weights and BatchNorm
    statistics; connections and heads stay fresh), say which on stderr, and return the
    record for the manifest: requested value, column per new task (None: fresh), and why.
    `auto` warm-starts only under the connection kinds where that was measured to help."""
    from dmtcore.train.warm_start import WARM_KINDS, choose_column

    record: dict[str, Any] = {"requested": init_from, "columns": {}, "reasons": {}}
    for target in targets:
        name = target.spec.name
        if init_from == INIT_NONE or not stored:
            column, reason = None, "requested" if init_from == INIT_NONE else "no stored task"
        elif init_from == INIT_AUTO and kind not in WARM_KINDS:
            column = None
            reason = f"auto: a warm start was measured to help ttc transfer, not {kind}'s"
        elif init_from == INIT_AUTO:
            choice = choose_column(model, stored, target)
            column, reason = choice.column, f"auto: {choice.reason}"
            if choice.scores:
                record.setdefault("probe", {})[name] = choice.scores
        else:
            column, reason = init_from, "requested"
        if column is not None:
            model.copy_column(column, name)
            notify(f"{name}'s column starts from the trained column of {column} ({reason})")
        elif model.initial_weights:
            notify(
                f"{name}'s column starts from the pretrained weights {model.initial_weights} ({reason})"
            )
        else:
            notify(f"{name}'s column starts from fresh weights ({reason})")
        record["columns"][name], record["reasons"][name] = column, reason
    return record
