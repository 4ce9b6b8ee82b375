"""Refresh the outputs and durations the README quotes, from a real run on this machine.

The README's walkthrough shows what `dmt` prints, and its set-up section says how long the
quickstart takes and what it reaches. Hand-copied, both go stale as soon as the code changes.
This script runs the walkthrough's commands in a scratch directory and the quickstart itself,
then rewrites the README and the docs pages that quote them (docs/getting-started.md,
docs/walkthrough.md) between their markers:

    <!-- generated:walkthrough -->  ...  <!-- /generated:walkthrough -->
    <!-- generated:quickstart -->   ...  <!-- /generated:quickstart -->

Everything outside the markers is left as it is. Each generated block names the machine
(CPU, cores, load average) and the date it was measured on, so a reader can tell a quiet
machine's figures from a busy one's. Usage:

    python examples/refresh_readme.py            # rewrite them in place (about 3 minutes)
    python examples/refresh_readme.py --dry-run  # print the blocks instead
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# The pages of the docs site that quote the same blocks (the walkthrough lives in the docs).
DOCS_PAGES = (ROOT / "docs" / "getting-started.md", ROOT / "docs" / "walkthrough.md")
EPOCH_LINE = re.compile(r"^epoch (\d+):.*\((\d+(?:\.\d+)?)s[;)]")
ADDED_LINE = re.compile(r"^Added (\S+) as version \d+ in [\d.]+s: (.*) \(best epoch \d+\)$")


@dataclass
class Command:
    """One command of the walkthrough: what was typed, what it printed, how long it took."""

    args: list[str]
    comment: str
    stdout: str
    stderr: str
    seconds: float


def run_dmt(args: Sequence[str], cwd: Path, comment: str = "") -> Command:
    """Run `dmt ARGS` as a user would (a fresh process, the default store in `cwd`)."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "dmtcore", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "100"},
        check=True,
    )
    return Command(list(args), comment, done.stdout, done.stderr, time.perf_counter() - started)


def shown_lines(command: Command, keep_rows: int | None = None) -> list[str]:
    """What the reader sees: stderr then stdout, with the middle epochs of a run elided."""
    lines: list[str] = []
    epochs = [i for i, line in enumerate(command.stderr.splitlines()) if EPOCH_LINE.match(line)]
    for index, line in enumerate(command.stderr.splitlines()):
        if epochs and index in epochs[1:-1]:
            if index == epochs[1]:
                lines.append("...")
            continue
        lines.append(line)
    out = command.stdout.splitlines()
    if keep_rows is not None and len(out) > keep_rows + 2:
        out = [*out[: keep_rows + 2], "..."]
    return lines + out


def console_block(commands: Sequence[tuple[Command, int | None]]) -> str:
    """A ```console block: each command with its comment aligned, then its output."""
    width = max(len("dmt " + " ".join(c.args)) for c, _ in commands) + 3
    body: list[str] = []
    for command, keep_rows in commands:
        typed = "$ dmt " + " ".join(command.args)
        body.append(f"{typed:<{width + 2}}# {command.comment}" if command.comment else typed)
        body.extend(shown_lines(command, keep_rows))
        body.append("")
    return "```console\n" + "\n".join(body).rstrip() + "\n```"


