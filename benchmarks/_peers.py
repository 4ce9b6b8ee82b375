"""Peer libraries (LibMTL, Avalanche, ...) run in virtual environments of their own.

A benchmark that compares dmt with a peer library must never make that library a dependency of
dmt, nor let it change dmt's environment (a peer may pin other numpy or torch releases). So each
peer gets `benchmarks/.venvs/NAME` (git-ignored), made on first use with `python -m venv` from a
requirements file in `benchmarks/peers/`: first the torch and torchvision dmt pins (served from
this machine's disk, so both sides run the same torch build), then the file. The peer side of a
benchmark runs there as a subprocess, gets its data through files (.npy/.npz, never pickle) and
reports JSON on its last stdout line.

A requirements file is one requirement per line, as pip reads it. A line ending in the comment
`# no-deps` is installed afterwards with `pip install --no-deps`: for a package whose declared
dependencies are far heavier than what the benchmarked code path imports, the file then lists
those imports' packages itself. The venv records the file's sha256 and is made again when the
file changes, so a peer's environment is always exactly what its file says.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

VENVS = Path(__file__).resolve().parent / ".venvs"
TORCH = ("torch==2.14.1", "torchvision==0.29.1")  # as dmt's pyproject.toml pins them
NO_DEPS = "# no-deps"
STAMP = "requirements.sha256"


class PeerUnavailable(RuntimeError):
    """The peer's environment could not be made (no network, no such release, ...)."""


def peer_venv(name: str, requirements_file: Path) -> Path:
    """The Python of `benchmarks/.venvs/NAME` holding `requirements_file`, made first if it is
    missing or was made from another version of the file (minutes: it installs torch). Raises
    PeerUnavailable, with pip's last words, if it cannot be made."""
    venv = VENVS / name
    python = venv / "bin" / "python"
    text = Path(requirements_file).read_text()
    digest = hashlib.sha256("\n".join([*TORCH, text]).encode()).hexdigest()
    stamp = venv / STAMP
    if python.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return python
    print(f"making the {name} peer environment at {venv} (once)", file=sys.stderr)
    shutil.rmtree(venv, ignore_errors=True)
    with_deps, no_deps = _requirements(text)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    steps = [[sys.executable, "-m", "venv", str(venv)], [*pip, *TORCH, *with_deps]]
    if no_deps:
        steps.append([*pip, "--no-deps", *no_deps])
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            raise PeerUnavailable(
                f"could not make the {name} environment ({' '.join(step[-3:])}): "
                f"{(done.stderr or done.stdout).strip()[-1500:]}"
            )
    stamp.write_text(digest + "\n")
    return python


def _requirements(text: str) -> tuple[list[str], list[str]]:
    """The requirement lines, split into those installed with their dependencies and those
    marked `# no-deps`; blank lines and whole-line comments are skipped."""
    with_deps, no_deps = [], []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        requirement = line.split("#", 1)[0].strip()
        (no_deps if line.endswith(NO_DEPS) else with_deps).append(requirement)
    return with_deps, no_deps


def run_json(python: Path | str, script: Path | str, config: dict[str, Any]) -> Any:
    """Run `python script --child CONFIG` and return the JSON its last stdout line printed."""
    done = subprocess.run(
        [str(python), str(script), "--child", json.dumps(config)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONNOUSERSITE": "1"},
    )
    if done.returncode != 0:
        raise SystemExit(f"{python} {script} failed ({config}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
