"""Tracking overhead: `add-task` with MLflow tracking (and registration) vs `--no-tracking`.

Adds a task (default `digits.even`) to a store holding another (`digits.class`), in two ways,
each with its variants measured side by side and interleaved (the order rotates every repeat):

In-process (the tracker's own cost, imports already paid: the tracker runs in this process,
where a command runs it in its helper process, `dmt_registry.tracking_process`), after one
warm-up of each mode:

    off        --no-tracking
    tracking   runs, params, per-epoch metrics, gate time series, artifacts (--no-register)
    registry   all of the above plus publishing the version to the Model Registry (default)

Each run gets a fresh copy of the same store and of a migrated SQLite tracking database, so no
run pays MLflow's schema migration. Prints medians of wall and CPU seconds, their ratios to
`off`, and the time spent inside the tracking hooks (per epoch, and once per run).

Whole command (`--command`, what a user pays, the helper process included): `dmt add-task TASK
--epochs N` in a fresh process, default (tracking and registry) vs `--no-tracking`, each on a
fresh copy of a store whose first task was added with tracking (so its MLflow database exists,
as it would); plus the CPU seconds of importing what tracking imports (mlflow) on top of torch
and dmt, in a fresh process.

CPU seconds are the process's own (every thread: `time.process_time`) plus every child process
that ended meanwhile (`RUSAGE_CHILDREN`), so work pushed into a background thread or a child
process is counted; a run that leaves a thread or a child process behind is reported.

    python benchmarks/tracking_overhead.py [--quick] [--repeats 5] [--epochs 10] [--command]
        [--task shapes.red-circle --after shapes.kind --input 3x16x16] [--json out.json]
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _common as common

from dmtcore.hooks.host import create_plugin_host
from dmtcore.operations import add_task, init_store
from dmtcore.tasks.names import InputSpec
from dmtcore.train.loop import TrainSettings

MODES = ("off", "tracking", "registry")
COMMAND_MODES = ("no-tracking", "tracked")
HOOKS = ("dmt_run_started", "dmt_epoch_end", "dmt_run_finished")
# Threads a run started that were still alive when it returned (their CPU is counted anyway).
LEFT_THREADS: set[str] = set()


def cpu_seconds() -> float:
    """CPU seconds of this process (all threads) and of its children that have ended."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def prepare(folder: Path, epochs: int, first: str, spec: InputSpec | None) -> tuple[Path, Path]:
    """A store with the first task, and a migrated tracking database to copy per run."""
    from mlflow.tracking import MlflowClient

    base = folder / "base"
    host = create_plugin_host()
    if spec is not None:
        init_store(base, host, spec)
    add_task(base, first, host, TrainSettings(epochs=epochs), notify=common.quiet)
    template = folder / "template.db"
    MlflowClient(tracking_uri=f"sqlite:///{template}").search_experiments()
    return base, template


def timed(method: Callable[..., None], into: list[float], cpu: list[float]) -> Callable[..., None]:
    """`method`, recording the wall and CPU seconds (every thread's) of each call."""

    @functools.wraps(method)
    def wrapper(*args: object, **kwargs: object) -> None:
        started, used = time.perf_counter(), cpu_seconds()
        method(*args, **kwargs)
        into.append(time.perf_counter() - started)
        cpu.append(cpu_seconds() - used)

    return wrapper


def one_run(mode: str, base: Path, template: Path, folder: Path, settings: TrainSettings, task: str,
            hooks: dict[str, list[float]]) -> tuple[float, float]:  # fmt: skip
    """Wall and CPU seconds of one add-task; the seconds inside each tracking hook go into
    `hooks`."""
    from dmt_registry.tracking import MlflowTracker, default_tracking_uri

    store = folder / f"run-{mode}-{time.perf_counter_ns()}"
    shutil.copytree(base, store)
    host = create_plugin_host()
    if mode != "off":
        shutil.copy(template, store / "mlflow.db")
        uri = default_tracking_uri(store)
        tracker = MlflowTracker(uri, embedded=True, register=mode == "registry")
        for hook in HOOKS:
            into = hooks.setdefault(f"{mode}.{hook}", [])
            cpu = hooks.setdefault(f"{mode}.{hook}.cpu", [])
            setattr(tracker, hook, timed(getattr(tracker, hook), into, cpu))
        host.register(tracker, "mlflow")
    threads = set(threading.enumerate())
    started, cpu = time.perf_counter(), cpu_seconds()
    add_task(store, task, host, settings, notify=common.quiet)
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    LEFT_THREADS.update(t.name for t in set(threading.enumerate()) - threads if t.is_alive())
    shutil.rmtree(store)
    return seconds, cpu


