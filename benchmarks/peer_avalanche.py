"""Peer benchmark: adding the (k+1)-th task in dmt and in Avalanche's progressive neural network.

Both sides grow the same column, an MLP of `--layers` × (Linear `--width` + ReLU) on the
flattened 8×8 digits (dmt: backbone `mlp` from the benchmark plugin `_mlp_backbone.py`;
Avalanche: `avalanche.models.PNN` with its default MLP adapters), over the same digits tensors,
one task per step: the first k of digits.class, digits.even, digits.large, digits.prime,
digits.loop are already there (each trained for one epoch: only their presence matters for
timing), and the benchmark measures adding digits.curved, interleaved, medians over rounds,
one torch thread in every process.

    dmt        a store (connection ttc) holding k frozen tasks; `add_task` / `dmt add-task
               digits.curved --init-from none --no-tracking`: a new column, ttc connections
               from the k frozen columns between its stages, a linear head. Frozen columns run
               without autograd and their features are cached after the first epoch.
    Avalanche  `PNNStrategy.train(experience k)` on a task-incremental benchmark built by
               `tensors_benchmark` from the same tensors (experience i = task i): the PNN adds
               a column with MLP adapters from the k earlier columns and a head, then trains
               them, running the k frozen columns forward every step. Run by
               `peers/avalanche_pnn.py` in its own venv (benchmarks/.venvs/avalanche, built on
               first use from peers/requirements-avalanche.txt), never in dmt's.

Why the work is comparable: the same training images (all 1,437 of digits' training split) and
validation images (360), `--epochs` epochs of shuffled batches of `--batch-size` with the last
partial batch dropped on both sides (Avalanche is told `drop_last=True`), so the same number of
Adam steps at the same learning rate; one validation pass over the new task's validation split
after every epoch on both sides (Avalanche's initial evaluation before the first epoch, which
dmt has no counterpart for, is switched off); both start the new column from fresh weights
(dmt's CLI default `--init-from auto` would add a probe of the stored columns). The steps and
validation passes each side actually ran are counted and printed. What differs is each method:
dmt's ttc gates are one scalar per source and stage boundary plus a BatchNorm, PNN's MLP
adapters are two Linear layers per layer (more weights to train), and dmt also keeps the best
epoch, checks and commits the frozen weights.

Each measured run is one fresh process per side, what a user runs per added task: dmt's is
`dmt add-task digits.curved -p _mlp_backbone.py --init-from none --no-tracking` on a copy of
the k-task store (run through a wrapper that times the add_task call inside it, as
cli_latency.py does); Avalanche's is `avalanche_pnn.py add`, which imports avalanche, loads the
.npy data, restores the k-column strategy from Avalanche's checkpoint (dill), trains
experience k and saves the checkpoint again. Reported, in CPU seconds (user + system, one
thread; CPU time rather than wall time because the machine is shared):
  (a) the add itself, imports and data excluded. dmt: the `add_task` call (opening the store
      and the task's data, training, committing the new version); Avalanche: the
      `strategy.train(experience k)` call (adapting the model, optimiser and data loader,
      training, evaluating). PNN's growth with k shows here. On both sides it is the
      first training call of a fresh process, after that side's imports.
  (b) the whole process, interpreter start to exit: this process's rusage of the child.
The ratios dmt ÷ Avalanche at each k are printed and written to
benchmarks/results/peer_avalanche.json; targets (issue 16): k = 1 ≤ 1.5, k = 4 ≤ 0.6.

`--quick` (k = 1, one epoch, one round) takes under a minute once the peer venv exists; its
first build installs torch into it (minutes, about 5.5 GB).

    python benchmarks/peer_avalanche.py [--quick] [--ks 1 4] [--epochs 5] [--rounds 5]
        [--batch-size 64] [--lr 1e-3] [--layers 2] [--width 100]
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import _common as common
from _peers import peer_venv

HERE = Path(__file__).resolve().parent
MLP_PLUGIN = HERE / "_mlp_backbone.py"
PEER_SCRIPT = HERE / "peers" / "avalanche_pnn.py"
REQUIREMENTS = HERE / "peers" / "requirements-avalanche.txt"
FROZEN = ("digits.class", "digits.even", "digits.large", "digits.prime", "digits.loop")
NEW = "digits.curved"
TARGETS = {1: 1.5, 4: 0.6}


def child_env() -> dict[str, str]:
    """The environment of every measured child: one thread, no dmt or MLflow settings from the
    caller's shell, no progress lines."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DMT_", "MLFLOW_"))}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", DMT_PROGRESS="never")
    return env


