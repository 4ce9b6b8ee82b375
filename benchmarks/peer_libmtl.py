"""dmt's joint cross-stitch training vs LibMTL's Cross_stitch: the same columns, side by side.

What each side runs, each round in a fresh process of its own (the order rotates per round):

- dmt: `dmt train digits.class digits.even digits.large digits.prime --connection
  cross-stitch` on a new store, through `dmtcore.operations.train_tasks` (tracking off, as
  benchmarks/joint_training.py calls it). The tasks share their images, so joint mode `auto`
  runs one pass per batch: every column once, the four losses summed, one Adam step.
- LibMTL 1.1.5 (benchmarks/peers/libmtl_side.py, in its own venv benchmarks/.venvs/libmtl,
  made on first use by `_peers.peer_venv`; LibMTL is never a dependency of dmt): its
  `Cross_stitch` architecture and `EW` weighting (the losses summed, one backward, one Adam
  step) trained by its own `Trainer.train`, testing on the validation split after every epoch.

Why it is comparable: the same four dmt-cnn columns (dmt's backbone factory builds both; the
table shows that columns and heads have the same parameter count), linear heads from dmt's
heads module, cross-entropy losses, the digits train/val split dmt trains on (this process
loads it through dmt's task registry and hands LibMTL the very tensors in an .npz file), the
same epochs, batch size, Adam learning rate, last partial batch dropped on both sides (the
same optimiser steps per epoch) and one validation pass per epoch; one torch thread each.

Where they differ, as each library does it: dmt's cross-stitch units are per channel, per
task and source (initialised 0.9/0.1, learning at 100× the rate), LibMTL's one scalar per
stage and source shared by every task (initialised to 1, at the base rate); mixing costs
little next to the convolutions. dmt's timed call also loads the digits, snapshots the best
epoch and commits the store; LibMTL's builds its model and trains. One-time imports stay
outside both timers: LibMTL's Adam would import torch._dynamo on its first step (about a
CPU second; dmt's optimiser avoids it), so the peer imports it first.

dmt re-estimates BatchNorm statistics before each validation when a run is short (by default
under 80 one-pass steps: `--quick`, or 3 epochs or fewer of the full split), which costs it
CPU time and gains it accuracy there; the default 10 epochs do not (column "BN recal.").

Measured: process CPU seconds of each training call (steadier than wall time on a shared
machine; with one thread what it takes on an idle one); the ratio dmt ÷ LibMTL per round,
median over rounds (target ≤ 1.2); and each side's mean validation accuracy over the four
tasks at its best epoch (dmt's rule: mean relative gain of the primary metrics; LibMTL's:
its own, on accuracy), so that speed is not bought with accuracy.

    python benchmarks/peer_libmtl.py [--quick] [--epochs 10] [--rounds 2] [--samples 0]
        [--batch-size 64] [--lr 0.001] [--no-peer] [--threads 1]

`--no-peer` (or a peer venv that cannot be made, e.g. offline) runs the dmt side alone.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # dmtcore from this repository, whichever venv runs us
TASKS = ["digits.class", "digits.even", "digits.large", "digits.prime"]
REQUIREMENTS = HERE / "peers" / "requirements-libmtl.txt"
PEER_SIDE = HERE / "peers" / "libmtl_side.py"
TARGET = 1.2


def save_data(path: Path, samples: int) -> dict[str, Any]:
    """The tasks' train/val tensors as dmt's task registry serves them, to an .npz (no
    pickle); returns what the peer needs besides them. All four tasks share their images."""
    import _common as common
    import numpy as np

    from dmtcore.tasks.names import InputSpec
    from dmtcore.tasks.spec import DataRequest

    host = common.plugin_host(samples or None)
    arrays: dict[str, Any] = {}
    specs = [host.kinds.task(t) for t in TASKS]
    for spec in specs:
        data = spec.datasets(DataRequest(Path("data"), InputSpec.from_shape(spec.input_shape)))
        for split in ("train", "val"):
            images, labels = (t.numpy() for t in getattr(data, split).tensors)
            seen = arrays.setdefault(f"x_{split}", images)
            assert np.array_equal(seen, images), f"{spec.name} has other {split} images"
            arrays[f"y_{split}_{spec.name.split('.')[-1]}"] = labels
    np.savez(path, **arrays)
    return {
        "data": str(path),
        "input_shape": list(specs[0].input_shape),
        "num_outputs": [s.num_outputs for s in specs],
        "train_images": len(arrays["x_train"]),
        "val_images": len(arrays["x_val"]),
    }


def dmt_side(config: dict[str, Any]) -> dict[str, Any]:
    """One `dmt train` of the four tasks on a new store (a fresh process: run by main)."""
    import _common as common
    import torch

    from dmtcore.operations import train_tasks
    from dmtcore.store.checkpoint import load_model
    from dmtcore.store.directory import Store
    from dmtcore.train.loop import TrainSettings

    torch.set_num_threads(config["threads"])
    host = common.plugin_host(config["samples"] or None)
    recorder = common.EpochRecorder()
    host.register(recorder, "benchmark-epochs")
    settings = TrainSettings(
        epochs=config["epochs"],
        batch_size=config["batch_size"],
        lr=config["lr"],
        seed=config["seed"],
        device="cpu",
    )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "store"
        cpu = time.process_time()
        result = train_tasks(
            path, TASKS, host, settings, connection="cross-stitch", notify=common.quiet
        )
        cpu = time.process_time() - cpu
        store = Store.open(path)
        model = load_model(store, store.manifest(), host.kinds)
    assert model is not None
    connections = sum(p.numel() for p in model.connections.parameters())
    return {
        "cpu_s": cpu,
        "epochs_cpu_s": sum(recorder.take()[1]),
        "accuracy": {t: result.metrics[t]["accuracy"] for t in TASKS},
        "best_epoch": result.summary["best_epoch"],
        "joint_mode": result.summary["joint_mode"],
        "bn_recalibrated": result.summary["bn_recalibrated"],
        "params_columns_heads": sum(p.numel() for p in model.parameters()) - connections,
        "params_connections": connections,
    }


def mean(values: Any) -> float:
    values = list(values)
    return sum(values) / len(values)


def main() -> None:
    import _common as common
    import _peers

    p = common.parser(__doc__.splitlines()[0], "peer_libmtl")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--samples", type=int, default=0, help="training images per task; 0: all")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--no-peer", action="store_true", help="the dmt side alone (no LibMTL venv)")
    args = p.parse_args()
    if args.quick:
        args.epochs, args.rounds, args.samples = 1, 1, 256
    if args.device != "cpu":
        raise SystemExit("peer_libmtl compares on the CPU only (LibMTL's side runs there)")
    common.setup(args)
    peer, skipped = None, "--no-peer"
    if not args.no_peer:
        try:
            peer = _peers.peer_venv("libmtl", REQUIREMENTS)
        except _peers.PeerUnavailable as exc:
            skipped = str(exc)
    if peer is None:
        print(f"LibMTL side skipped: {skipped}", file=sys.stderr)
    sides = {"dmt": (Path(sys.executable), Path(__file__))}
    if peer is not None:
        sides["libmtl"] = (peer, PEER_SIDE)
    with tempfile.TemporaryDirectory() as folder:
        config = {
            "tasks": TASKS,
            "epochs": args.epochs,
            "samples": args.samples,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "seed": 0,
            "threads": args.threads,
            **save_data(Path(folder) / "digits.npz", args.samples),
        }
        runs = common.interleaved(
            {
                name: lambda python=python, script=script: _peers.run_json(python, script, config)
                for name, (python, script) in sides.items()
            },
            args.rounds,
        )
    assert all(r["joint_mode"] == "one-pass" for r in runs["dmt"]), "dmt did not run one-pass"
    rows, result = [], {"tasks": TASKS, "config": config, "raw": runs, "peer_skipped": None}
    for name, side in runs.items():
        accuracy = {t: common.median([r["accuracy"][t] for r in side]) for t in TASKS}
        row = {
            "side": name,
            "cpu_s": common.median([r["cpu_s"] for r in side]),
            "epochs_cpu_s": common.median([r["epochs_cpu_s"] for r in side]),
            "mean_accuracy": common.median([mean(r["accuracy"].values()) for r in side]),
            "accuracy": accuracy,
            "best_epoch": common.median([r["best_epoch"] for r in side]),
            "bn_recalibrated": side[0].get("bn_recalibrated"),
            "params_columns_heads": side[0]["params_columns_heads"],
            "params_connections": side[0]["params_connections"],
        }
        rows.append(row)
    result["rows"] = rows
    headers = ["side", "CPU s", "epochs CPU s", "mean val acc", *TASKS, "best epoch", "BN recal.",
               "columns+heads params", "connection params"]  # fmt: skip
    text = common.table(
        headers,
        [
            [r["side"], r["cpu_s"], r["epochs_cpu_s"], f"{r['mean_accuracy']:.4f}"]
            + [f"{r['accuracy'][t]:.4f}" for t in TASKS]
            + [r["best_epoch"], {True: "yes", False: "no"}.get(r["bn_recalibrated"], "-")]
            + [r["params_columns_heads"], r["params_connections"]]
            for r in rows
        ],
    )
    text += f"\n{args.epochs} epochs, {config['train_images']} training images, "
    text += f"{config['val_images']} validation, batch {args.batch_size}, {args.rounds} round(s)"
    if "libmtl" in runs:
        pairs = list(zip(runs["dmt"], runs["libmtl"], strict=True))
        ratio = common.median([d["cpu_s"] / lib["cpu_s"] for d, lib in pairs])
        epochs = common.median([d["epochs_cpu_s"] / lib["epochs_cpu_s"] for d, lib in pairs])
        result["ratio_cpu"], result["ratio_epochs_cpu"] = ratio, epochs
        text += f"\ndmt ÷ LibMTL CPU s: {ratio:.2f} (target ≤ {TARGET}: "
        text += f"{common.verdict(ratio, TARGET)}); the epochs alone: {epochs:.2f}"
        batch_stats = common.median([r["final_accuracy_batch_stats"] for r in runs["libmtl"]])
        result["libmtl_final_accuracy_batch_stats"] = batch_stats
        text += "\nLibMTL's final model with BatchNorm on batch statistics (untimed diagnostic): "
        text += f"mean val acc {batch_stats:.4f}"
    else:
        result["peer_skipped"] = skipped
        text += f"\nLibMTL side skipped: {skipped}"
    common.report(args, text, result)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(json.dumps(dmt_side(json.loads(sys.argv[2]))))
    else:
        main()