def machine() -> str:
    """The CPU, its cores and how busy it was: figures mean little without them."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = re.findall(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.MULTILINE)
        model = names[0] if names else model
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{model}, {os.cpu_count()} cores, load average {load:.1f} at the start"


def walkthrough(scratch: Path) -> tuple[str, dict[str, float]]:
    """Run the walkthrough's commands in `scratch`; the block and each add-task's seconds."""
    steps = [
        (run_dmt(["tasks", "digits"], scratch, "what the installed plugins offer"), None),
        (run_dmt(["add-task", "digits.class"], scratch, "no store yet: one is created"), None),
        (run_dmt(["add-task", "digits.even"], scratch, "a new column, reading digits.class"), None),
        (run_dmt(["status"], scratch), None),
        (run_dmt(["eval"], scratch, "all tasks on their validation split"), None),
        (
            run_dmt(["remove-task", "digits.class"], scratch, "cut it out, reconnect the rest"),
            None,
        ),
    ]
    seconds = {c.args[1]: c.seconds for c, _ in steps if c.args[0] == "add-task"}
    return console_block(steps), seconds


def quickstart(scratch: Path) -> dict[str, object]:
    """Run examples/quickstart.py as the README's first command does; what it reached."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), "--store", "qs-store"],
        cwd=scratch,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=True,
    )
    total = time.perf_counter() - started
    metrics: dict[str, dict[str, float]] = {}
    epoch_seconds: list[float] = []
    for line in done.stdout.splitlines():
        if match := ADDED_LINE.match(line):
            pairs = (item.rsplit(" ", 1) for item in match.group(2).split(", "))
            metrics[match.group(1)] = {k: float(v) for k, v in pairs}
        elif match := EPOCH_LINE.match(line):
            epoch_seconds.append(float(match.group(2)))
    epoch = sorted(epoch_seconds)[len(epoch_seconds) // 2] if epoch_seconds else float("nan")
    return {"seconds": total, "metrics": metrics, "epoch_seconds": epoch}


def quickstart_sentence(found: dict[str, object], add_seconds: dict[str, float], when: str) -> str:
    metrics = found["metrics"]
    assert isinstance(metrics, dict)

    def metric(task: str, name: str) -> str:
        return f"{metrics[task][name]:.3f}" if task in metrics else "n/a"

    adds = sorted(add_seconds.values())
    return (
        f"Measured {when}: validation accuracy {metric('digits.class', 'accuracy')} (10 classes), "
        f"balanced accuracy {metric('digits.even', 'balanced_accuracy')} (even) and "
        f"{metric('digits.prime', 'balanced_accuracy')} (prime); about "
        f"{found['epoch_seconds']:.1f} s per epoch, {adds[0]:.0f}–{adds[-1]:.0f} s per "
        "`dmt add-task` command including start-up, tracking and registration, "
        f"{found['seconds']:.0f} s for the whole script."
    )


def replace_block(text: str, name: str, content: str) -> str:
    """Swap what lies between `<!-- generated:NAME -->` and its closing marker."""
    pattern = re.compile(
        rf"(<!-- generated:{name} -->\n)(.*?)(<!-- /generated:{name} -->)", re.DOTALL
    )
    if not pattern.search(text):
        raise SystemExit(f"no '<!-- generated:{name} -->' ... block to refresh")
    return pattern.sub(lambda m: m.group(1) + content.rstrip() + "\n" + m.group(3), text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=Path, default=README)
    parser.add_argument("--dry-run", action="store_true", help="Print instead of writing.")
    args = parser.parse_args()
    today = datetime.date.today().isoformat()
    when = f"on {today}, {machine()}"
    with tempfile.TemporaryDirectory(prefix="dmt-readme-") as scratch:
        print("running the walkthrough's commands ...", file=sys.stderr)
        block, add_seconds = walkthrough(Path(scratch))
        print("running the quickstart ...", file=sys.stderr)
        found = quickstart(Path(scratch))
    walkthrough_text = f"{block}\n\n(Output of a real run {when}.)"
    sentence = quickstart_sentence(found, add_seconds, when)
    if args.dry_run:
        print(walkthrough_text, sentence, sep="\n\n")
        return
    blocks = {"walkthrough": walkthrough_text, "quickstart": sentence}
    texts = {path: path.read_text() for path in (args.readme, *DOCS_PAGES)}
    for name in blocks:  # a block that moved must still stand somewhere
        if not any(f"<!-- generated:{name} -->" in text for text in texts.values()):
            where = ", ".join(str(path) for path in texts)
            raise SystemExit(f"none of {where} has a '<!-- generated:{name} -->' block")
    for path, text in texts.items():
        for name, content in blocks.items():
            if f"<!-- generated:{name} -->" in text:
                text = replace_block(text, name, content)
        if text != texts[path]:
            path.write_text(text)
            print(f"refreshed {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
