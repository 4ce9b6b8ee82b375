"""The `dmt` command line.

Only click and the JSON-level store are imported at start-up; torch, mlflow and the plugins load
inside the commands that need them, so `dmt --help` and `dmt status` answer at once. Every
`DmtError` becomes one line on stderr and the error's exit code; Ctrl-C and SIGTERM become
exit 130 with the store untouched.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import click

from dmtcore.errors import DmtError, Interrupted, InvalidValueError
from dmtcore.store import Store
from dmtcore.taskspec import higher_is_better

STORE_ENV = "DMT_STORE"
DEFAULT_STORE = "dmt-store"


class DmtGroup(click.Group):
    """Turns dmt's errors and interruptions into a message and an exit code, no traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DmtError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted: nothing was committed; the store is as it was.", err=True)
            ctx.exit(Interrupted.exit_code)


def main() -> None:
    """Entry point of the `dmt` console script."""
    from dmtcore import interrupts

    interrupts.install()
    cli(prog_name="dmt")


# -- shared options ----------------------------------------------------------------------------


def _store_given_before_the_command(ctx: click.Context, param: Any, value: Path) -> Path:
    """`dmt --store X status` and `dmt status --store X` mean the same; the command's own
    --store wins over the environment, and one given in both places must agree."""
    before = ctx.find_root().params.get("store")
    if before is None:
        return value
    source = ctx.get_parameter_source("store")
    if source == click.core.ParameterSource.COMMANDLINE and Path(value) != before:
        raise click.UsageError(
            f"--store is given twice: {str(before)!r} before the command and {str(value)!r} "
            "after it; give it once"
        )
    return before


def store_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--store",
        "store",
        type=click.Path(path_type=Path, file_okay=False),
        envvar=STORE_ENV,
        default=DEFAULT_STORE,
        show_default=True,
        callback=_store_given_before_the_command,
        help=f"Store directory (env {STORE_ENV}); also accepted before the command.",
    )(f)


def json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print one JSON document to stdout."
    )(f)


def plugin_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "-p",
        "--plugin",
        "plugins",
        multiple=True,
        metavar="MODULE_OR_FILE",
        help="Load a plugin module or .py file (repeatable); 'no:NAME' blocks one.",
    )(f)
    return click.option(
        "--no-plugin-autoload",
        is_flag=True,
        help="Do not load installed entry-point plugins (env DMT_DISABLE_PLUGIN_AUTOLOAD=1).",
    )(f)


def _apply(f: Callable[..., Any], options: list[Callable[..., Any]]) -> Callable[..., Any]:
    """Apply option decorators so that `--help` lists them in the order given."""
    for option in reversed(options):
        f = option(f)
    return f


DATA_OPTIONS = [
    click.option("--batch-size", type=int, default=64, show_default=True),
    click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
    click.option("--seed", type=int, default=0, show_default=True),
    click.option(
        "--data-dir",
        type=click.Path(path_type=Path, file_okay=False),
        default="data",
        show_default=True,
        envvar="DMT_DATA_DIR",
        help="Where plugins look for datasets on disk.",
    ),
    click.option("--download", is_flag=True, help="Allow plugins to download missing datasets."),
]


def data_options(f: Callable[..., Any]) -> Callable[..., Any]:
    return _apply(f, DATA_OPTIONS)


