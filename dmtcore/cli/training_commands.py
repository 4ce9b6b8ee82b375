"""Commands that train and change the model: add-task, train, remove-task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from dmtcore.cli.common import (
    cli,
    emit,
    json_option,
    metric_label,
    plugin_options,
    print_table,
    starting,
    store_option,
    train_options,
    verbose,
    weighting_options,
)
from dmtcore.errors import InvalidValueError
from dmtcore.runtime.progress import duration
from dmtcore.store.directory import Store

DEFAULT = ParameterSource.DEFAULT

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
    notify = starting(as_json)
    if len(set(names)) != len(names):
        raise click.UsageError(f"each task can be added once, got {' '.join(names)}")
    if from_folder is not None and len(names) > 1:
        raise click.UsageError(f"--from-folder makes one task, got {len(names)}: {' '.join(names)}")
    api = _open_store(store, plugins, no_plugin_autoload, options, notify, as_json)
    printed = (
        None
        if as_json
        else lambda record: emit(False, record, lambda: click.echo(_added_line(record)))
    )
    records = api.add_task(
        list(names),
        from_folder=from_folder,
        init_from=init_from,
        each=printed,
        **_settings(options),
    )
    if as_json:
        emit(True, records[0] if len(records) == 1 else records, lambda: None)


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
@click.option(
    "--compare-with",
    "compare_with",
    type=click.Path(path_type=Path),
    default=None,
    metavar="STORE",
    help="Report Δm, the mean relative gain over STORE's validation metrics of the same "
    "tasks: e.g. a store where each task was trained alone (connection none).",
)
@train_options(default_epochs=5)
@weighting_options
@plugin_options
@json_option
def train(
    names: tuple[str, ...],
    store: Path,
    connection: str | None,
    from_folder: tuple[str, ...],
    compare_with: Path | None,
    plugins: tuple[str, ...],
    no_plugin_autoload: bool,
    as_json: bool,
    **options: Any,
) -> None:
    """Train a group of new tasks jointly, all mutually connected (DMT §4.1).

    Tasks that share their images train in one pass per batch (their losses summed, or
    combined by --weighting); others take turns, each on its own data and loss
    (--joint-mode). Existing tasks stay frozen; later add-task calls connect to the whole
    group.
    """
    notify = starting(as_json)
    folders = {}
    for item in from_folder:
        task, sep, folder = item.partition("=")
        if not sep or not folder or task not in names:
            raise InvalidValueError(
                f"invalid --from-folder {item!r}: expected TASK=DIR with TASK one of the tasks "
                f"to train ({', '.join(names)})"
            )
        folders[task] = Path(folder)
    api = _open_store(store, plugins, no_plugin_autoload, options, notify, as_json)
    payload = api.train(
        names,
        connection=connection,
        from_folders=folders,
        compare_with=compare_with,
        **_settings(options),
    )
    result_metrics = payload["metrics"]

    def human() -> None:
        click.echo(
            f"Trained {', '.join(names)} as version {payload['version']} in "
            f"{payload['seconds']:.1f}s"
        )
        metric_names = sorted({m for values in result_metrics.values() for m in values})
        print_table(
            [(t, *(v.get(m, "") for m in metric_names)) for t, v in result_metrics.items()],
            ("task", *metric_names),
        )
        weighting = payload["weighting"]
        if weighting["weights"]:
            weights = ", ".join(f"{t} {w:.3f}" for t, w in weighting["weights"].items())
            click.echo(f"weighting {weighting['name']}: last epoch's mean weights {weights}")
        if payload.get("delta_m") is not None:
            click.echo(
                f"Δm {payload['delta_m']:+.2f}% against {payload['compared_with']} (mean "
                "relative gain over its metrics of the same tasks; positive is better)"
            )

    emit(as_json, payload, human)


@cli.command("remove-task")
@click.argument("name")
@store_option
@train_options(
    default_epochs=3,
    epochs_help="Epochs of reconnection [default: as each task was trained; 3 for tasks "
    "trained before dmt recorded it]. Like every setting given here, it holds for all the "
    "reconnected tasks.",
)
@weighting_options
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

    Each reconnected task retrains with the settings it was trained with (batch size,
    learning rate, optimiser, epochs, ...; recorded in the store), but for the options given
    here. Prints every remaining task's primary metric before the removal, right after the
    cut, and after reconnection, and which state was kept: reconnection keeps its best
    epoch only if it beats the cut ('kept: epoch N'), else the cut itself ('kept: cut').
    """
    from dmtcore.api import split_options

    split_options(_settings(options))  # bad settings, then a missing store, fail before start-up
    Store.open(store)
    notify = starting(as_json)
    api = _open_store(store, plugins, no_plugin_autoload, options, notify, as_json)
    # Only what the command line sets: every other setting is each task's own, as recorded.
    context = click.get_current_context()
    typed = {k: v for k, v in options.items() if context.get_parameter_source(k) != DEFAULT}
    payload = api.remove_task(name, **_settings(typed))
    report = payload["report"]

    def human() -> None:
        click.echo(f"Removed {name}; store is now at version {payload['version']}")
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
            ("task", "metric", "before", "cut", "after", "retrained", "kept"),
        )

    emit(as_json, payload, human)


TRACKING_OPTIONS = ("tracking_uri", "no_tracking", "no_register")


def _settings(options: dict[str, Any]) -> dict[str, Any]:
    """The command's training and data options by the API's names (--compile is `compile`)."""
    named = {("compile" if k == "compile_" else k): v for k, v in options.items()}
    return {k: v for k, v in named.items() if k not in TRACKING_OPTIONS}


def _open_store(
    store: Path,
    plugins: tuple[str, ...],
    no_plugin_autoload: bool,
    options: dict[str, Any],
    notify: Any,
    as_json: bool,
) -> Any:
    """The store for the API's call, tracked as the options say, with one line per epoch on
    stderr (none under --json)."""
    from dmtcore.api import open_store

    observers = [] if as_json else [_epoch_printer(options["epochs"])]
    return open_store(
        store,
        plugins=plugins,
        autoload=False if no_plugin_autoload else None,
        tracking_uri=options["tracking_uri"],
        tracking=not options["no_tracking"],
        register=not options["no_register"],
        notify=notify or (lambda message: None),
        observers=observers,
        verbose=verbose(),
    )


def _epoch_printer(epochs: int) -> object:
    """One line per epoch on stderr, with the time the run still needs (on a terminal the
    progress bar shows the steps)."""
    from dmtcore.hooks.specs import hookimpl

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
            # The run's own epochs: remove-task may take each task's recorded ones.
            total = run.params.get("epochs") or epochs
            click.echo(
                f"epoch {report.epoch}: loss {loss}; val {'; '.join(parts)} "
                f"({duration(report.seconds)}{self.time_left(total - report.epoch)}){mark}",
                err=True,
            )

        def time_left(self, epochs_left: int) -> str:
            """'; about 12s left', from the epochs so far; the first also computed the
            feature cache, so it counts only while it is the only one."""
            if epochs_left <= 0:
                return ""
            later = self.seconds[1:] or self.seconds
            return f"; {epochs_left} to go, about {duration(epochs_left * sum(later) / len(later))} left"

    return EpochPrinter()
