"""The operations users run on a store: init, add-task, remove-task, eval, predict.

Each mutation validates everything it can before training, holds the writer lock, reports to
the lifecycle hooks, and commits exactly one new version at the very end; any failure before
that (bad data, NaN loss, Ctrl-C) leaves the store as it was.
"""

from __future__ import annotations

import copy
import hashlib
import shutil
import sys
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from dmtcore import interrupts
from dmtcore.checkpoint import empty_model, load_model, serialise_weights
from dmtcore.data import Batches, load_splits, resolve_device
from dmtcore.distributed import World, current_world, device_name, join
from dmtcore.errors import (
    ConflictError,
    DataError,
    DmtError,
    InvalidValueError,
    PluginError,
    StoreError,
    first_line,
)
from dmtcore.evaluation import evaluate, evaluate_tasks
from dmtcore.faults import crash_point
from dmtcore.kept_features import KeptFeatures, column_keys
from dmtcore.manifest import new_manifest
from dmtcore.model import MultiTaskModel, TrainingPlan
from dmtcore.names import InputSpec, unknown_name
from dmtcore.plugins import PluginHost
from dmtcore.progress import Stage
from dmtcore.runinfo import RunInfo, RunResult
from dmtcore.store import Store
from dmtcore.taskspec import DataRequest, TaskSpec, higher_is_better
from dmtcore.training import (
    FitResult,
    Target,
    TrainSettings,
    connection_lr_mult_params,
    fit,
    joint_mode,
)

DEFAULT_BACKBONE = "dmt-cnn"
DEFAULT_CONNECTION = "ttc"
INIT_NONE, INIT_AUTO = "none", "auto"  # add-task --init-from: fresh weights, or pick a column
Notify = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


@dataclass(frozen=True)
class DataOptions:
    """Where task data lives; `download` lets a plugin fetch data (never done otherwise)."""

    data_dir: Path = Path("data")
    download: bool = False


def init_store(
    path: Path,
    host: PluginHost,
    input_spec: InputSpec | None = None,
    backbone: str = DEFAULT_BACKBONE,
    connection: str = DEFAULT_CONNECTION,
    connection_options: dict[str, Any] | None = None,
    name: str | None = None,
    backbone_options: dict[str, Any] | None = None,
    model_name: str | None = None,
) -> Store:
    """Create an empty store. Without `input_spec`, the first task's native shape fixes it."""
    backbone_kind = host.registry.backbone(backbone)
    connection_kind = host.registry.connection(connection)
    column_options = backbone_kind.resolve_options(backbone_options)
    options = connection_kind.resolve_options(connection_options, backbone, column_options)
    try:  # trial builds check the option values before anything is written
        connection_kind.build(0, 2, (4, 2, 2), options)
        backbone_kind.build(input_spec or InputSpec(3, 32, 32), column_options)
    except DmtError:
        raise
    except Exception as exc:
        raise InvalidValueError(
            f"{backbone!r} with {connection!r} rejected the options given: {type(exc).__name__}: {exc}"
        ) from exc
    manifest = new_manifest(
        name or Path(path).resolve().name,
        list(input_spec.shape) if input_spec else None,
        {"name": backbone, "options": column_options},
        {"name": connection, "options": options},
        model_name,
    )
    return Store.create(Path(path), manifest)


def make_target(
    spec: TaskSpec,
    input_spec: InputSpec,
    settings: TrainSettings,
    data: DataOptions,
    device: torch.device,
    world: World = World(),
    plugin: str | None = None,
    data_seed: int | None = None,
) -> Target:
    """Load a task's splits and check their first batches, before anything trains (later
    batches are checked as they are read; messages name `plugin`, the task's). Training
    batches are this rank's share; every rank validates on the whole validation split.
    The factory gets `data_seed` (a stored task's, see `recorded_data_seed`), or the
    run's seed for a task trained now; shuffling always follows the run's seed."""
    seed = settings.seed if data_seed is None else data_seed
    request = DataRequest(data.data_dir, input_spec, seed, data.download)
    splits = load_splits(spec, request, plugin)
    generator = torch.Generator().manual_seed(settings.seed)
    common = {
        "workers": settings.workers,
        "declared_deterministic": splits.deterministic,
        "channels_last": settings.channels_last,
        "plugin": plugin,
    }
    train = Batches(
        spec,
        splits.train,
        input_spec,
        settings.batch_size,
        True,
        device,
        generator,
        balance=settings.balance,
        shard=world.shard,
        **common,
    )
    val = Batches(
        spec, splits.val, input_spec, settings.batch_size, False, device, split="val", **common
    )
    train.validate()
    val.validate()
    return Target(spec, train, val)