def in_process(args: Any, settings: TrainSettings, spec: InputSpec | None) -> dict[str, Any]:
    wall: dict[str, list[float]] = {mode: [] for mode in MODES}
    cpu: dict[str, list[float]] = {mode: [] for mode in MODES}
    hooks: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        base, template = prepare(folder, settings.epochs, args.after, spec)
        for mode in MODES:  # warm-up: imports, caches, first MLflow connection
            one_run(mode, base, template, folder, settings, args.task, {})
        for repeat in range(args.repeats):
            for mode in MODES[repeat % 3 :] + MODES[: repeat % 3]:
                seconds, used = one_run(mode, base, template, folder, settings, args.task, hooks)
                wall[mode].append(seconds)
                cpu[mode].append(used)
    if LEFT_THREADS:
        print(f"threads left running after a run: {', '.join(sorted(LEFT_THREADS))}")
    result = summarise(wall, cpu, MODES)
    for kind, unit, off in (("", "wall", "median"), (".cpu", "CPU", "median_cpu")):
        epoch_s = statistics.median(hooks[f"registry.dmt_epoch_end{kind}"])
        start_s = statistics.median(hooks[f"registry.dmt_run_started{kind}"])
        end_s = statistics.median(hooks[f"registry.dmt_run_finished{kind}"])
        share = 100 * epoch_s / (result[off]["off"] / settings.epochs)
        print(
            f"inside the hooks (registry mode, {unit}): {1000 * epoch_s:.0f} ms per epoch "
            f"({share:.1f}% of an epoch), {start_s:.2f} s when the run starts, {end_s:.2f} s "
            "when it ends"
        )
    return {**result, "hook_seconds": hooks}


def summarise(
    wall: dict[str, list[float]], cpu: dict[str, list[float]], modes: tuple[str, ...]
) -> dict[str, Any]:
    """Medians and ratios to the first mode, printed as a table."""
    median = {m: statistics.median(wall[m]) for m in modes}
    median_cpu = {m: statistics.median(cpu[m]) for m in modes}
    ratio = {m: median[m] / median[modes[0]] for m in modes}
    ratio_cpu = {m: median_cpu[m] / median_cpu[modes[0]] for m in modes}
    print(f"{'mode':12} {'wall s':>7} {'ratio':>6} {'CPU s':>7} {'ratio':>6}   wall / CPU runs")
    for m in modes:
        runs = " ".join(f"{w:.2f}/{c:.2f}" for w, c in zip(wall[m], cpu[m], strict=True))
        print(
            f"{m:12} {median[m]:7.2f} {ratio[m]:6.3f} {median_cpu[m]:7.2f} {ratio_cpu[m]:6.3f}   {runs}"
        )
    return {"seconds": wall, "cpu_seconds": cpu, "median": median, "median_cpu": median_cpu,
            "ratio": ratio, "ratio_cpu": ratio_cpu}  # fmt: skip


def dmt(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "dmtcore", *arguments]


def command_env() -> dict[str, str]:
    """No DMT_/MLFLOW_ settings of the caller; one torch thread, as the other benchmarks."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DMT_", "MLFLOW_"))}
    env.update(OMP_NUM_THREADS="1", DMT_PROGRESS="never")
    return env


def run_child(command: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall and CPU seconds (the child's and its waited-for children's) of a command, and its
    stdout; any process it leaves behind in its process group is reported."""
    started = time.perf_counter()
    child = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    out, err = child.communicate()
    seconds = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # only this child ran since the last
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {child.returncode}: {err.decode()[-2000:]}")
    with_group = subprocess.run(["pgrep", "-g", str(child.pid)], capture_output=True, text=True)
    if with_group.stdout.strip():
        print(f"note: {command[3:5]} left processes: {with_group.stdout.split()}", file=sys.stderr)
    return seconds, usage.ru_utime + usage.ru_stime, out.decode()


