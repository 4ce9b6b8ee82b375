"""What every `dmt` command shares: the group, its error handling, the shared options and the
way results are printed (a table for people, one JSON document with --json)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from dmtcore.api import quiet_environment
from dmtcore.errors import DmtError, Interrupted, InvalidValueError, StoreError
from dmtcore.tasks.spec import higher_is_better

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


def _store_given_before_the_command(ctx: click.Context, param: Any, value: Path) -> Path:
    """`dmt --store X status` and `dmt status --store X` mean the same; the command's own
    --store wins over the environment, and one given in both places must agree."""
    before = ctx.find_root().params.get("store")
    if before is None:
        return _not_a_file(value)
    source = ctx.get_parameter_source("store")
    if source == click.core.ParameterSource.COMMANDLINE and Path(value) != before:
        raise click.UsageError(
            f"--store is given twice: {str(before)!r} before the command and {str(value)!r} "
            "after it; give it once"
        )
    return _not_a_file(before)


def _not_a_file(path: Path) -> Path:
    """A file is 'not a store' (exit 5, as documented), not a usage error: click's own check
    (`file_okay=False`) would exit 2 with a message about a 'directory'."""
    try:
        is_file = path.exists() and not path.is_dir()
    except OSError:
        return path  # the command's own open says what is wrong
    if is_file:
        raise StoreError(
            f"{str(path)!r} is a file, not a dmt store (a store is a directory); give the "
            "store's directory with --store"
        )
    return path


def store_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--store",
        "store",
        type=click.Path(path_type=Path),
        metavar="DIRECTORY",
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


def weighting_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--weighting NAME and its --weighting-option KEY=VALUE (as `weighting_options`, a dict)."""

    def parsed(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> dict:
        from dmtcore.tasks.names import parse_option

        return dict(parse_option(item) for item in value)

    f = click.option(
        "--weighting-option",
        "weighting_options",
        multiple=True,
        metavar="KEY=VALUE",
        callback=parsed,
        help="An option of the weighting, e.g. alpha=1.5 for gradnorm (repeatable; "
        "'dmt weightings' lists them).",
    )(f)
    return click.option(
        "--weighting",
        default="equal",
        show_default=True,
        metavar="NAME",
        help="How the group's losses become one step: equal (summed), uncertainty, dwa, "
        "gradnorm, pcgrad, aligned-mtl, or a plugin's ('dmt weightings' lists them). Taking "
        "turns, a weighting other than equal steps once per round of one batch per task.",
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
    click.option(
        "--batch-size",
        type=int,
        default=None,
        help="Images per batch [default: 64, or for a training set too small for 10 steps "
        "per epoch of 64, the size that gives 10 (said in one line)].",
    ),
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


def train_options(
    default_epochs: int, epochs_help: str | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    options = [
        click.option(
            "--epochs",
            type=int,
            default=default_epochs,
            show_default=epochs_help is None,
            help=epochs_help,
        ),
        click.option(
            "--lr", type=float, default=1e-3, show_default=True, help="Base learning rate."
        ),
        click.option(
            "--optimizer",
            type=click.Choice(["adam", "sgd"]),
            default="adam",
            show_default=True,
            help="sgd: momentum 0.9, as in the papers. Each connection kind's default "
            "learning-rate multiplier follows it: nddr and nddr-shortcut x100 with sgd (the "
            "paper's), x1 with adam; cross-stitch x100 and ttc x10 with both (as measured).",
        ),
        click.option(
            "--connection-lr-mult",
            type=float,
            default=None,
            help="Learning-rate multiplier of connection weights, over the store's lr_mult "
            "option [default: the store's lr_mult if a number, else (auto) the kind's value "
            "for --optimizer]. The value used is recorded in the version and the MLflow run.",
        ),
        click.option(
            "--balance",
            is_flag=True,
            help="Draw every class equally often (minority resampling, DMT §4.1).",
        ),
        click.option(
            "--joint-mode",
            type=click.Choice(["auto", "one-pass", "turns"]),
            default="auto",
            show_default=True,
            help="How a group of tasks trains: one-pass runs every column once per batch for "
            "all tasks and sums their losses (tasks that share their images); turns gives each "
            "task its own batch in turn; auto: one-pass where the tasks share their images and "
            "--balance is off.",
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
            "--kept-features-mb",
            type=float,
            default=1024,
            show_default=True,
            help="Keep frozen columns' features in the store (STORE/features) for later "
            "commands on the same images, within this many MB (least recently used go first); "
            "0: keep and read none.",
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
            "--freeze-stages",
            type=int,
            default=0,
            show_default=True,
            metavar="N",
            help="Keep the first N stages of each new column as they start (pretrained or "
            "--init-from weights) and train only the stages above.",
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


def plugin_host(plugins: Sequence[str], no_plugin_autoload: bool) -> Any:
    from dmtcore.hooks.host import create_plugin_host

    return create_plugin_host(plugins, autoload=False if no_plugin_autoload else None)


def is_main_rank() -> bool:
    """False in the processes torchrun starts besides rank 0: they train but report nothing."""
    return os.environ.get("RANK", "0") == "0"


def emit(as_json: bool, payload: Any, human: Callable[[], None]) -> None:
    if not is_main_rank():
        # One line per extra rank on stderr, so that a run's ranks can be compared.
        metrics = payload.get("metrics") if isinstance(payload, dict) else None
        rank, size = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
        click.echo(f"rank {rank}/{size} metrics: {json.dumps(metrics, sort_keys=True)}", err=True)
        return
    if as_json:
        click.echo(json.dumps(payload, indent=2, default=str))
    else:
        human()


def print_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> None:
    cells = [[str(c) for c in header], *[[format_value(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for index, row in enumerate(cells):
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if index == 0:
            click.echo("  ".join("-" * w for w in widths))


def metric_label(name: str) -> str:
    """A metric's name, marked '↓' when lower is better (errors), so a table reads right."""
    return name if higher_is_better(name) else f"{name} ↓"


def format_value(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def echo_progress(message: str) -> None:
    if is_main_rank():
        click.echo(message, err=True)


PROGRESS_ENV = "DMT_PROGRESS"
PROGRESS_MODES = ("auto", "always", "never")


def stages_shown(as_json: bool) -> bool:
    """Whether stage lines go to stderr: on a terminal (`DMT_PROGRESS=auto`, the default), or
    always (e.g. for CI logs) or never as DMT_PROGRESS says; never under --json. A script's
    stderr then holds warnings, notes and a failing command's one error line."""
    mode = os.environ.get(PROGRESS_ENV, "auto")
    if mode not in PROGRESS_MODES:
        raise InvalidValueError(
            f"{PROGRESS_ENV}={mode!r} is not valid; valid: {', '.join(PROGRESS_MODES)}"
        )
    if as_json or mode == "never":
        return False
    return mode == "always" or stderr_is_terminal()


def progress(as_json: bool) -> Callable[[str], None]:
    """How a long command reports while it works, on stderr: stages (a `Stage`) when
    `stages_shown`, warnings and notes always, progress bars on a terminal and not under
    --json."""
    from dmtcore.runtime.progress import Stage, allow_bars

    allow_bars(not as_json)
    shown = stages_shown(as_json)

    def notify(message: str) -> None:
        if shown or not isinstance(message, Stage):
            echo_progress(message)

    return notify


def starting(as_json: bool) -> Callable[[str], None]:
    """The command's `notify`, after saying what the first silent seconds are spent on."""
    from dmtcore.runtime.progress import Stage

    notify = progress(as_json)
    notify(Stage("loading torch and the task plugins"))
    return notify


def stderr_is_terminal() -> bool:
    """Whether a person is likely watching stderr: by default commands say their stages only
    then (see `stages_shown`), so that in a script a failing command prints one error line."""
    return sys.stderr.isatty()


def verbose() -> bool:
    """Whether `dmt -v` asked to see what other libraries print."""
    context = click.get_current_context(silent=True)
    return bool(context and context.find_root().params.get("verbose"))


@click.group(cls=DmtGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dmt-vision", prog_name="dmt")
@click.option(
    "--store",
    type=click.Path(path_type=Path),
    metavar="DIRECTORY",
    default=None,
    help=f"Store directory for the command (env {STORE_ENV}); the same as after it.",
)
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Also show what other libraries print: MLflow's log messages and progress bars.",
)
@click.pass_context
def cli(ctx: click.Context, store: Path | None, verbose: bool) -> None:
    """dmt grows a multi-task vision model one task at a time.

    Every task owns a frozen CNN column; new tasks learn transfer connections into the
    existing columns, so adding a task never changes an old task's outputs.
    """
    ctx.with_resource(quiet_environment(verbose))  # other libraries' bars off for the command