def recorded_data_seed(entry: dict[str, Any]) -> int:
    """The seed a stored task's dataset factory was given when the task was trained. Every
    later call (eval, remove-task) hands it the same one, so that a factory which splits by
    `request.seed` serves the same train/val split again: a different seed would evaluate
    on samples the task trained on. Stores written before it was recorded were trained and
    evaluated with the default seed as far as anything later could tell: 0."""
    return int(entry.get("data_seed", 0))


def _task_entry(
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
        "plugin": host.registry.owner("task", spec.name),
        "sources": sources,
        **spec.describe(),
        "data_seed": seed,
        "metrics": metrics,
        "weights": {},
    }


def _tracked(
    host: PluginHost,
    run: RunInfo,
    store: Store,
    work: Callable[[], tuple[dict[str, Any], dict[str, dict[str, float]]]],
    notify: Notify = _stderr,
    world: World = World(),
    kept: KeptFeatures | None = None,
) -> RunResult:
    """Run `work` (train, then return the manifest to commit and final metrics) between the
    lifecycle hooks. Before the commit any failure is reported to the hooks and re-raised,
    nothing committed; after it, the version stands and a failing hook is only a warning.
    Under torchrun only rank 0 reports and commits; the other ranks wait for its commit.
    Features computed to be `kept` are written after the commit, and only then."""
    if not world.is_main:
        manifest, metrics = work()
        world.barrier()
        version = store.current_version()
        return RunResult(version, metrics, store.version_path(version), manifest["operation"])
    host.hook.dmt_run_started(run=run)
    try:
        manifest, metrics = work()
        interrupts.check()  # a stop asked for during the last steps: do not commit
        version = store.commit(manifest)
    except BaseException as exc:
        try:
            store.remove_unfinished_writes()  # weight files of a commit that never happened
        except Exception as cleanup_error:
            notify(f"warning: could not clean up the unfinished write: {cleanup_error}")
        try:
            host.hook.dmt_run_failed(run=run, error=exc)
        except Exception as hook_error:  # never hide the real failure behind a tracking one
            notify(f"warning: could not report the failed run: {hook_error}")
        raise
    if kept is not None:
        try:
            kept.flush()
        except (OSError, StoreError) as exc:
            notify(f"warning: version {version} is committed, but keeping features failed: {exc}")
    world.barrier()
    result = RunResult(version, metrics, store.version_path(version), manifest["operation"])
    try:
        host.hook.dmt_run_finished(run=run, result=result)
    except (Exception, KeyboardInterrupt) as exc:
        notify(f"warning: version {version} is committed, but reporting it failed: {exc!r}")
    return result


def _run_info(
    operation: str, tasks: list[str], store: Store, manifest: dict[str, Any], params: dict[str, Any]
) -> RunInfo:
    return RunInfo(
        operation=operation,
        tasks=tasks,
        store_path=store.path,
        store_name=manifest["name"],
        parent_version=manifest["version"],
        params={
            "backbone": manifest["backbone"]["name"],
            "connection": manifest["connection"]["name"],
            **{f"connection.{k}": v for k, v in manifest["connection"]["options"].items()},
            **params,
        },
    )


def add_task(
    path: Path,
    name: str,
    host: PluginHost,
    settings: TrainSettings = TrainSettings(),
    data: DataOptions = DataOptions(),
    notify: Notify = _stderr,
    init_from: str = INIT_NONE,
) -> RunResult:
    """Train task `name` as a new column connected to every existing one; old tasks stay frozen.
    A missing store is created with the defaults (and removed again if the operation fails).
    `init_from` starts the new column from a stored task's column (see `warm_start`)."""
    return train_tasks(path, [name], host, settings, data, notify=notify, init_from=init_from)