def child_cpu(command: list[str]) -> tuple[float, str]:
    """Run a command to its end; its CPU seconds (user + system, from rusage) and stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(command, capture_output=True, text=True, env=child_env())
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(
            f"{' '.join(command)} exited {result.returncode}:\n{result.stderr[-3000:]}"
        )
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, result.stdout


def write_data(folder: Path, host: Any, tasks: list[str]) -> None:
    """The digits tensors as dmt's tasks serve them: images once (the tasks share them),
    labels per task, as .npy files that the peer loads without pickle."""
    import numpy as np

    from dmtcore.tasks.names import InputSpec
    from dmtcore.tasks.spec import DataRequest

    request = DataRequest(data_dir=folder, input_spec=InputSpec(1, 8, 8), seed=0)
    for i, task in enumerate(tasks):
        data = host.kinds.tasks[task].datasets(request)
        for split, dataset in (("train", data.train), ("val", data.val)):
            images, labels = dataset.tensors
            if i == 0:
                np.save(folder / f"x_{split}.npy", images.numpy().astype(np.float32))
            np.save(folder / f"y_{split}_{task}.npy", labels.numpy().astype(np.int64))


def grow_stores(folder: Path, host: Any, ks: list[int], args: Any) -> dict[int, Path]:
    """dmt stores (mlp column, ttc) holding the first k of FROZEN, one epoch each."""
    from dmtcore.tasks.names import InputSpec
    from dmtcore.train.loop import TrainSettings

    options = (("layers", args.layers), ("width", args.width))
    growth = common.Growth("digits", NEW, FROZEN, InputSpec(1, 8, 8), options, backbone="mlp")
    settings = TrainSettings(epochs=1, batch_size=args.batch_size, lr=args.lr, device="cpu")
    return common.grow_stores(folder, growth, ks, host, settings)


# `dmt add-task` as `python -m dmtcore` runs it, with the add_task call's CPU seconds and the
# steps and validation passes it ran (from dmt_epoch_end) printed as the last line.
DMT_WRAPPER = """
import json, sys, time
import dmtcore.operations as operations
from dmtcore.runtime import interrupts
from dmtcore.cli import cli
from dmtcore.hooks.specs import hookimpl

class Steps:
    step = evals = 0
    @hookimpl
    def dmt_epoch_end(self, run, report):
        self.step, self.evals = report.step, self.evals + 1

measured = {}
inner = operations.add_task
def add_task(path, name, host, *args, **kwargs):
    steps = Steps()
    host.register(steps, "peer-benchmark-steps")
    started = time.process_time()
    result = inner(path, name, host, *args, **kwargs)
    measured.update(cpu=time.process_time() - started, steps=steps.step, evals=steps.evals,
                    val_metrics=result.metrics.get(name))
    return result
operations.add_task = add_task
interrupts.install()
cli(sys.argv[1:], prog_name="dmt", standalone_mode=False)
print("PEER " + json.dumps(measured))
"""


def dmt_add(store: Path, folder: Path, args: Any) -> dict[str, Any]:
    """(a) and (b) for dmt from one fresh `dmt add-task` process on a copy of the store: the
    add_task call's CPU seconds inside it, and its rusage as the whole command's."""
    copy = common.fresh_copy(store, folder, "dmt")
    command = [sys.executable, "-c", DMT_WRAPPER, "add-task", NEW, "-p", str(MLP_PLUGIN)]
    command += ["--store", str(copy), "--epochs", str(args.epochs), "--batch-size"]
    command += [str(args.batch_size), "--lr", str(args.lr), "--seed", "0", "--device", "cpu"]
    command += ["--init-from", "none", "--no-tracking"]
    cpu, stdout = child_cpu(command)
    shutil.rmtree(copy)
    lines = [line for line in stdout.splitlines() if line.startswith("PEER ")]
    return {**json.loads(lines[-1].removeprefix("PEER ")), "command_cpu": cpu}


def avalanche_add(python: Path, k: int, folder: Path, config: dict[str, Any]) -> dict[str, Any]:
    """(a) and (b) for Avalanche from one fresh process: it reports its training call's CPU
    seconds, and its rusage is the whole command's."""
    save_to = folder / "avalanche-out.ckpt"
    run = {**config, "k": k, "checkpoint": str(folder / f"k{k}.ckpt"), "save_to": str(save_to)}
    cpu, stdout = child_cpu([str(python), str(PEER_SCRIPT), "add", json.dumps(run)])
    save_to.unlink(missing_ok=True)
    data = json.loads(stdout.strip().splitlines()[-1])
    return {"cpu": data["train_cpu"], "command_cpu": cpu, **data}


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], "peer_avalanche")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 4])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--layers", type=int, default=2, help="the MLP column's Linear layers")
    p.add_argument("--width", type=int, default=100, help="their width (PNN's default: 100)")
    args = p.parse_args()
    if args.quick:
        args.ks, args.epochs, args.rounds = [1], 1, 1
    if args.device != "cpu" or args.threads != 1:
        raise SystemExit("peer_avalanche compares CPU seconds with one thread: --device cpu only")
    if max(args.ks) > len(FROZEN) or min(args.ks) < 1:
        raise SystemExit(f"--ks: from 1 to {len(FROZEN)} frozen tasks")
    common.setup(args)
    python = peer_venv("avalanche", REQUIREMENTS)

    from dmtcore.hooks.host import create_plugin_host

    host = create_plugin_host([str(MLP_PLUGIN)])
    tasks = [*FROZEN[: max(args.ks)], NEW]
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        write_data(folder, host, tasks)
        stores = grow_stores(folder, host, args.ks, args)
        config = {
            "data": str(folder),
            "tasks": tasks,
            "checkpoints": str(folder),
            "ks": args.ks,
            "seed": 0,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "layers": args.layers,
            "width": args.width,
        }
        child_cpu([str(python), str(PEER_SCRIPT), "prepare", json.dumps(config)])
        runs: dict[int, dict[str, list[dict[str, Any]]]] = {}
        for k in args.ks:
            # experience i is task i: the k frozen tasks, then the new one at position k
            peer = {**config, "tasks": [*FROZEN[:k], NEW]}
            variants = {
                "dmt": lambda k=k: dmt_add(stores[k], folder, args),
                "avalanche": lambda k=k, peer=peer: avalanche_add(python, k, folder, peer),
            }
            if not args.quick and k == args.ks[0]:  # warm-up: page cache, .pyc; not measured
                for run in variants.values():
                    run()
            runs[k] = common.interleaved(variants, args.rounds)
    rows = [row(k, runs[k]) for k in args.ks]
    text = "\n".join([title(args), table(rows), *notes(rows)])
    common.report(args, text, {"rows": rows, "runs": runs, "config": vars_json(args)})