def train_options(default_epochs: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    options = [
        click.option("--epochs", type=int, default=default_epochs, show_default=True),
        click.option(
            "--lr", type=float, default=1e-3, show_default=True, help="Base learning rate."
        ),
        click.option(
            "--optimizer",
            type=click.Choice(["adam", "sgd"]),
            default="adam",
            show_default=True,
            help="sgd: momentum 0.9, as in the papers (their connection LR multipliers assume it).",
        ),
        click.option(
            "--connection-lr-mult",
            type=float,
            default=None,
            help="Learning-rate multiplier of connection weights [default: the kind's own].",
        ),
        click.option(
            "--balance",
            is_flag=True,
            help="Draw every class equally often (minority resampling, DMT §4.1).",
        ),
        click.option(
            "--precision",
            type=click.Choice(["fp32", "bf16"]),
            default="fp32",
            show_default=True,
            help="bf16: autocast to bfloat16 (for GPUs).",
        ),
        click.option(
            "--feature-cache",
            type=click.Choice(["auto", "memory", "disk", "off"]),
            default="auto",
            show_default=True,
            help="Compute frozen columns once and reuse their features in later epochs; "
            "auto spills to disk past the budget.",
        ),
        click.option(
            "--cache-budget-mb",
            type=float,
            default=2048,
            show_default=True,
            help="Memory the feature cache may use.",
        ),
        click.option(
            "--cache-dtype",
            type=click.Choice(["float16", "bfloat16", "float32"]),
            default="float16",
            show_default=True,
        ),
        click.option(
            "--channels-last/--no-channels-last",
            default=False,
            show_default=True,
            help="Run convolutions in NHWC layout while training (no faster on CPUs; try it on GPUs).",
        ),
        click.option(
            "--compile/--no-compile",
            "compile_",
            default=False,
            show_default=True,
            help="torch.compile the trained parts (on a CPU: over a minute up front, no faster).",
        ),
        click.option(
            "--bn-recalibration/--no-bn-recalibration",
            default=None,
            help="Before each validation, re-estimate the new parts' BatchNorm statistics in "
            "one pass over the training data (they lag the weights when epochs have few steps) "
            "[default: only when a task gets under 10 steps per epoch or 20 in all].",
        ),
        click.option(
            "--workers",
            type=int,
            default=0,
            show_default=True,
            help="Processes decoding samples in the background (for datasets of image files).",
        ),
        *DATA_OPTIONS,
        click.option(
            "--tracking-uri",
            envvar="MLFLOW_TRACKING_URI",
            default=None,
            help="MLflow tracking URI [default: sqlite database inside the store].",
        ),
        click.option("--no-tracking", is_flag=True, help="Do not log this run to MLflow."),
        click.option(
            "--no-register",
            is_flag=True,
            help="Track the run but do not publish the new version to the Model Registry.",
        ),
    ]
    return lambda f: _apply(f, options)


def _host(plugins: Sequence[str], no_plugin_autoload: bool) -> Any:
    from dmtcore.plugins import create_plugin_host

    return create_plugin_host(plugins, autoload=False if no_plugin_autoload else None)


def _settings(**kwargs: Any) -> Any:
    from dmtcore.training import TrainSettings

    return TrainSettings(**kwargs)


def _tracking_uri(store: Path, tracking_uri: str | None) -> tuple[str, bool]:
    """The URI to use and whether it is the store's embedded database."""
    from dmt_registry.tracking import default_tracking_uri

    embedded_uri = default_tracking_uri(store)
    uri = tracking_uri or embedded_uri
    return uri, uri == embedded_uri


def _attach_tracker(
    host: Any, store: Path, tracking_uri: str | None, no_tracking: bool, no_register: bool
) -> str | None:
    if no_tracking or not _is_main_rank():
        return None
    from dmt_registry.tracking import MlflowTracker

    uri, embedded = _tracking_uri(store, tracking_uri)
    host.register(MlflowTracker(uri, embedded, register=not no_register), "mlflow-tracker")
    return uri


def _is_main_rank() -> bool:
    """False in the processes torchrun starts besides rank 0: they train but report nothing."""
    return os.environ.get("RANK", "0") == "0"


def _emit(as_json: bool, payload: Any, human: Callable[[], None]) -> None:
    if not _is_main_rank():
        # One line per extra rank on stderr, so that a run's ranks can be compared.
        metrics = payload.get("metrics") if isinstance(payload, dict) else None
        rank, size = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
        click.echo(f"rank {rank}/{size} metrics: {json.dumps(metrics, sort_keys=True)}", err=True)
        return
    if as_json:
        click.echo(json.dumps(payload, indent=2, default=str))
    else:
        human()


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> None:
    cells = [[str(c) for c in header], *[[_fmt(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for index, row in enumerate(cells):
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if index == 0:
            click.echo("  ".join("-" * w for w in widths))


def _metric_label(name: str) -> str:
    """A metric's name, marked '↓' when lower is better (errors), so a table reads right."""
    return name if higher_is_better(name) else f"{name} ↓"


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _progress(message: str) -> None:
    if _is_main_rank():
        click.echo(message, err=True)


# -- commands ----------------------------------------------------------------------------------


@click.group(cls=DmtGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dmt-vision", prog_name="dmt")
@click.option(
    "--store",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help=f"Store directory for the command (env {STORE_ENV}); the same as after it.",
)
def cli(store: Path | None) -> None:
    """dmt grows a multi-task vision model one task at a time.

    Every task owns a frozen CNN column; new tasks learn transfer connections into the
    existing columns, so adding a task never changes an old task's outputs.
    """


@cli.command()
@store_option
@click.option(
    "--input", "input_spec", default=None, help="Image shape CxHxW [default: the first task's]."
)
@click.option("--backbone", default="dmt-cnn", show_default=True)
@click.option("--connection", default="ttc", show_default=True)
@click.option(
    "--connection-option",
    "connection_option",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override an option of the connection kind (repeatable), e.g. init_alpha=0.2.",
)
@click.option(
    "--name", default=None, help="Store name used in MLflow [default: the directory name]."
)
@click.option(
    "--model-name",
    default=None,
    help="Registered model in the MLflow Model Registry [default: the store name].",
)
@click.option(
    "--backbone-option",
    "backbone_option",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override an option of the backbone (repeatable), e.g. weights_file=r18.safetensors.",
)
@plugin_options
@json_option
def init(
    store: Path,
    input_spec: str | None,
    backbone: str,
    connection: str,
    connection_option: tuple[str, ...],
    backbone_option: tuple[str, ...],
    model_name: str | None,
    name: str | None,
    plugins: tuple[str, ...],
    no_plugin_autoload: bool,
    as_json: bool,
) -> None:
    """Create an empty store."""
    from dmtcore.names import InputSpec, parse_option
    from dmtcore.operations import init_store

    spec = InputSpec.parse(input_spec) if input_spec else None
    options = dict(parse_option(o) for o in connection_option)
    column_options = dict(parse_option(o) for o in backbone_option)
    host = _host(plugins, no_plugin_autoload)
    created = init_store(
        store, host, spec, backbone, connection, options, name, column_options, model_name
    )
    manifest = created.manifest()
    _emit(
        as_json,
        {"store": str(store), "version": manifest["version"], "manifest": manifest},
        lambda: click.echo(
            f"Created store {store} ({backbone}, connection {connection}, input {spec or 'from the first task'})"
        ),
    )


@cli.command()
@plugin_options
@json_option
def plugins(plugins: tuple[str, ...], no_plugin_autoload: bool, as_json: bool) -> None:
    """List loaded plugins, their hooks and what they registered."""
    host = _host(plugins, no_plugin_autoload)
    registry = host.registry
    rows = []
    for info in host.plugins:
        registered = [
            f"{what}:{name}"
            for (what, name), owner in registry.owners.items()
            if owner == info.name
        ]
        rows.append({**vars(info), "registered": registered})
    _emit(
        as_json,
        rows,
        lambda: _table(
            [
                (r["name"], r["origin"], r["version"] or "-", r["module"], len(r["registered"]))
                for r in rows
            ],
            ("plugin", "origin", "version", "module", "registered"),
        ),
    )


@cli.command()
@store_option
@plugin_options
@json_option
def tasks(store: Path, plugins: tuple[str, ...], no_plugin_autoload: bool, as_json: bool) -> None:
    """List the tasks plugins offer, marking those already in the store."""
    host = _host(plugins, no_plugin_autoload)
    in_store = (
        {t["name"] for t in Store.open(store).manifest()["tasks"]} if Store.exists(store) else set()
    )
    rows = [
        {
            "name": spec.name,
            "plugin": host.registry.owner("task", spec.name),
            "output": f"{spec.output}/{spec.num_outputs}",
            "in_store": spec.name in in_store,
            "description": spec.description,
        }
        for spec in host.registry.tasks.values()
    ]
    _emit(
        as_json,
        rows,
        lambda: _table(
            [
                (
                    r["name"],
                    r["plugin"],
                    r["output"],
                    "yes" if r["in_store"] else "",
                    r["description"],
                )
                for r in rows
            ],
            ("task", "plugin", "output", "in store", "description"),
        ),
    )


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
@click.argument("name")
@store_option
@click.option(
    "--from-folder",
    "from_folder",
    type=click.Path(path_type=Path),
    default=None,
    metavar="DIR",
    help=FROM_FOLDER_HELP,
)
@train_options(default_epochs=5)
@plugin_options
@json_option
def add_task(
    name: str,
    store: Path,
    from_folder: Path | None,
    plugins: tuple[str, ...],
    no_plugin_autoload: bool,
    as_json: bool,
    **options: Any,
) -> None:
    """Train task NAME as a new column connected to every existing task.

    Existing columns, connections, heads and BatchNorm statistics stay frozen: every old
    task's output is bit-identical afterwards. A missing store is created with defaults.
    With --from-folder DIR, NAME is a new task made from the images in DIR.
    """
    from dmtcore.operations import DataOptions
    from dmtcore.operations import add_task as run_add_task

    settings, data, tracking = _split_options(options)
    host = _host(plugins, no_plugin_autoload)
    if from_folder is not None:
        _register_from_folder(host, name, from_folder)
    host.registry.task(name)  # fail on an unknown name before touching anything
    uri = _attach_tracker(host, store, *tracking)
    started = time.perf_counter()
    _attach_epoch_printer(host, as_json)
    result = run_add_task(store, name, host, settings, DataOptions(**data), notify=_progress)
    seconds = time.perf_counter() - started
    payload = {
        "store": str(store),
        "version": result.version,
        "task": name,
        "metrics": result.metrics[name],
        "best_epoch": result.summary["best_epoch"],
        "seconds": round(seconds, 2),
        "tracking_uri": uri,
    }

    def human() -> None:
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in result.metrics[name].items())
        click.echo(
            f"Added {name} as version {result.version} in {seconds:.1f}s: {metrics} (best epoch {payload['best_epoch']})"
        )

    _emit(as_json, payload, human)


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

    Each step takes turns over the tasks, each on its own data and loss. Existing tasks stay
    frozen; later add-task calls connect to the whole group.
    """
    from dmtcore.operations import DataOptions, train_tasks

    settings, data, tracking = _split_options(options)
    host = _host(plugins, no_plugin_autoload)
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
    uri = _attach_tracker(host, store, *tracking)
    _attach_epoch_printer(host, as_json)
    started = time.perf_counter()
    result = train_tasks(
        store, names, host, settings, DataOptions(**data), connection, notify=_progress
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
        _table(
            [(t, *(v.get(m, "") for m in metric_names)) for t, v in result.metrics.items()],
            ("task", *metric_names),
        )

    _emit(as_json, payload, human)


@cli.command()
@store_option
@click.option("--stage", type=int, default=None, help="Only this stage boundary (from 1).")
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Also draw the matrices as heatmaps into this PNG file.",
)
@json_option
def connections(store: Path, stage: int | None, plot_path: Path | None, as_json: bool) -> None:
    """Show what the connections learned: per stage, how much each task draws from each other.

    TTC: the gate α_ij; NDDR: the norm of each source's block relative to the own block;
    cross-stitch: the mean per-source weight. Rows read from columns; '-' means no link.
    """
    from dmtcore.relations import plot, relation_matrices, select_stage

    manifest = Store.open(store).manifest()
    names = [t["name"] for t in manifest["tasks"]]
    if not names:
        raise DmtError(f"store {str(store)!r} has no tasks yet: no connections to show")
    stages = select_stage(relation_matrices(manifest), stage)
    if plot_path is not None:
        try:
            plot(manifest, stages, plot_path)
        except OSError as exc:
            raise InvalidValueError(
                f"cannot write the plot to {str(plot_path)!r}: {exc.strerror}"
            ) from exc
    payload = {
        "store": str(store),
        "version": manifest["version"],
        "connection": manifest["connection"]["name"],
        "tasks": names,
        "stages": [{"stage": number, "matrix": matrix} for number, matrix in stages],
        "plot": str(plot_path) if plot_path else None,
    }

    def human() -> None:
        click.echo(
            f"{manifest['connection']['name']} relations, store {store} v{manifest['version']}"
        )
        for number, matrix in stages:
            click.echo(f"\nstage {number} → {number + 1} (row: task, column: source)")
            _table(
                [
                    (n, *("-" if v is None else v for v in row))
                    for n, row in zip(names, matrix, strict=True)
                ],
                ("task", *names),
            )
        if plot_path is not None:
            click.echo(f"\nHeatmaps written to {plot_path}")

    _emit(as_json, payload, human)


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
    from dmtcore.operations import DataOptions
    from dmtcore.operations import remove_task as run_remove_task

    settings, data, tracking = _split_options(options)
    Store.open(store)
    host = _host(plugins, no_plugin_autoload)
    uri = _attach_tracker(host, store, *tracking)
    _attach_epoch_printer(host, as_json)
    result = run_remove_task(store, name, host, settings, DataOptions(**data))
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
        _table(
            [
                (
                    t,
                    _metric_label(r["metric"]),
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

    _emit(as_json, payload, human)


def _split_options(options: dict[str, Any]) -> tuple[Any, dict[str, Any], tuple[str | None, bool]]:
    settings = _settings(
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
        workers=options["workers"],
        channels_last=options["channels_last"],
        compile=options["compile_"],
        bn_recalibration=options["bn_recalibration"],
    )
    data = {"data_dir": options["data_dir"], "download": options["download"]}
    return settings, data, (options["tracking_uri"], options["no_tracking"], options["no_register"])


def _attach_epoch_printer(host: Any, as_json: bool) -> None:
    """One line per epoch on stderr (the progress bar shows the steps within it)."""
    from dmtcore.hookspecs import hookimpl

    class EpochPrinter:
        @hookimpl
        def dmt_epoch_end(self, run: Any, report: Any) -> None:
            parts = [
                f"{task} {metric} {values[metric]:.4f}"
                for task, values in report.val_metrics.items()
                for metric in list(values)[:1]
            ]
            loss = ", ".join(f"{v:.4f}" for v in report.train_loss.values())
            mark = " *" if report.is_best else ""
            click.echo(
                f"epoch {report.epoch}: loss {loss}; val {'; '.join(parts)} ({report.seconds:.1f}s){mark}",
                err=True,
            )

    host.register(EpochPrinter(), "epoch-printer")


def _registry_client(store: Path | None, tracking_uri: str | None) -> tuple[Any, str]:
    from mlflow.tracking import MlflowClient

    if tracking_uri is None and store is None:
        raise InvalidValueError(
            "say where the registry is: --tracking-uri URI (or MLFLOW_TRACKING_URI), e.g. "
            "sqlite:///path/to/store/mlflow.db or http://host:5000"
        )
    uri, embedded = _tracking_uri(store, tracking_uri) if store else (tracking_uri, False)
    if embedded:
        from dmt_registry.tracking import ensure_embedded_database

        ensure_embedded_database(store, lambda message: click.echo(f"warning: {message}", err=True))
    return MlflowClient(tracking_uri=uri, registry_uri=uri), uri


def tracking_uri_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--tracking-uri",
        envvar="MLFLOW_TRACKING_URI",
        default=None,
        help="MLflow tracking and registry URI [default: sqlite database inside the store].",
    )(f)


@cli.command()
@store_option
@tracking_uri_option
@json_option
def register(store: Path, tracking_uri: str | None, as_json: bool) -> None:
    """Publish the store's current version to the Model Registry (e.g. after --no-register).

    Logs it in a run of its own, tags it, and points the alias 'current' at it.
    """
    from dmt_registry.publish import model_name
    from dmt_registry.publish import register as publish
    from dmtcore.runinfo import RunInfo

    opened = Store.open(store)
    manifest = opened.manifest()
    uri, embedded = _tracking_uri(store, tracking_uri)
    from dmt_registry.tracking import MlflowTracker, reported_call

    tracker = MlflowTracker(uri, embedded, register=False)
    run = RunInfo(
        "register",
        [t["name"] for t in manifest["tasks"]],
        store,
        manifest["name"],
        manifest["version"],
        {},
    )
    tracker.dmt_run_started(run=run)
    try:
        version = reported_call(
            uri, lambda: publish(tracker.client, opened, manifest["version"], tracker.run_id)
        )
    except BaseException as exc:
        tracker.dmt_run_failed(run=run, error=exc)
        raise
    tracker.client.set_terminated(tracker.run_id, "FINISHED")
    name = model_name(manifest)
    _emit(
        as_json,
        {
            "model": name,
            "version": version,
            "store_version": manifest["version"],
            "tracking_uri": uri,
        },
        lambda: click.echo(
            f"Registered store version {manifest['version']} as models:/{name}/{version} (alias current)"
        ),
    )


@cli.command()
@click.argument("version")
@click.option("--alias", required=True, help="Alias to point at VERSION, e.g. production.")
@store_option
@click.option("--model-name", default=None, help="[default: the store's registered model]")
@tracking_uri_option
@json_option
def promote(
    version: str,
    alias: str,
    store: Path,
    model_name: str | None,
    tracking_uri: str | None,
    as_json: bool,
) -> None:
    """Point ALIAS of the registered model at VERSION (aliases only: stages are deprecated)."""
    from dmt_registry.publish import model_name as store_model_name
    from dmt_registry.publish import promote as set_alias
    from dmt_registry.tracking import reported_call

    name = model_name or store_model_name(Store.open(store).manifest())
    client, uri = _registry_client(store, tracking_uri)
    reported_call(uri, lambda: set_alias(client, name, version, alias))
    _emit(
        as_json,
        {"model": name, "version": version, "alias": alias},
        lambda: click.echo(f"models:/{name}@{alias} now points at version {version}"),
    )


@cli.command()
@click.argument("model_uri")
@store_option
@tracking_uri_option
@json_option
def pull(model_uri: str, store: Path, tracking_uri: str | None, as_json: bool) -> None:
    """Rebuild a working store from a registered version: models:/NAME/3 or models:/NAME@current.

    Its predictions equal the original's exactly; add tasks to it and the lineage goes on.
    """
    from dmt_registry.publish import pull as pull_store

    if not tracking_uri:
        raise InvalidValueError(
            "say which registry to pull from: --tracking-uri URI (or MLFLOW_TRACKING_URI), e.g. "
            "sqlite:///path/to/store/mlflow.db or http://host:5000"
        )
    pulled = pull_store(model_uri, tracking_uri, store, _host((), False).registry)
    manifest = pulled.manifest()
    _emit(
        as_json,
        {
            "store": str(store),
            "model_uri": model_uri,
            "version": manifest["version"],
            "tasks": [t["name"] for t in manifest["tasks"]],
        },
        lambda: click.echo(
            f"Pulled {model_uri} into {store}: version {manifest['version']}, tasks "
            f"{', '.join(t['name'] for t in manifest['tasks'])}"
        ),
    )


@cli.command()
@store_option
@json_option
def status(store: Path, as_json: bool) -> None:
    """Show the store's current version and tasks (reads JSON only: instant)."""
    opened = Store.open(store)
    manifest = opened.manifest()
    tasks = [
        {
            "name": t["name"],
            "plugin": t["plugin"],
            "output": t["output"],
            "sources": t["sources"],
            "primary_metric": t["primary_metric"],
            "metric": t["metrics"][t["primary_metric"]],
            "higher_is_better": higher_is_better(t["primary_metric"]),
        }
        for t in manifest["tasks"]
    ]
    payload = {
        "store": str(store),
        "name": manifest["name"],
        "version": manifest["version"],
        "created": manifest["created"],
        "input_spec": manifest["input_spec"],
        "backbone": manifest["backbone"],
        "connection": manifest["connection"],
        "tasks": tasks,
    }

    def human() -> None:
        spec = (
            "x".join(map(str, manifest["input_spec"]))
            if manifest["input_spec"]
            else "not fixed yet"
        )
        click.echo(
            f"Store {store} ({manifest['name']}), version {manifest['version']} of {manifest['created']}"
        )
        switches = [k for k, v in manifest["backbone"]["options"].items() if v is True]
        backbone = " ".join([manifest["backbone"]["name"], *(f"{k}=true" for k in switches)])
        click.echo(
            f"Input {spec}, backbone {backbone}, connection {manifest['connection']['name']}"
        )
        if not tasks:
            click.echo("No tasks yet: add one with 'dmt add-task NAME' (see 'dmt tasks').")
            return
        _table(
            [
                (
                    t["name"],
                    t["plugin"],
                    f"{t['output']['kind']}/{t['output']['size']}",
                    len(t["sources"]),
                    _metric_label(t["primary_metric"]),
                    t["metric"],
                )
                for t in tasks
            ],
            ("task", "plugin", "output", "sources", "metric", "value"),
        )

    _emit(as_json, payload, human)


@cli.command("eval")
@click.argument("task_names", nargs=-1, metavar="[TASK]...")
@store_option
@click.option(
    "--split", type=click.Choice(["train", "val", "test"]), default="val", show_default=True
)
@data_options
@plugin_options
@json_option
def eval_command(
    task_names: tuple[str, ...],
    store: Path,
    split: str,
    plugins: tuple[str, ...],
    no_plugin_autoload: bool,
    as_json: bool,
    **options: Any,
) -> None:
    """Evaluate stored tasks (all by default) on a split of their data.

    Each task's data is split with the seed it was trained with (recorded in the store), so
    `val` is the split that picked its best epoch; --seed seeds only random augmentation.
    """
    from dmtcore.operations import DataOptions, evaluate_store

    settings = _settings(
        batch_size=options["batch_size"], seed=options["seed"], device=options["device"]
    )
    data = DataOptions(options["data_dir"], options["download"])
    results = evaluate_store(
        store, _host(plugins, no_plugin_autoload), task_names, split, settings, data
    )
    metric_names = sorted({m for values in results.values() for m in values})
    _emit(
        as_json,
        {"store": str(store), "split": split, "metrics": results},
        lambda: _table(
            [(t, *(values.get(m, "") for m in metric_names)) for t, values in results.items()],
            ("task", *metric_names),
        ),
    )


@cli.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path, dir_okay=False))
@store_option
@click.option(
    "--task", "task_names", multiple=True, help="Only these tasks (repeatable) [default: all]."
)
@click.option("--device", default="auto", show_default=True)
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option(
    "-p",
    "--plugin",
    "plugins",
    multiple=True,
    metavar="MODULE_OR_FILE",
    help="Load a plugin, e.g. one providing the store's backbone or connection kind.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Write every dense map as a viewable PNG and a raw .npy, and predictions.json, here.",
)
@json_option
def predict(
    inputs: tuple[Path, ...],
    store: Path,
    task_names: tuple[str, ...],
    device: str,
    batch_size: int,
    plugins: tuple[str, ...],
    out_dir: Path | None,
    as_json: bool,
) -> None:
    """Predict every task for image files (PNG, JPEG, ...) or .npy arrays, streaming them in
    batches (arrays are memory-mapped) so memory stays flat on large inputs.

    Values: 8-bit images and uint8 arrays are divided by 255, 16-bit images and uint16
    arrays by 65535; float images and float, bool or other integer arrays are taken as
    they are. An .npy array is H×W, C×H×W or N×C×H×W. Ctrl-C stops at the next batch.

    Pixel-level tasks predict a map per image at the store's input size: --json gives the
    arrays (class ids H×W with per-pixel probabilities, depth H×W, normals 3×H×W); --out DIR
    writes them as PNG and .npy files, batch by batch."""
    if batch_size < 1:
        raise InvalidValueError(f"batch size must be a positive integer, got {batch_size}")
    from dmtcore.data import resolve_device
    from dmtcore.operations import load_current, select_tasks
    from dmtcore.plugins import create_plugin_host
    from dmtcore.predict import iter_batches, task_outputs

    # Loading a store needs no task plugin: only a third-party backbone or connection kind.
    host = create_plugin_host(plugins, autoload=False)
    model, manifest = load_current(store, host)
    names = select_tasks(manifest, list(dict.fromkeys(task_names)))
    model.to(resolve_device(device))
    outputs = task_outputs(manifest)
    summary = {"store": str(store), "version": manifest["version"]}
    if out_dir is not None:
        _predict_to_folder(model, inputs, batch_size, names, outputs, out_dir, summary, as_json)
        return
    from dmtcore.predict import predict as run_predict

    labels: list[str] = []

    def batches() -> Iterator[Any]:
        for images, batch_labels in iter_batches(inputs, model.input_spec, batch_size):
            labels.extend(batch_labels)
            yield images

    result = run_predict(model, batches(), names, outputs)
    rows = [
        {"input": label, **{t: _shown_prediction(result[t]["prediction"][i]) for t in names}}
        for i, label in enumerate(labels)
    ]
    _emit(
        as_json,
        {**summary, "inputs": labels, "tasks": result},
        lambda: _table([tuple(r.values()) for r in rows], ("input", *names)),
    )


def _shown_prediction(value: Any) -> Any:
    """A dense map is named by its size in the table (--json or --out give the values)."""
    if isinstance(value, list) and value and isinstance(value[0], list):
        import numpy as np

        return "map " + "×".join(map(str, np.shape(value))) + " (--out DIR saves it)"
    return value


def _predict_to_folder(
    model: Any,
    inputs: tuple[Path, ...],
    batch_size: int,
    names: list[str],
    outputs: dict[str, dict[str, Any]],
    out_dir: Path,
    summary: dict[str, Any],
    as_json: bool,
) -> None:
    from dmtcore.predict import iter_batches, predict_to_folder

    labelled = iter_batches(inputs, model.input_spec, batch_size)
    writer = predict_to_folder(model, labelled, names, outputs, out_dir)
    path = writer.finish(summary)
    rows = writer.rows
    _emit(
        as_json,
        {**summary, "out": str(out_dir), "predictions": str(path), "rows": rows},
        lambda: (
            _table([tuple(r.values()) for r in rows], ("input", *names)),
            click.echo(f"wrote {len(rows)} input(s) into {out_dir} (see {path.name})"),
        ),
    )


@cli.command()
@store_option
@json_option
def history(store: Path, as_json: bool) -> None:
    """List the store's versions, newest first."""
    entries = Store.open(store).history()
    _emit(
        as_json,
        entries,
        lambda: _table(
            [
                (
                    e["version"],
                    e["created"],
                    f"{e['operation']['name']} {' '.join(e['operation']['tasks'])}".strip(),
                    ", ".join(e["tasks"]) or "-",
                )
                for e in entries
            ],
            ("version", "created", "operation", "tasks"),
        ),
    )


@cli.command()
@store_option
@click.option(
    "--all", "every_version", is_flag=True, help="Rebuild every version, not only the current one."
)
@click.option(
    "-p",
    "--plugin",
    "plugins",
    multiple=True,
    metavar="MODULE_OR_FILE",
    help="Load a plugin providing the store's backbone or connection kind.",
)
@json_option
def verify(store: Path, every_version: bool, plugins: tuple[str, ...], as_json: bool) -> None:
    """Check the whole store and report every problem: manifests, weight files and their
    checksums, and that the model rebuilds. Exits 5 when anything is wrong."""
    from dmtcore.errors import StoreError
    from dmtcore.plugins import create_plugin_host
    from dmtcore.verify import verify_store

    host = create_plugin_host(plugins, autoload=False)
    versions, problems = verify_store(store, host.registry, every_version)
    payload = {
        "store": str(store),
        "ok": not problems,
        "versions": versions,
        "problems": [vars(p) for p in problems],
    }
    if as_json:
        click.echo(json.dumps(payload, indent=2))
    elif not problems:
        click.echo(f"Store {store} is sound: {len(versions)} versions checked.")
    else:
        for problem in problems:
            named = problem.message.startswith(problem.file)
            click.echo(problem.message if named else f"{problem.file}: {problem.message}")
    if problems:
        raise StoreError(f"{len(problems)} problem(s) found in store {str(store)!r}")


@cli.command()
@click.argument("version", type=int)
@store_option
@json_option
def rollback(version: int, store: Path, as_json: bool) -> None:
    """Make an earlier VERSION current again (as a new version: history is never rewritten)."""
    opened = Store.open(store)
    manifest = _rollback_target(opened, version)
    with opened.writer(f"rollback {version}"):
        manifest["operation"] = {"name": "rollback", "tasks": [], "to_version": version}
        new_version = opened.commit(manifest)
    _emit(
        as_json,
        {"store": str(store), "version": new_version, "rolled_back_to": version},
        lambda: click.echo(
            f"Rolled back to version {version}; the store is now at version {new_version}"
        ),
    )


def _rollback_target(store: Store, version: int) -> dict[str, Any]:
    """The manifest to roll back to, with every weight file it names verified, checked before
    the writer lock is taken: committed versions never change, and a refused rollback then
    touches nothing. Rolling back away from a damaged current version is allowed: it is how
    a store is repaired."""
    manifest = store.manifest(version)
    for task in manifest["tasks"]:
        for ref in task["weights"].values():
            store.read_blob(ref["sha256"])
    return manifest


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
