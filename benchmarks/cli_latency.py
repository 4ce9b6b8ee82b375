"""CLI latency: how long `dmt --help`, `dmt status` and `dmt predict` take from the shell.

Each command runs as a fresh subprocess (the `dmt` console script next to this Python, else
`python -m dmtcore`), output discarded, and its wall time is taken around the whole process:
interpreter start, imports, work, exit. Two reference points run in the same rounds:
`python -c pass` (the interpreter alone) and `python -c "import torch"` (what any command that
touches the model pays). The five commands run once per round in an order rotating every
round; medians over rounds. `dmt status` reads a small trained store (digits.class and
digits.even, one epoch each); `dmt predict` classifies one 8×8 PNG digit with both tasks.

Whether a command imports torch is checked in one extra run per command under
`python -X importtime` (torch's top-level import line in its report); `--help` and `status`
must not (they are meant to be instant), `predict` must.

With `--add-task`, the fixed cost of a small training command instead: the process CPU seconds
of `dmt add-task digits.even --epochs 1 --no-tracking` on a store holding digits.class, split
into phases by a wrapper that marks the process CPU time as the command passes known points
(`load_model`, `make_target`, `fit` and `commit_weights` as `dmtcore.operations.adding` calls
them, `dmtcore.train.loop.make_optimizer`): start-up is everything until the optimiser exists (the first epoch's
start), training is the epochs, then the commit and exit. With `--baseline DIR` (a checkout of
an older commit, e.g. `git worktree add /tmp/base <commit>`) the same command runs from that
code too, interleaved with this checkout's, each with its own `dmt_plugins` and `dmt_registry`.
`import mlflow` (what a tracked run adds) is measured after the command in the same process.

    python benchmarks/cli_latency.py [--quick] [--rounds 10]
    python benchmarks/cli_latency.py --add-task [--baseline DIR] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as common


def dmt_command() -> list[str]:
    script = Path(sys.executable).parent / "dmt"
    return [sys.executable, str(script)] if script.is_file() else [sys.executable, "-m", "dmtcore"]


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DMT_", "MLFLOW_"))}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, env=env)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(
            f"{' '.join(command)} exited {result.returncode}: {result.stderr.decode()[-2000:]}"
        )
    return seconds


def imports_torch(command: list[str], env: dict[str, str]) -> bool:
    """Whether the command imports torch: its line in `python -X importtime`'s report."""
    result = subprocess.run(
        [command[0], "-X", "importtime", *command[1:]], capture_output=True, env=env
    )
    lines = result.stderr.decode(errors="replace").splitlines()
    return any(re.search(r"\|\s+torch$", line.rstrip()) for line in lines)


# Runs `dmt add-task` in-process, marking process CPU time at known points; prints PHASES json.
PHASE_WRAPPER = """
import json, sys, time
marks = [("interpreter start", time.process_time())]
def mark(label):
    marks.append((label, time.process_time()))
import torch
mark("import torch")
from dmtcore.cli import cli
try:
    import dmtcore.operations.adding as operations, dmtcore.train.loop as training
    COMMIT = "commit_weights"
except ImportError:  # a baseline checkout from before the sub-packages (issue 24)
    import dmtcore.operations as operations, dmtcore.training as training
    COMMIT = "_commit_weights"
mark("import dmt (cli, library)")
def wrap(module, name, before=None, after=None):
    function = getattr(module, name)
    def wrapper(*args, **kwargs):
        before and mark(before)
        result = function(*args, **kwargs)
        after and mark(after)
        return result
    setattr(module, name, wrapper)
wrap(operations, "load_model", after="plugins, store, stored model")
wrap(operations, "make_target", after="data")
wrap(operations, "fit", before="model build")
wrap(training, "make_optimizer", after="optimiser")
wrap(operations, "fit", after="training (epochs)")
wrap(operations, COMMIT, after="commit")
cli(sys.argv[1:], standalone_mode=False)
mark("exit")
started = time.process_time()
import mlflow
extra = {"import mlflow": time.process_time() - started}
phases = {"interpreter start": marks[0][1]}
for (_, before), (label, at) in zip(marks, marks[1:]):
    phases[label] = phases.get(label, 0.0) + at - before
files = {m: sys.modules[m].__file__ for m in ("dmtcore", "dmt_plugins.digits")}
print("PHASES " + json.dumps({"phases": phases, "extra": extra, "files": files}))
"""
STARTUP_PHASES = (
    "interpreter start",
    "import torch",
    "import dmt (cli, library)",
    "plugins, store, stored model",
    "data",
    "model build",
    "optimiser",
)


def code_path(root: Path, folder: Path) -> str:
    """PYTHONPATH that imports dmtcore, dmt_plugins and dmt_registry from checkout `root`
    (the installed packages map the latter two to folders of another name)."""
    shim = folder / f"path-{abs(hash(str(root)))}"
    if not shim.exists():
        shim.mkdir()
        (shim / "dmt_plugins").symlink_to(root / "plugins")
        (shim / "dmt_registry").symlink_to(root / "registry")
    return os.pathsep.join([str(root), str(shim)])


def phase_run(root: Path, store: Path, folder: Path, env: dict[str, str]) -> dict[str, Any]:
    copy = folder / "run-store"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(store, copy)
    command = [sys.executable, "-c", PHASE_WRAPPER, "add-task", "digits.even", "--store"]
    command += [str(copy), "--epochs", "1", "--no-tracking"]
    run_env = {**env, "PYTHONPATH": code_path(root, folder), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=run_env)
    lines = [line for line in result.stdout.splitlines() if line.startswith("PHASES ")]
    if result.returncode != 0 or not lines:
        raise SystemExit(f"{root}: add-task exited {result.returncode}: {result.stderr[-2000:]}")
    data = json.loads(lines[-1].removeprefix("PHASES "))
    expected = str(root / "dmtcore")
    if not data["files"]["dmtcore"].startswith(expected):
        raise SystemExit(f"ran {data['files']['dmtcore']}, not the code under {root}")
    return data