def train_tasks(
    path: Path,
    names: Sequence[str],
    host: PluginHost,
    settings: TrainSettings = TrainSettings(),
    data: DataOptions = DataOptions(),
    connection: str | None = None,
    notify: Notify = _stderr,
    init_from: str = INIT_NONE,
) -> RunResult:
    """Train a group of new tasks together (DMT §4.1): each gets a column connected to every
    existing task and to the other members. Tasks that share their images train in one pass
    per batch, the others take turns, each on its own data and loss (`joint_mode`, recorded in
    the version and the run). With one task this is add-task. `connection` picks the kind when the
    store is created here, and must match the store's kind otherwise."""
    names = list(names)
    if not names or len(set(names)) != len(names):
        raise InvalidValueError(f"give one or more distinct tasks to train, got {names}")
    specs = [host.registry.task(name) for name in names]
    world, device = _world_and_device(settings)
    created = not Path(path).exists()
    if world.is_main and not Store.exists(path):
        kind = connection or DEFAULT_CONNECTION
        # Pixel-level tasks need spatial features: the default column in its spatial form.
        column_options = {"spatial": True} if any(spec.dense for spec in specs) else {}
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
    with _writer(store, world, f"{operation} {' '.join(names)}"):
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
    notify(Stage(f"loading {_describe_store(store, manifest)}"))
    model = load_model(store, manifest, host.registry) or empty_model(
        manifest, host.registry, input_spec
    )
    torch.manual_seed(settings.seed)  # what a factory draws from torch's RNG, then the heads
    targets = []
    for spec in specs:
        notify(Stage(f"loading the data of {spec.name}"))
        owner = host.registry.owner("task", spec.name)
        targets.append(make_target(spec, input_spec, settings, data, device, world, owner))
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
    model.configure_training(TrainingPlan(group, group, group))
    params = {"tasks": ",".join(names), **asdict(settings), "device": str(device)}
    params.update(connection_lr_mult_params(model, settings))
    params["processes"] = world.size
    params["joint_mode"] = joint_mode(targets, settings)[0]  # as run; checked before the run
    params["init_from"] = ",".join(c or INIT_NONE for c in init_record["columns"].values())
    params["init_from_requested"] = init_from
    run = _run_info(operation, names, store, manifest, params)
    stored_features = kept_features(store, manifest, model, settings, device, world)

    def work() -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
        result = fit(
            model,
            targets,
            settings,
            _epoch_hook(host, run, world),
            notify,
            world,
            kept=stored_features,
        )
        run.extra["previews"] = _dense_previews(model, targets, notify, world)
        new = copy.deepcopy(manifest)
        new["input_spec"] = list(input_spec.shape)
        new["next_slot"] += len(specs)
        for spec in specs:
            sources = model.tasks[spec.name].sources
            new["tasks"].append(
                _task_entry(
                    spec, host, slots[spec.name], sources, result.metrics[spec.name], settings.seed
                )
            )
        new["operation"] = _operation(operation, names, settings, result, result.metrics)
        new["operation"]["init_from"] = init_record
        notify(Stage(_committing(store)))
        _commit_weights(store, model, new, set(names), write=world.is_main)
        return new, result.metrics

    return _tracked(host, run, store, work, notify, world, stored_features)


def kept_features(
    store: Store,
    manifest: dict[str, Any],
    model: MultiTaskModel,
    settings: TrainSettings,
    device: torch.device,
    world: World,
) -> KeptFeatures | None:
    """The store's features of frozen columns kept across operations, for this one; None when
    turned off (--kept-features-mb 0), with the feature cache off, or under torchrun (rank 0
    alone writes the store, and the others would read what it is writing)."""
    if settings.kept_features_mb <= 0 or settings.feature_cache == "off" or world.size > 1:
        return None
    context = (
        f"torch {torch.__version__}, {device.type}, channels_last {settings.channels_last}, "
        f"head_fusion {model.head_fusion}"
    )
    sources = {name: list(model.tasks[name].sources) for name in model.tasks}
    keys = column_keys(manifest, sources, context)
    return KeptFeatures(store, keys, int(settings.kept_features_mb * 2**20))


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
    from dmtcore.warm_start import WARM_KINDS, choose_column

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
        else:
            notify(f"{name}'s column starts from fresh weights ({reason})")
        record["columns"][name], record["reasons"][name] = column, reason
    return record


