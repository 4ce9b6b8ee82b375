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

    python benchmarks/cli_latency.py [--quick] [--rounds 10]
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def main() -> None:
    p = common.parser(__doc__.splitlines()[0], "cli_latency")
    p.add_argument("--rounds", type=int, default=10)
    args = p.parse_args()
    if args.quick:
        args.rounds = 1
    if args.device != "cpu":
        raise SystemExit("cli_latency measures the command line on the CPU; --device cpu only")
    common.setup(args)
    import numpy as np
    from PIL import Image

    from dmtcore.operations import add_task
    from dmtcore.training import TrainSettings

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
