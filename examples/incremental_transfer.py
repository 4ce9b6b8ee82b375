"""Incremental transfer (DMT §4.4, Fig. 6): a new task added to trained columns vs trained alone.

For each pair (new task, its trained predecessors) the new task is trained twice with the same
seed and settings: alone in a fresh store (the single-task column), and with `dmt add-task` on a
store that already holds the predecessors. Validation error is recorded every few optimiser
steps; the script prints how many steps each needs to reach the accuracy the single-task column
reaches at the end, and plots both error curves.

    python examples/incremental_transfer.py [--kind ttc] [--quick] [--plot incremental.png]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from dmtcore.hooks.host import create_plugin_host
from dmtcore.hooks.specs import hookimpl
from dmtcore.operations import add_task, init_store, train_tasks
from dmtcore.tasks.names import InputSpec
from dmtcore.train.loop import TrainSettings

PAIRS = [
    ("digits.even", ["digits.class"], InputSpec(1, 8, 8)),
    ("shapes.red-circle", ["shapes.kind", "shapes.colour"], InputSpec(3, 12, 12)),
]


class Curve:
    """Records (step, primary metric) of the task being trained, from the lifecycle hook."""

    def __init__(self, task: str, metric: str) -> None:
        self.task, self.metric, self.points = task, metric, []

    @hookimpl
    def dmt_epoch_end(self, run: Any, report: Any) -> None:
        if self.task in report.val_metrics:
            self.points.append((report.step, report.val_metrics[self.task][self.metric]))


def curve(
    kind: str,
    task: str,
    parents: list[str],
    spec: InputSpec,
    settings: TrainSettings,
    parent_settings: TrainSettings,
    init_from: str = "none",
) -> list[tuple[int, float]]:
    """Validation points of `task` added after `parents`; `init_from` as `dmt add-task`'s."""
    host = create_plugin_host()
    metric = host.kinds.tasks[task].primary_metric
    with tempfile.TemporaryDirectory() as folder:
        store = Path(folder) / "store"
        init_store(store, host, spec, connection=kind)
        if parents:
            train_tasks(store, parents, host, parent_settings, notify=lambda m: None)
        recorder = Curve(task, metric)
        host.register(recorder, "curve")
        add_task(store, task, host, settings, notify=lambda m: None, init_from=init_from)
    return recorder.points


def steps_to_reach(points: list[tuple[int, float]], target: float) -> int | None:
    return next((step for step, value in points if value >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", default="ttc", help="connection kind of the incremental store")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--every", type=int, default=5, help="validate every N steps")
    parser.add_argument("--quick", action="store_true", help="digits only, 2 epochs")
    parser.add_argument("--plot", type=Path, default=Path("incremental.png"))
    args = parser.parse_args()
    pairs = PAIRS[:1] if args.quick else PAIRS
    epochs = 2 if args.quick else args.epochs
    settings = TrainSettings(epochs=epochs, batch_size=64, eval_every=args.every)
    parent_settings = TrainSettings(epochs=epochs, batch_size=64)
    curves = {}
    for task, parents, spec in pairs:
        alone = curve(args.kind, task, [], spec, settings, parent_settings)
        added = curve(args.kind, task, parents, spec, settings, parent_settings)
        target = max(value for _, value in alone[-3:])  # what the single column reaches at the end
        alone_steps, added_steps = steps_to_reach(alone, target), steps_to_reach(added, target)
        ratio = f"{alone_steps / added_steps:.1f}x fewer" if added_steps else "never reached"
        print(
            f"{task} ({args.kind}, after {' + '.join(parents)}): reaching {target:.3f} took "
            f"{alone_steps} steps alone, {added_steps} added to trained columns ({ratio})"
        )
        curves[task] = (alone, added, target)
    plot(curves, args.kind, args.plot)
    print(f"plot written to {args.plot}")


def plot(curves: dict[str, Any], kind: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 3.6), squeeze=False)
    for axis, (task, (alone, added, target)) in zip(axes[0], curves.items(), strict=True):
        for points, label in (
            (alone, "trained alone"),
            (added, f"added to trained columns ({kind})"),
        ):
            axis.plot([s for s, _ in points], [1 - v for _, v in points], label=label)
        axis.axhline(1 - target, color="grey", linestyle=":", label="single-task final error")
        axis.set_title(task)
        axis.set_xlabel("optimiser steps")
        axis.set_ylabel("validation error (1 - primary metric)")
        axis.set_yscale("log")
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