def summary(run: dict[str, Any]) -> dict[str, float]:
    """A run's phases, then start-up, training, what follows, the whole, and `import mlflow`."""
    phases = run["phases"]
    startup = sum(phases.get(name, 0.0) for name in STARTUP_PHASES)
    training = phases["training (epochs)"]
    whole = sum(phases.values())
    return {
        **phases,
        "= start-up (until the first epoch)": startup,
        "= training (epochs)": training,
        "= commit and exit": whole - startup - training,
        "= whole command": whole,
        "import mlflow (tracked runs add it)": run["extra"]["import mlflow"],
    }


def startup_main(args: argparse.Namespace) -> None:
    """CPU seconds of a small add-task by phase, this checkout against `--baseline`."""
    from dmtcore.operations import add_task
    from dmtcore.train.loop import TrainSettings

    roots = {"this checkout": Path(__file__).resolve().parents[1]}
    if args.baseline:
        roots = {"baseline": args.baseline.resolve(), **roots}
    env = environment()
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        store = folder / "store"
        add_task(
            store,
            "digits.class",
            common.plugin_host(),
            TrainSettings(epochs=1, device="cpu"),
            notify=common.quiet,
        )
        runs = common.interleaved(
            {
                label: (lambda r=root: phase_run(r, store, folder, env))
                for label, root in roots.items()
            },
            args.rounds,
        )
    labels = list(runs)
    names = list(summary(runs[labels[-1]][0]))
    rows = [
        [name, *(common.median([summary(run)[name] for run in runs[label]]) for label in labels)]
        for name in names
    ]
    if len(labels) == 2:
        for row in rows:
            row.append(row[2] / row[1] if row[1] else math.nan)
    headers = ["phase (process CPU s)", *labels, *(["÷ baseline"] if len(labels) == 2 else [])]
    title = (
        "dmt add-task digits.even --epochs 1 --no-tracking (store: digits.class), one torch "
        f"thread, median of {args.rounds} interleaved round(s)"
    )
    common.report(args, f"{title}\n{common.table(headers, rows)}", {"rows": rows, "runs": runs})


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], "cli_latency")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--add-task", action="store_true", help="the fixed cost of a small add-task")
    p.add_argument("--baseline", type=Path, help="with --add-task: a checkout to compare with")
    args = p.parse_args()
    if args.rounds is None:
        args.rounds = 5 if args.add_task else 10
    if args.quick:
        args.rounds = 1
    if args.device != "cpu":
        raise SystemExit("cli_latency measures the command line on the CPU; --device cpu only")
    common.setup(args)
    if args.add_task:
        if args.json == common.RESULTS / "cli_latency.json":
            args.json = common.RESULTS / "cli_latency_add_task.json"
        startup_main(args)
        return
    import numpy as np
    from PIL import Image

    from dmtcore.operations import add_task
    from dmtcore.train.loop import TrainSettings

    env = environment()
    dmt = dmt_command()
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        store = folder / "store"
        host = common.plugin_host(256 if args.quick else None)
        for task in ("digits.class", "digits.even"):
            add_task(store, task, host, TrainSettings(epochs=1, device="cpu"), notify=common.quiet)
        from dmt_plugins.digits import _splits

        digit = (_splits()["val"][0][0, 0] * 255).astype(np.uint8)
        image = folder / "digit.png"
        Image.fromarray(digit, mode="L").save(image)
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "python -c 'import torch'": [sys.executable, "-c", "import torch"],
            "dmt --help": [*dmt, "--help"],
            "dmt status": [*dmt, "status", "--store", str(store)],
            "dmt predict (1 image)": [*dmt, "predict", str(image), "--store", str(store)],
        }
        for command in [] if args.quick else commands.values():  # warm-up: page cache, .pyc
            timed(command, env)
        runs = common.interleaved(
            {label: (lambda c=command: timed(c, env)) for label, command in commands.items()},
            args.rounds,
        )
        torch_imported = {label: imports_torch(c, env) for label, c in commands.items()}
    medians = {label: common.median(values) for label, values in runs.items()}
    bare, torch_time = medians["python -c pass"], medians["python -c 'import torch'"]
    expected = {"dmt --help": False, "dmt status": False, "dmt predict (1 image)": True}
    rows = []
    for label in commands:
        row = {
            "command": label,
            "median_s": medians[label],
            "vs_python": medians[label] / bare,
            "vs_import_torch": medians[label] / torch_time,
            "imports_torch": torch_imported[label],
        }
        if label in expected:
            row["torch_expected"] = expected[label]
            row["verdict"] = "pass" if torch_imported[label] == expected[label] else "miss"
        rows.append(row)
    headers = ["command", "median s", "÷ python", "÷ import torch", "imports torch", "expected", ""]
    yes = {True: "yes", False: "no", None: "-"}
    table_rows = [
        [r["command"], r["median_s"], r["vs_python"], r["vs_import_torch"],
         yes[r["imports_torch"]], yes[r.get("torch_expected")], r.get("verdict", "")]
        for r in rows
    ]  # fmt: skip
    title = (
        f"CLI wall time per command (fresh process each), median of {args.rounds} interleaved "
        f"round(s); {' '.join(dmt[1:]) or dmt[0]}"
    )
    common.report(
        args, f"{title}\n{common.table(headers, table_rows)}", {"rows": rows, "seconds": runs}
    )


if __name__ == "__main__":
    main()