def row(k: int, run: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians of one k's rounds, and the medians of the ratios of the runs paired by round
    (dmt ÷ Avalanche)."""
    dmt, peer = run["dmt"], run["avalanche"]
    median = common.median

    def ratio(key: str) -> float:
        return median([d[key] / a[key] for d, a in zip(dmt, peer, strict=True)])

    out = {
        "k": k,
        "dmt_add_cpu": median([d["cpu"] for d in dmt]),
        "avalanche_train_cpu": median([a["cpu"] for a in peer]),
        "ratio_inprocess": ratio("cpu"),
        "dmt_command_cpu": median([d["command_cpu"] for d in dmt]),
        "avalanche_command_cpu": median([a["command_cpu"] for a in peer]),
        "ratio_command": ratio("command_cpu"),
        "avalanche_phases": {
            name: median([a["phases"][name] for a in peer]) for name in peer[0]["phases"]
        },
        "steps": {"dmt": dmt[0]["steps"], "avalanche": peer[0]["steps"]},
        "validation_passes": {"dmt": dmt[0]["evals"], "avalanche": peer[0]["evals"]},
        "avalanche_columns": peer[0]["columns"],
        "val_accuracy": {
            "dmt": (dmt[0]["val_metrics"] or {}).get("accuracy"),
            "avalanche": peer[0]["val_accuracy"],
        },
    }
    if k in TARGETS:
        out["target"] = TARGETS[k]
        out["verdict_inprocess"] = common.verdict(out["ratio_inprocess"], TARGETS[k])
        out["verdict_command"] = common.verdict(out["ratio_command"], TARGETS[k])
    return out


def title(args: Any) -> str:
    return (
        f"adding {NEW} to k frozen digits tasks, CPU seconds: dmt (mlp column, ttc) vs "
        f"Avalanche PNN (MLP adapters); column {args.layers}×{args.width}, {args.epochs} "
        f"epoch(s), batch {args.batch_size}, Adam lr {args.lr:g}, one thread, median of "
        f"{args.rounds} interleaved round(s)"
    )


def table(rows: list[dict[str, Any]]) -> str:
    headers = ["k", "dmt add", "PNN train", "÷", "target", "", "dmt command", "PNN command",
               "÷", "", "steps dmt/PNN", "val passes", "val acc dmt/PNN"]  # fmt: skip
    lines = [
        [r["k"], r["dmt_add_cpu"], r["avalanche_train_cpu"], r["ratio_inprocess"],
         r.get("target"), r.get("verdict_inprocess", ""), r["dmt_command_cpu"],
         r["avalanche_command_cpu"], r["ratio_command"], r.get("verdict_command", ""),
         f"{r['steps']['dmt']}/{r['steps']['avalanche']}",
         f"{r['validation_passes']['dmt']}/{r['validation_passes']['avalanche']}",
         "/".join(common.fmt(v, 3) for v in r["val_accuracy"].values())]
        for r in rows
    ]  # fmt: skip
    return common.table(headers, lines)


def notes(rows: list[dict[str, Any]]) -> list[str]:
    """What the table's columns are, and the Avalanche command's phases at the largest k."""
    last = rows[-1]
    phases = ", ".join(f"{name} {value:.2f}" for name, value in last["avalanche_phases"].items())
    return [
        "dmt add: the add_task call inside `dmt add-task` (store, data, training, commit); "
        "PNN train: strategy.train(experience k) inside avalanche_pnn.py add. Commands: the "
        "same two processes whole (interpreter, imports, data, loading, training, saving).",
        f"Avalanche command phases at k = {last['k']} (CPU s): {phases}",
    ]


def vars_json(args: Any) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


if __name__ == "__main__":
    main()
