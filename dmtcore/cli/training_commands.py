"""Commands that train and change the model: add-task, train, remove-task."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import click

from dmtcore.cli.common import (
    attach_tracker,
    cli,
    emit,
    json_option,
    metric_label,
    plugin_host,
    plugin_options,
    print_table,
    starting,
    store_option,
    train_options,
    train_settings,
)
from dmtcore.errors import InvalidValueError
from dmtcore.progress import duration
from dmtcore.store import Store


def _register_from_folder(host: Any, name: str, folder: Path) -> None:
    """Make task NAME out of an image folder: the folder becomes a recipe, a plugin's
    `dmt_task_from_recipe` builds the task (the built-in `imagefolder` does), and the task is
    registered as that plugin's. The manifest keeps the recipe, so later commands find the
    task's data without --from-folder. Everything is checked before the store is touched."""
    from dmtcore.errors import ConflictError, PluginError
    from dmtcore.names import validate_task_name
    from dmtcore.operations import task_from_recipe

    validate_task_name(name)
    registry = host.registry
    if name in registry.tasks:
        raise ConflictError(
            f"task {name!r} is already registered by plugin {registry.owner('task', name)!r}; "
            "--from-folder needs a name no plugin uses (see 'dmt tasks')"
        )
    recipe = {"kind": "imagefolder", "folder": os.path.abspath(os.path.expanduser(folder))}
    built = task_from_recipe(host, name, recipe)
    if built is None:
        raise PluginError(
            "no loaded plugin builds tasks from an image folder; the built-in plugin "
            "'imagefolder' is not loaded (blocked with '-p no:imagefolder' or "
            "--no-plugin-autoload? then add '-p dmt_plugins.imagefolder')"
        )
    spec, plugin = built
    previous, registry.current_plugin = registry.current_plugin, plugin
    try:
        registry.add_task(spec)
    finally:
        registry.current_plugin = previous


FROM_FOLDER_HELP = (
    "Make the task from an image folder: DIR/<class>/*.png|jpg (20% of each class held out "
    "for validation, fixed seed), or DIR/train/<class> and DIR/val/<class>."
)


@cli.command("add-task")
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@store_option
@click.option(
    "--from-folder",
    "from_folder",
    type=click.Path(path_type=Path),
    default=None,
    metavar="DIR",
    help=FROM_FOLDER_HELP,
)
@click.option(
    "--init-from",
    "init_from",
    default="auto",
    show_default=True,
    metavar="auto|none|TASK",
    help="Start the new column from a stored task's trained column (its weights and BatchNorm "
    "statistics; the connections and head start fresh): TASK names it; auto, in a ttc store, "
    "takes the column whose features a nearest-class-mean probe finds most predictive of NAME "
    "(fresh weights under other kinds, where a warm start measured slower, and in an empty "
    "store); none starts from fresh weights. The choice is recorded in the version.",
)
@train_options(default_epochs=5)
@plugin_options
@json_option
def add_task(
    names: tuple[str, ...],
    store: Path,
    from_folder: Path | None,
    init_from: str,
    plugins: tuple[str, ...],
    no_plugin_autoload: bool,
    as_json: bool,
    **options: Any,
) -> None:
    """Train task NAME as a new column connected to every existing task.

    Existing columns, connections, heads and BatchNorm statistics stay frozen: every old
    task's output is bit-identical afterwards. A missing store is created with defaults.
    With --from-folder DIR, NAME is a new task made from the images in DIR.

    Several names are added one after another in one process (start-up is paid once), each
    as its own version and MLflow run, as separate commands would; --json then prints a list.
    If one fails, the tasks before it stay added.
    """
    started = time.perf_counter()
    notify = starting(as_json)
    if len(set(names)) != len(names):
        raise click.UsageError(f"each task can be added once, got {' '.join(names)}")
    if from_folder is not None and len(names) > 1:
        raise click.UsageError(f"--from-folder makes one task, got {len(names)}: {' '.join(names)}")
    from dmtcore.operations import DataOptions
    from dmtcore.operations import add_task as run_add_task

    settings, data, tracking = _split_options(options)
    host = plugin_host(plugins, no_plugin_autoload)
    if from_folder is not None:
        _register_from_folder(host, names[0], from_folder)
    for name in names:
        host.registry.task(name)  # fail on an unknown name before touching anything
    uri = attach_tracker(host, store, *tracking, notify=notify)
    _attach_epoch_printer(host, as_json, settings.epochs)
    payloads = []
    for name in names:
        result = run_add_task(
            store, name, host, settings, DataOptions(**data), notify=notify, init_from=init_from
        )
        seconds = time.perf_counter() - started
        started = time.perf_counter()
        payload = {
            "store": str(store),
            "version": result.version,
            "task": name,
            "metrics": result.metrics[name],
            "best_epoch": result.summary["best_epoch"],
            "init_from": result.summary["init_from"],
            "seconds": round(seconds, 2),
            "tracking_uri": uri,
        }
        payloads.append(payload)
        if not as_json:  # as each task is added: they are committed one by one
            emit(False, payload, lambda p=payload: click.echo(_added_line(p)))
    if as_json:
        emit(True, payloads[0] if len(payloads) == 1 else payloads, lambda: None)


