"""Regenerate the command reference (docs/commands.md) from what the commands print.

Each command's `--help` output stands in the page between its markers:

    <!-- generated:help:add-task -->  ...  <!-- /generated:help:add-task -->

and `tests/test_docs.py` fails when any block differs from what the command prints now, so the
reference cannot drift from the code. Usage:

    python examples/refresh_docs.py           # rewrite docs/commands.md in place (seconds)
    python examples/refresh_docs.py --check   # exit 1 with a diff if a block is out of date
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS_PAGE = ROOT / "docs" / "commands.md"
WIDTH = 100
ORDER = (
    "init", "add-task", "train", "remove-task", "status", "history", "verify", "rollback",
    "eval", "predict", "connections", "relate", "register", "promote", "pull", "plugins", "tasks",
    "backbones", "weightings",
)  # fmt: skip


def command_names() -> list[str]:
    """Every command of `dmt`, in the page's order (a new command goes last)."""
    from dmtcore.cli import cli

    return [n for n in ORDER if n in cli.commands] + sorted(set(cli.commands) - set(ORDER))


def help_text(command: str | None) -> str:
    """What `dmt [COMMAND] --help` prints on a terminal 100 columns wide, from a real run.

    The command runs as `python -m dmtcore` (the `dmt` script's own entry point) with
    COLUMNS=100, so click wraps the text exactly as a user sees it (it caps help at 80
    columns; click's CliRunner would force another width). About 0.1 s a command."""
    args = [command, "--help"] if command else ["--help"]
    done = subprocess.run(
        [sys.executable, "-m", "dmtcore", *args],
        env={**os.environ, "COLUMNS": str(WIDTH)},
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if done.returncode != 0:
        raise SystemExit(f"dmt {' '.join(args)} exited {done.returncode}: {done.stderr}")
    return done.stdout


def help_texts() -> dict[str | None, str]:
    """`help_text` of `dmt` itself (key None) and of every command, run side by side."""
    commands = [None, *command_names()]
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(commands, pool.map(help_text, commands), strict=True))


def block_name(command: str | None) -> str:
    return f"help:{command or 'dmt'}"


def refreshed(text: str, helps: dict[str | None, str] | None = None) -> str:
    """`text` with every help block replaced by what its command prints now (or by `helps`,
    a `help_texts()` computed before)."""
    for command, help_output in (helps if helps is not None else help_texts()).items():
        name = block_name(command)
        pattern = re.compile(
            rf"(<!-- generated:{name} -->\n)(.*?)(<!-- /generated:{name} -->)", re.S
        )
        if not pattern.search(text):
            raise SystemExit(f"{COMMANDS_PAGE.name} has no '<!-- generated:{name} -->' block")
        fenced = f"```text\n{help_output.rstrip()}\n```\n"
        text = pattern.sub(lambda m, f=fenced: m.group(1) + f + m.group(3), text)
    return text


def drift(page: str, now: str) -> str:
    """A unified diff from the page as it stands to the page as the commands print it now."""
    lines = difflib.unified_diff(
        page.splitlines(keepends=True), now.splitlines(keepends=True), "docs", "now"
    )
    return "".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="Only compare; exit 1 on a drift.")
    args = parser.parse_args()
    text = COMMANDS_PAGE.read_text()
    new = refreshed(text)
    if args.check:
        if new != text:
            sys.stdout.write(drift(text, new))
            raise SystemExit(1)
        return
    COMMANDS_PAGE.write_text(new)
    print(f"refreshed {COMMANDS_PAGE}", file=sys.stderr)


if __name__ == "__main__":
    main()