def whole_command(args: Any, epochs: int) -> dict[str, Any]:
    env = command_env()
    wall: dict[str, list[float]] = {mode: [] for mode in COMMAND_MODES}
    cpu: dict[str, list[float]] = {mode: [] for mode in COMMAND_MODES}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    spent = before.ru_utime + before.ru_stime

    def measured(command: list[str]) -> tuple[float, float]:
        nonlocal spent
        seconds, total, _ = run_child(command, env)
        used, spent = total - spent, total
        return seconds, used

    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        base = folder / "base"
        init = ["init", "--store", str(base)] + (["--input", args.input] if args.input else [])
        measured(dmt(*init))
        measured(dmt("add-task", args.after, "--store", str(base), "--epochs", str(epochs)))
        for repeat in range(args.repeats + 1):  # the first round warms the OS's file cache
            for mode in COMMAND_MODES[repeat % 2 :] + COMMAND_MODES[: repeat % 2]:
                store = folder / f"run-{repeat}-{mode}"
                shutil.copytree(base, store)
                options = ["--no-tracking"] if mode == "no-tracking" else []
                command = dmt("add-task", args.task, "--store", str(store), "--epochs", str(epochs))
                seconds, used = measured(command + options)
                shutil.rmtree(store)
                if repeat:
                    wall[mode].append(seconds)
                    cpu[mode].append(used)
        imports = mlflow_import_cpu(env, measured)
    result = summarise(wall, cpu, COMMAND_MODES)
    gap = result["median_cpu"]["tracked"] - result["median_cpu"]["no-tracking"]
    print(
        f"importing mlflow on top of torch and dmt: {imports:.2f} CPU s, "
        f"{100 * imports / gap if gap > 0 else float('nan'):.0f}% of the tracked command's extra CPU"
    )
    return {**result, "mlflow_import_cpu": imports}


IMPORTS = """
import time, dmtcore.operations, dmt_plugins.digits, torch
started = time.process_time()
{}
print(time.process_time() - started)
"""


def mlflow_import_cpu(env: dict[str, str], measured: Callable[..., Any]) -> float:
    """Median CPU seconds, in a fresh process, of the mlflow modules a tracked add-task imports
    (the client, the entities, the pyfunc flavour), after torch and dmt."""
    statement = "import mlflow.tracking, mlflow.entities, mlflow.pyfunc, mlflow.models"
    values = []
    for _ in range(3):
        _, _, out = run_child([sys.executable, "-c", IMPORTS.format(statement)], env)
        values.append(float(out.split()[-1]))
    measured([sys.executable, "-c", "pass"])  # keeps the running total of children's CPU
    return statistics.median(values)


def main() -> None:
    parser = common.parser(__doc__.splitlines()[0], "tracking_overhead")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--task", default="digits.even", help="the task added")
    parser.add_argument("--after", default="digits.class", help="the task already in the store")
    parser.add_argument(
        "--input", default=None, help="store input spec [default: the first task's]"
    )
    parser.add_argument(
        "--command", action="store_true", help="also time the whole command, fresh processes"
    )
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.epochs = 2, 1
    common.setup(args)
    settings = TrainSettings(epochs=args.epochs)
    spec = InputSpec.parse(args.input) if args.input else None
    print(f"add-task {args.task} after {args.after}, {args.epochs} epochs, "
          f"median of {args.repeats} interleaved runs, {args.threads} torch thread(s)")  # fmt: skip
    print(f"code: {Path(add_task.__code__.co_filename).parent.parent}")
    print("in-process:")
    result: dict[str, Any] = {"task": args.task, "after": args.after, "epochs": args.epochs,
                              "repeats": args.repeats, **in_process(args, settings, spec)}  # fmt: skip
    if args.command:
        print("whole command (fresh process each):")
        result["command"] = whole_command(args, args.epochs)
    common.report(args, time.strftime("measured %Y-%m-%d %H:%M"), result)


if __name__ == "__main__":
    main()
