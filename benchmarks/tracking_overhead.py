"""Tracking overhead: `add-task` with MLflow tracking (and registration) vs `--no-tracking`.

Adds `digits.even` to a store holding `digits.class`, in-process, in three modes measured side
by side and interleaved (the order rotates every repeat), after one warm-up of each:

    off        --no-tracking
    tracking   runs, params, per-epoch metrics, gate time series, artifacts (--no-register)
    registry   all of the above plus publishing the version to the Model Registry (default)

Each mode gets a fresh copy of the same store and of a migrated SQLite tracking database, so
no run pays MLflow's schema migration. Prints medians and the ratio to `off`; writes JSON.

    python benchmarks/tracking_overhead.py [--quick] [--repeats 5] [--epochs 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from dmtcore.operations import add_task
from dmtcore.plugins import create_plugin_host
from dmtcore.training import TrainSettings

MODES = ("off", "tracking", "registry")


def prepare(folder: Path, epochs: int) -> tuple[Path, Path]:
    """A store with digits.class, and a migrated tracking database to copy per run."""
    from mlflow.tracking import MlflowClient

    base = folder / "base"
    add_task(
        base,
        "digits.class",
        create_plugin_host(),
        TrainSettings(epochs=epochs),
        notify=lambda m: None,
    )
    template = folder / "template.db"
    MlflowClient(tracking_uri=f"sqlite:///{template}").search_experiments()
    return base, template


def one_run(mode: str, base: Path, template: Path, folder: Path, epochs: int) -> float:
    from dmt_registry.tracking import MlflowTracker, default_tracking_uri

    store = folder / f"run-{mode}-{time.perf_counter_ns()}"
    shutil.copytree(base, store)
    host = create_plugin_host()
    if mode != "off":
        shutil.copy(template, store / "mlflow.db")
        host.register(
            MlflowTracker(default_tracking_uri(store), embedded=True, register=mode == "registry"),
            "mlflow",
        )
    started = time.perf_counter()
    add_task(store, "digits.even", host, TrainSettings(epochs=epochs), notify=lambda m: None)
    seconds = time.perf_counter() - started
    shutil.rmtree(store)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 repeats of 1 epoch")
    parser.add_argument(
        "--json", type=Path, default=Path("benchmarks/results/tracking_overhead.json")
    )
    args = parser.parse_args()
    repeats, epochs = (2, 1) if args.quick else (args.repeats, args.epochs)
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        base, template = prepare(folder, epochs)
        for mode in MODES:  # warm-up: imports, caches, first MLflow connection
            one_run(mode, base, template, folder, epochs)
        for repeat in range(repeats):
            order = MODES[repeat % 3 :] + MODES[: repeat % 3]
            for mode in order:
                times[mode].append(one_run(mode, base, template, folder, epochs))
    medians = {mode: statistics.median(values) for mode, values in times.items()}
    print(
        f"add-task digits.even after digits.class, {epochs} epochs, median of {repeats} interleaved runs"
    )
    print(f"{'mode':10} {'median s':>9} {'ratio':>7}   runs")
    for mode in MODES:
        runs = " ".join(f"{t:.2f}" for t in times[mode])
        print(f"{mode:10} {medians[mode]:9.2f} {medians[mode] / medians['off']:7.3f}   {runs}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    result = {"epochs": epochs, "repeats": repeats, "seconds": times, "median": medians,
              "ratio": {m: medians[m] / medians["off"] for m in MODES}}  # fmt: skip
    args.json.write_text(json.dumps(result, indent=2))
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
