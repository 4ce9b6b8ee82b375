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
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS_PAGE = ROOT / "docs" / "commands.md"
WIDTH = 100
ORDER = (
    "init", "add-task", "train", "remove-task", "status", "history", "verify", "rollback",
    "eval", "predict", "connections", "relate", "register", "promote", "pull", "plugins", "tasks",
)  # fmt: skip


def command_names() -> list[str]:
    """Every command of `dmt`, in the page's order (a new command goes last)."""
    from dmtcore.cli import cli

    return [n for n in ORDER if n in cli.commands] + sorted(set(cli.commands) - set(ORDER))


def help_text(command: str | None) -> str:
    """What `dmt [COMMAND] --help` prints on a terminal 100 columns wide."""
    from click.testing import CliRunner

    from dmtcore.cli import cli

    args = [command, "--help"] if command else ["--help"]
    result = CliRunner().invoke(cli, args, prog_name="dmt", terminal_width=WIDTH)
    if result.exit_code != 0:
        raise SystemExit(f"dmt {' '.join(args)} exited {result.exit_code}: {result.output}")
    return result.output


def block_name(command: str | None) -> str:
    return f"help:{command or 'dmt'}"


def refreshed(text: str) -> str:
    """`text` with every help block replaced by what its command prints now."""
    for command in [None, *command_names()]:
        name = block_name(command)
        pattern = re.compile(
            rf"(<!-- generated:{name} -->\n)(.*?)(<!-- /generated:{name} -->)", re.S
        )
        if not pattern.search(text):
            raise SystemExit(f"{COMMANDS_PAGE.name} has no '<!-- generated:{name} -->' block")
        fenced = f"```text\n{help_text(command).rstrip()}\n```\n"
        text = pattern.sub(lambda m, f=fenced: m.group(1) + f + m.group(3), text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="Only compare; exit 1 on a drift.")
    args = parser.parse_args()
    text = COMMANDS_PAGE.read_text()
    new = refreshed(text)
    if args.check:
        if new != text:
            sys.stdout.writelines(
                difflib.unified_diff(
                    text.splitlines(keepends=True), new.splitlines(keepends=True), "docs", "now"
                )
            )
            raise SystemExit(1)
        return
    COMMANDS_PAGE.write_text(new)
    print(f"refreshed {COMMANDS_PAGE}", file=sys.stderr)


if __name__ == "__main__":
    main()