def _world_and_device(settings: TrainSettings) -> tuple[World, torch.device]:
    """Join torchrun's process group, if any, on the device this rank trains on."""
    device = resolve_device(device_name(settings.device, current_world()))
    return join(device.type), device


def _writer(store: Store, world: World, command: str) -> Any:
    """The writer lock; under torchrun rank 0 holds it for all ranks."""
    return store.writer(command) if world.is_main else nullcontext()


def _epoch_hook(host: PluginHost, run: RunInfo, world: World) -> Callable[[Any], None]:
    """Epoch reports go to the lifecycle hooks (MLflow) from rank 0 only."""
    if not world.is_main:
        return lambda report: None
    return lambda report: host.hook.dmt_epoch_end(run=run, report=report)


def _operation(
    kind: str,
    tasks: list[str],
    settings: TrainSettings,
    result: FitResult | None,
    metrics: dict[str, Any],
) -> dict[str, Any]:
    return {
        "name": kind,
        "tasks": tasks,
        "settings": asdict(settings),
        "best_epoch": result.best_epoch if result else None,
        "metrics": metrics,
        "feature_cache": result.feature_cache if result else {},
        "bn_recalibrated": result.bn_recalibrated if result else False,
        "connection_lr_mult": result.connection_lr_mult if result else None,
        "joint_mode": result.joint_mode if result else None,
    }


def _commit_weights(
    store: Store,
    model: MultiTaskModel,
    manifest: dict[str, Any],
    trained: set[str],
    write: bool = True,
) -> None:
    """Write the blobs and relation weights of every task into `manifest` (blobs only if
    `write`: rank 0 alone writes). Frozen tasks must serialise to the very blobs they had: if
    one did not, something changed an old task, and nothing at all is written."""
    blobs = {
        name: {part: (hashlib.sha256(data).hexdigest(), data) for part, data in parts.items()}
        for name, parts in serialise_weights(model).items()
    }
    relations = model.relation_weights()
    for task in manifest["tasks"]:
        refs = {part: {"sha256": sha256} for part, (sha256, _) in blobs[task["name"]].items()}
        if task["name"] not in trained and task["weights"] and task["weights"] != refs:
            raise StoreError(f"refusing to commit: the frozen task {task['name']!r} changed")
        task["weights"] = refs
        task["relations"] = relations[task["name"]]
    if not write:
        return
    for parts in blobs.values():
        for sha256, data in parts.values():
            store.write_blob(data, sha256)


