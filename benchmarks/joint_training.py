"""Joint training of tasks that share their images: one pass per batch vs taking turns.

`dmt train digits.class digits.even digits.large digits.prime` on an empty store of each
connection kind, once with `--joint-mode one-pass` (every column runs once per batch, the four
losses summed: one optimiser step per batch) and once with `--joint-mode turns` (one batch of
each task in turn, each pass running every column: four forward passes and four optimiser
steps per batch), same seed, epochs and data, tracking off, through
`dmtcore.operations.train_tasks`. The runs of a round are interleaved (the order rotates).

Measured: process CPU seconds of the whole call (data, training, validation, commit; with one
thread what it takes on an idle machine), and of the epochs after the first; the ratio turns ÷
one-pass (the speed-up) per round, median over rounds; and each task's primary validation
metric at the best epoch, per mode, so that the speed-up is not bought with accuracy.

    python benchmarks/joint_training.py [--quick] [--connections cross-stitch ttc]
        [--epochs 10] [--rounds 1] [--device cpu|cuda] [--threads 1]
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as common

TASKS = ["digits.class", "digits.even", "digits.large", "digits.prime"]
MODES = ("one-pass", "turns")


def train_run(
    folder: Path, connection: str, mode: str, host: Any, recorder: Any, settings: Any
) -> dict[str, Any]:
    """One `dmt train` of the four tasks on a new store; CPU seconds and the metrics."""
    from dataclasses import replace

    from dmtcore.operations import train_tasks

    store = folder / f"{connection}-{mode}"
    shutil.rmtree(store, ignore_errors=True)
    recorder.take()
    cpu, wall = time.process_time(), time.perf_counter()
    result = train_tasks(
        store,
        TASKS,
        host,
        replace(settings, joint_mode=mode),
        connection=connection,
        notify=common.quiet,
    )
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    _, epochs = recorder.take()
    ran = result.summary["joint_mode"]
    assert ran == mode, f"asked for {mode}, ran {ran}"
    shutil.rmtree(store)
    primary = {t: host.kinds.task(t).primary_metric for t in TASKS}
    return {
        "cpu_s": cpu,
        "wall_s": wall,
        "cpu_epochs": epochs,
        "metrics": {t: result.metrics[t][primary[t]] for t in TASKS},
        "best_epoch": result.summary["best_epoch"],
    }


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], "joint_training")
    p.add_argument("--connections", nargs="+", default=["cross-stitch", "ttc"])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--samples", type=int, default=0, help="training images per task; 0: all")
    args = p.parse_args()
    if args.quick:
        args.connections, args.epochs, args.rounds, args.samples = ["cross-stitch"], 1, 1, 256
    device = common.setup(args)
    from dmtcore.train.loop import TrainSettings

    settings = TrainSettings(epochs=args.epochs, seed=0, **device)
    host = common.plugin_host(args.samples or None)
    recorder = common.EpochRecorder()
    host.register(recorder, "benchmark-epochs")
    rows, raw = [], {}
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        for connection in args.connections:
            runs = common.interleaved(
                {
                    mode: lambda mode=mode, connection=connection: train_run(  # type: ignore[misc]
                        folder, connection, mode, host, recorder, settings
                    )
                    for mode in MODES
                },
                args.rounds,
            )
            raw[connection] = runs
            pairs = list(zip(runs["turns"], runs["one-pass"], strict=True))

            def later(run: dict[str, Any]) -> float:
                return sum(run["cpu_epochs"][1:] or run["cpu_epochs"])

            row: dict[str, Any] = {
                "connection": connection,
                "epochs": args.epochs,
                "one_pass_cpu_s": common.median([r["cpu_s"] for r in runs["one-pass"]]),
                "turns_cpu_s": common.median([r["cpu_s"] for r in runs["turns"]]),
                "speedup_cpu": common.median([t["cpu_s"] / o["cpu_s"] for t, o in pairs]),
                "speedup_later_epochs_cpu": common.median([later(t) / later(o) for t, o in pairs]),
            }
            for mode in MODES:
                row[f"{mode}_metrics"] = {
                    t: common.median([r["metrics"][t] for r in runs[mode]]) for t in TASKS
                }
                row[f"{mode}_mean_metric"] = common.median(
                    [sum(r["metrics"].values()) / len(TASKS) for r in runs[mode]]
                )
            rows.append(row)
    headers = ["connection", "epochs", "one-pass cpu s", "turns cpu s", "turns ÷ one-pass",
               "later epochs", "one-pass mean metric", "turns mean metric"]  # fmt: skip
    table_rows = [
        [
            r["connection"],
            r["epochs"],
            r["one_pass_cpu_s"],
            r["turns_cpu_s"],
            r["speedup_cpu"],
            r["speedup_later_epochs_cpu"],
            f"{r['one-pass_mean_metric']:.4f}",
            f"{r['turns_mean_metric']:.4f}",
        ]
        for r in rows
    ]
    metric_rows = [
        [
            f"{r['connection']} {t}",
            f"{r['one-pass_metrics'][t]:.4f}",
            f"{r['turns_metrics'][t]:.4f}",
        ]
        for r in rows
        for t in TASKS
    ]
    text = (
        common.table(headers, table_rows)
        + "\n\n"
        + common.table(["task (best-epoch validation)", "one-pass", "turns"], metric_rows)
    )
    common.report(args, text, {"tasks": TASKS, "rows": rows, "raw": raw})


if __name__ == "__main__":
    main()
