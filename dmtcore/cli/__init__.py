"""The `dmt` command line.

Only click and the JSON-level store are imported at start-up; torch, mlflow and the plugins load
inside the commands that need them, so `dmt --help` and `dmt status` answer at once. Every
`DmtError` becomes one line on stderr and the error's exit code; Ctrl-C and SIGTERM become
exit 130 with the store untouched.

Each command is a thin layer over the library: it parses options, calls one function of
`dmtcore` and prints the result. The commands live in modules by what they work on; importing
them registers them on the group.
"""

from __future__ import annotations

from dmtcore.cli import (  # noqa: F401  (importing registers the commands)
    inspection_commands,
    registry_commands,
    store_commands,
    training_commands,
)
from dmtcore.cli.common import cli

__all__ = ["cli", "main"]


def main() -> None:
    """Entry point of the `dmt` console script."""
    from dmtcore.runtime import interrupts

    interrupts.install()
    cli(prog_name="dmt")