def task_from_recipe(
    host: PluginHost, name: str, recipe: dict[str, Any]
) -> tuple[TaskSpec, str] | None:
    """Task `name` built from `recipe` by the first plugin whose `dmt_task_from_recipe` answers,
    with that plugin's name, or None when no loaded plugin knows the recipe. The hook's
    implementations are called one by one in pluggy's order (what `firstresult` does) so that
    the task can be attributed to the plugin that built it."""
    for impl in reversed(host.hook.dmt_task_from_recipe.get_hookimpls()):
        if impl.hookwrapper or impl.wrapper:  # wrappers observe calls; they build nothing
            continue
        try:
            spec = impl.function(name=name, recipe=dict(recipe))
        except DmtError:
            raise
        except Exception as exc:
            raise PluginError(
                f"plugin {impl.plugin_name!r} failed to build task {name!r} from its recipe: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if spec is None:
            continue
        if not isinstance(spec, TaskSpec) or spec.name != name:
            raise PluginError(
                f"plugin {impl.plugin_name!r} answered the recipe of task {name!r} with "
                f"{spec!r}; expected a TaskSpec named {name!r}"
            )
        return spec, impl.plugin_name
    return None


def specs_for(
    manifest: dict[str, Any], names: Sequence[str], host: PluginHost
) -> dict[str, TaskSpec]:
    """The plugin specs of stored tasks (needed for their data), naming a missing plugin.

    A task no plugin registers by name (an image folder) is rebuilt from the recipe its
    manifest entry keeps, so later commands need not be told where its data came from."""
    specs = {}
    for entry in manifest["tasks"]:
        name = entry["name"]
        if name not in names:
            continue
        if name in host.registry.tasks:
            specs[name] = host.registry.tasks[name]
            continue
        recipe = entry.get("recipe")
        built = task_from_recipe(host, name, recipe) if isinstance(recipe, dict) else None
        if built is None:
            how = f" to rebuild it from its recipe of kind {recipe.get('kind')!r}" if recipe else ""
            raise PluginError(
                f"task {name!r} comes from plugin {entry.get('plugin')!r}, which is not loaded{how}; "
                "install it or pass it with -p"
            )
        spec = built[0]
        stored = (entry["output"]["kind"], entry["output"]["size"], entry.get("class_names"))
        rebuilt = (spec.output, spec.num_outputs, list(spec.class_names or []) or None)
        if rebuilt != stored:
            raise DataError(
                f"task {name!r} was trained as {stored[0]}/{stored[1]} with classes {stored[2]}, "
                f"but its recipe {recipe} now gives {rebuilt[0]}/{rebuilt[1]} with classes "
                f"{rebuilt[2]}; restore its data or add it again under another name"
            )
        specs[name] = spec
    return specs


def stored_plugins(manifest: dict[str, Any]) -> dict[str, str | None]:
    """Task -> the plugin it came from, as the manifest records it (for data messages)."""
    return {entry["name"]: entry.get("plugin") for entry in manifest["tasks"]}


def remove_task(
    path: Path,
    name: str,
    host: PluginHost,
    settings: TrainSettings = TrainSettings(epochs=3),
    data: DataOptions = DataOptions(),
    notify: Notify = _stderr,
) -> RunResult:
    """Cut task `name` out, then retrain the connections of the tasks that read it (DMT §4.3).
    The state right after the cut is epoch 0 of the best-epoch rule, so reconnection never
    ends below it. The result's summary holds every remaining task's primary metric before,
    cut, and after, and which state was kept ('cut' or 'epoch N')."""
    store = Store.open(path)
    world, device = _world_and_device(settings)
    with _writer(store, world, f"remove-task {name}"):
        manifest = store.manifest()
        stored = [t["name"] for t in manifest["tasks"]]
        if name not in stored:
            raise unknown_name("task", name, stored, f"in store {str(path)!r}")
        remaining = [t for t in stored if t != name]
        specs = specs_for(manifest, remaining, host)
        notify(Stage(f"loading {_describe_store(store, manifest)}"))
        model = load_model(store, manifest, host.registry)
        assert model is not None
        model.to(device)
        input_spec = model.input_spec
        plugins = stored_plugins(manifest)
        seeds = {entry["name"]: recorded_data_seed(entry) for entry in manifest["tasks"]}
        torch.manual_seed(settings.seed)
        targets = {}
        for t in remaining:
            notify(Stage(f"loading the data of {t}"))
            targets[t] = make_target(
                specs[t], input_spec, settings, data, device, world, plugins[t], seeds[t]
            )
        notify(Stage(f"validating {', '.join(remaining)} before the cut"))
        before = {t: evaluate(model, specs[t], targets[t].val) for t in remaining}
        affected = model.remove_task(name)
        crash_point("cut")
        model.to(device)  # some kinds rebuild modules when they drop a source
        if affected:
            notify(Stage(f"cut {name} out; validating {', '.join(affected)} after the cut"))
        cut = {t: evaluate(model, specs[t], targets[t].val) for t in affected}
        model.configure_training(TrainingPlan(connections=frozenset(affected)))
        run = _run_info(
            "remove-task",
            [name],
            store,
            manifest,
            {
                "task": name,
                **asdict(settings),
                "device": str(device),
                **connection_lr_mult_params(model, settings),
                "joint_mode": joint_mode([targets[t] for t in affected], settings)[0],
            },
        )

        stored_features = kept_features(store, manifest, model, settings, device, world)

        def work() -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
            result = None
            if model.param_groups():
                result = fit(
                    model,
                    [targets[t] for t in affected],
                    settings,
                    _epoch_hook(host, run, world),
                    notify,
                    world,
                    start={t: cut[t] for t in affected},
                    kept=stored_features,
                )
            kept = _kept(result)
            run.extra["previews"] = _dense_previews(
                model, [targets[t] for t in affected], notify, world
            )
            if result is not None and kept == "cut" and world.is_main:
                notify("no epoch of reconnection beat the cut on validation: kept the cut weights")
            after = {
                t: (result.metrics[t] if result and t in result.metrics else cut.get(t, before[t]))
                for t in remaining
            }
            new = copy.deepcopy(manifest)
            new["tasks"] = [t for t in new["tasks"] if t["name"] != name]
            for entry in new["tasks"]:
                entry["sources"] = list(model.tasks[entry["name"]].sources)
                if entry["name"] in affected:
                    entry["metrics"] = after[entry["name"]]
            report = {
                t: {
                    "metric": specs[t].primary_metric,
                    "before": before[t][specs[t].primary_metric],
                    "cut": cut.get(t, before[t])[specs[t].primary_metric],
                    "after": after[t][specs[t].primary_metric],
                    "higher_is_better": higher_is_better(specs[t].primary_metric),
                    "reconnected": t in affected,
                    "kept": kept if t in affected else None,
                }
                for t in remaining
            }
            new["operation"] = {
                **_operation("remove-task", [name], settings, result, after),
                "report": report,
            }
            notify(Stage(_committing(store)))
            _commit_weights(store, model, new, set(affected), write=world.is_main)
            return new, after

        return _tracked(host, run, store, work, notify, world, stored_features)


def _describe_store(store: Store, manifest: dict[str, Any]) -> str:
    """'store dmt-store (version 3: digits.class, digits.even)', for a stage notice; past a few
    tasks, only their number."""
    names = [t["name"] for t in manifest["tasks"]]
    tasks = ", ".join(names) if len(names) <= 4 else f"{len(names)} tasks"
    return f"store {store.path} (version {manifest['version']}: {tasks or 'no tasks yet'})"


def _committing(store: Store) -> str:
    return f"committing version {store.current_version() + 1} to store {store.path}"


def _dense_previews(
    model: MultiTaskModel, targets: list[Target], notify: Notify, world: World
) -> dict[str, Any]:
    """Input / truth / prediction grids of the trained dense tasks, for the tracker to show.
    A picture is never worth a failed run: a problem drawing one is a warning."""
    previews: dict[str, Any] = {}
    if not world.is_main:
        return previews
    from dmtcore.dense_outputs import dense_preview

    for target in targets:
        if target.spec.dense:
            try:
                previews[target.spec.name] = dense_preview(model, target.spec, target.val)
            except Exception as exc:  # a preview must not cost the version
                notify(f"warning: no preview image for {target.spec.name!r}: {first_line(exc)}")
    return previews


def _kept(result: FitResult | None) -> str:
    """Which state reconnection kept: 'cut' (no epoch beat the state right after the cut, or
    nothing was trainable) or 'epoch N' (the best one, as the best-epoch rule chose)."""
    if result is None or result.best_epoch == 0:
        return "cut"
    return f"epoch {result.best_epoch}"


def load_current(
    path: Path, host: PluginHost, version: int | None = None
) -> tuple[MultiTaskModel, dict[str, Any]]:
    """The model of a store's current (or given) version, for eval and predict."""
    store = Store.open(path)
    manifest = store.manifest(version)
    model = load_model(store, manifest, host.registry)
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
                settings.batch_size,
                False,
                device,
                workers=settings.workers,
                split=split,
                plugin=plugins[name],
            )
        )
    notify(Stage(f"evaluating {', '.join(names)} on the {split} split"))
    return evaluate_tasks(model, [specs[n] for n in names], batches, settings.precision)