def _added_line(payload: dict[str, Any]) -> str:
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in payload["metrics"].items())
    return (
        f"Added {payload['task']} as version {payload['version']} in {payload['seconds']:.1f}s: "
        f"{metrics} (best epoch {payload['best_epoch']})"
    )


@cli.command()
@click.argument("names", nargs=-1, required=True, metavar="TASK...")
@store_option
@click.option(
    "--connection",
    default=None,
    help="Connection kind when the store is created here [default: ttc]; must match otherwise.",
)
@click.option(
    "--from-folder",
    "from_folder",
    multiple=True,
    metavar="TASK=DIR",
    help="Make TASK (one of TASK...) from an image folder (repeatable); layout as add-task's.",
)
@train_options(default_epochs=5)
@plugin_options
@json_option
def train(
    names: tuple[str, ...],
    store: Path,
    connection: str | None,
    from_folder: tuple[str, ...],
    plugins: tuple[str, ...],
    no_plugin_autoload: bool,
    as_json: bool,
    **options: Any,
) -> None:
    """Train a group of new tasks jointly, all mutually connected (DMT §4.1).

    Tasks that share their images train in one pass per batch (their losses summed); others
    take turns, each on its own data and loss (--joint-mode). Existing tasks stay frozen;
    later add-task calls connect to the whole group.
    """
    started = time.perf_counter()
    notify = starting(as_json)
    from dmtcore.operations import DataOptions, train_tasks

    settings, data, tracking = _split_options(options)
    host = plugin_host(plugins, no_plugin_autoload)
    for item in from_folder:
        task, sep, folder = item.partition("=")
        if not sep or not folder or task not in names:
            raise InvalidValueError(
                f"invalid --from-folder {item!r}: expected TASK=DIR with TASK one of the tasks "
                f"to train ({', '.join(names)})"
            )
        _register_from_folder(host, task, Path(folder))
    for name in names:
        host.registry.task(name)
    if connection is not None:
        host.registry.connection(connection)
    uri = attach_tracker(host, store, *tracking, notify=notify)
    _attach_epoch_printer(host, as_json, settings.epochs)
    result = train_tasks(
        store, names, host, settings, DataOptions(**data), connection, notify=notify
    )
    seconds = time.perf_counter() - started
    payload = {
        "store": str(store),
        "version": result.version,
        "tasks": list(names),
        "metrics": result.metrics,
        "best_epoch": result.summary["best_epoch"],
        "seconds": round(seconds, 2),
        "tracking_uri": uri,
    }

    def human() -> None:
        click.echo(f"Trained {', '.join(names)} as version {result.version} in {seconds:.1f}s")
        metric_names = sorted({m for values in result.metrics.values() for m in values})
        print_table(
            [(t, *(v.get(m, "") for m in metric_names)) for t, v in result.metrics.items()],
            ("task", *metric_names),
        )

    emit(as_json, payload, human)


