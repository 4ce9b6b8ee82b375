"""Tracking overhead: `add-task` with MLflow tracking (and registration) vs `--no-tracking`.

Adds a task (default `digits.even`) to a store holding another (`digits.class`), in-process, in
three modes measured side by side and interleaved (the order rotates every repeat), after one
warm-up of each:

    off        --no-tracking
    tracking   runs, params, per-epoch metrics, gate time series, artifacts (--no-register)
    registry   all of the above plus publishing the version to the Model Registry (default)

Each run gets a fresh copy of the same store and of a migrated SQLite tracking database, so no
run pays MLflow's schema migration. Prints medians, the ratio to `off`, and the time spent
inside the tracking hooks (per epoch, and once per run); writes JSON.

    python benchmarks/tracking_overhead.py [--quick] [--repeats 5] [--epochs 5]
        [--task shapes.red-circle --after shapes.kind --input 3x16x16] [--json out.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from dmtcore.names import InputSpec
from dmtcore.operations import add_task, init_store
from dmtcore.plugins import create_plugin_host
from dmtcore.training import TrainSettings

MODES = ("off", "tracking", "registry")
HOOKS = ("dmt_run_started", "dmt_epoch_end", "dmt_run_finished")


def quiet(message: str) -> None:
    pass


def prepare(folder: Path, epochs: int, first: str, spec: InputSpec | None) -> tuple[Path, Path]:
    """A store with the first task, and a migrated tracking database to copy per run."""
    from mlflow.tracking import MlflowClient

    base = folder / "base"
    host = create_plugin_host()
    if spec is not None:
        init_store(base, host, spec)
    add_task(base, first, host, TrainSettings(epochs=epochs), notify=quiet)
    template = folder / "template.db"
    MlflowClient(tracking_uri=f"sqlite:///{template}").search_experiments()
    return base, template


def timed(method: Callable[..., None], into: list[float]) -> Callable[..., None]:
    @functools.wraps(method)
    def wrapper(*args: object, **kwargs: object) -> None:
        started = time.perf_counter()
        method(*args, **kwargs)
        into.append(time.perf_counter() - started)

    return wrapper


def one_run(mode: str, base: Path, template: Path, folder: Path, settings: TrainSettings, task: str,
            hooks: dict[str, list[float]]) -> float:  # fmt: skip
    """Seconds of one add-task; the time spent inside each tracking hook goes into `hooks`."""
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
            setattr(tracker, hook, timed(getattr(tracker, hook), into))
        host.register(tracker, "mlflow")
    started = time.perf_counter()
    add_task(store, task, host, settings, notify=quiet)
    seconds = time.perf_counter() - started
    shutil.rmtree(store)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 repeats of 1 epoch")
    parser.add_argument("--task", default="digits.even", help="the task added")
    parser.add_argument("--after", default="digits.class", help="the task already in the store")
    parser.add_argument(
        "--input", default=None, help="store input spec [default: the first task's]"
    )
    parser.add_argument(
        "--json", type=Path, default=Path("benchmarks/results/tracking_overhead.json")
    )
    args = parser.parse_args()
    repeats, epochs = (2, 1) if args.quick else (args.repeats, args.epochs)
    settings = TrainSettings(epochs=epochs)
    spec = InputSpec.parse(args.input) if args.input else None
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    hooks: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        base, template = prepare(folder, epochs, args.after, spec)
        for mode in MODES:  # warm-up: imports, caches, first MLflow connection
            one_run(mode, base, template, folder, settings, args.task, {})
        for repeat in range(repeats):
            for mode in MODES[repeat % 3 :] + MODES[: repeat % 3]:
                times[mode].append(
                    one_run(mode, base, template, folder, settings, args.task, hooks)
                )
    medians = {mode: statistics.median(values) for mode, values in times.items()}
    print(
        f"add-task {args.task} after {args.after}, {epochs} epochs, median of {repeats} interleaved runs"
    )
    print(f"{'mode':10} {'median s':>9} {'ratio':>7}   runs")
    for mode in MODES:
        runs = " ".join(f"{t:.2f}" for t in times[mode])
        print(f"{mode:10} {medians[mode]:9.2f} {medians[mode] / medians['off']:7.3f}   {runs}")
    epoch_s = statistics.median(hooks["registry.dmt_epoch_end"])
    start_s = statistics.median(hooks["registry.dmt_run_started"])
    end_s = statistics.median(hooks["registry.dmt_run_finished"])
    share = 100 * epoch_s / (medians["off"] / epochs)
    print(
        f"inside the hooks (registry mode): {1000 * epoch_s:.0f} ms per epoch ({share:.1f}% of an "
        f"epoch), {start_s:.2f} s when the run starts, {end_s:.2f} s when it ends"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    ratio = {m: medians[m] / medians["off"] for m in MODES}
    result = {"task": args.task, "after": args.after, "epochs": epochs, "repeats": repeats,
              "seconds": times, "median": medians, "ratio": ratio, "hook_seconds": hooks}  # fmt: skip
    args.json.write_text(json.dumps(result, indent=2))
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