@cli.command("remove-task")
@click.argument("name")
@store_option
@train_options(default_epochs=3)
@plugin_options
@json_option
def remove_task(
    name: str,
    store: Path,
    plugins: tuple[str, ...],
    no_plugin_autoload: bool,
    as_json: bool,
    **options: Any,
) -> None:
    """Cut task NAME out and retrain the connections of the tasks that read it (DMT §4.3).

    Prints every remaining task's primary metric before the removal, right after the cut,
    and after reconnection, and which state was kept: reconnection keeps its best epoch only
    if it beats the cut ('kept: epoch N'), else the cut itself ('kept: cut').
    """
    settings, data, tracking = _split_options(options)
    Store.open(store)
    notify = starting(as_json)
    from dmtcore.operations import DataOptions
    from dmtcore.operations import remove_task as run_remove_task

    host = plugin_host(plugins, no_plugin_autoload)
    uri = attach_tracker(host, store, *tracking, notify=notify)
    _attach_epoch_printer(host, as_json, settings.epochs)
    result = run_remove_task(store, name, host, settings, DataOptions(**data), notify=notify)
    report = result.summary["report"]
    payload = {
        "store": str(store),
        "version": result.version,
        "removed": name,
        "report": report,
        "tracking_uri": uri,
    }

    def human() -> None:
        click.echo(f"Removed {name}; store is now at version {result.version}")
        print_table(
            [
                (
                    t,
                    metric_label(r["metric"]),
                    r["before"],
                    r["cut"],
                    r["after"],
                    "yes" if r["reconnected"] else "no",
                    r["kept"] or "-",
                )
                for t, r in report.items()
            ],
            ("task", "metric", "before", "cut", "after", "reconnected", "kept"),
        )

    emit(as_json, payload, human)


def _split_options(options: dict[str, Any]) -> tuple[Any, dict[str, Any], tuple[str | None, bool]]:
    settings = train_settings(
        epochs=options["epochs"],
        batch_size=options["batch_size"],
        lr=options["lr"],
        optimizer=options["optimizer"],
        connection_lr_mult=options["connection_lr_mult"],
        seed=options["seed"],
        device=options["device"],
        balance=options["balance"],
        precision=options["precision"],
        feature_cache=options["feature_cache"],
        cache_budget_mb=options["cache_budget_mb"],
        cache_dtype=options["cache_dtype"],
        kept_features_mb=options["kept_features_mb"],
        workers=options["workers"],
        channels_last=options["channels_last"],
        compile=options["compile_"],
        bn_recalibration=options["bn_recalibration"],
        joint_mode=options["joint_mode"],
    )
    data = {"data_dir": options["data_dir"], "download": options["download"]}
    return settings, data, (options["tracking_uri"], options["no_tracking"], options["no_register"])


def _attach_epoch_printer(host: Any, as_json: bool, epochs: int) -> None:
    """One line per epoch on stderr, with the time the run still needs (on a terminal the
    progress bar shows the steps); none under --json."""
    if as_json:
        return
    from dmtcore.hookspecs import hookimpl

    class EpochPrinter:
        def __init__(self) -> None:
            self.seconds: list[float] = []

        @hookimpl
        def dmt_epoch_end(self, run: Any, report: Any) -> None:
            parts = [
                f"{task} {metric} {values[metric]:.4f}"
                for task, values in report.val_metrics.items()
                for metric in list(values)[:1]
            ]
            loss = ", ".join(f"{v:.4f}" for v in report.train_loss.values())
            mark = " *" if report.is_best else ""
            self.seconds.append(report.seconds)
            click.echo(
                f"epoch {report.epoch}: loss {loss}; val {'; '.join(parts)} "
                f"({duration(report.seconds)}{self.time_left(epochs - report.epoch)}){mark}",
                err=True,
            )

        def time_left(self, epochs_left: int) -> str:
            """'; about 12s left', from the epochs so far; the first also computed the
            feature cache, so it counts only while it is the only one."""
            if epochs_left <= 0:
                return ""
            later = self.seconds[1:] or self.seconds
            return f"; {epochs_left} to go, about {duration(epochs_left * sum(later) / len(later))} left"

    host.register(EpochPrinter(), "epoch-printer")
