"""Peer libraries (LibMTL, Avalanche, ...) run in virtual environments of their own.

A benchmark that compares dmt with a peer library must never make that library a dependency
of dmt, nor let it change dmt's environment (a peer may pin other numpy or torch releases).
So each peer gets `benchmarks/.venvs/<name>` (git-ignored), made on first use with
`python -m venv`, the torch and torchvision dmt pins (served from this machine's disk, so
both sides run the same torch build), then the peer's requirements file; the peer side of a
benchmark runs there as a subprocess and reports JSON on its last stdout line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
VENVS = HERE / ".venvs"
TORCH = ("torch==2.14.1", "torchvision==0.29.1")  # as dmt's pyproject.toml pins them
STAMP = "dmt-peer-requirements.txt"  # what the venv was made with; a change remakes it


class PeerUnavailable(RuntimeError):
    """The peer's environment could not be made (no network, no such release, ...)."""


def peer_venv(name: str, requirements: Path) -> Path:
    """The Python of `benchmarks/.venvs/<name>`, made first if it is missing or was made
    from other requirements. Raises PeerUnavailable, with pip's last words, if it cannot be."""
    folder = VENVS / name
    python = folder / "bin" / "python"
    wanted = "\n".join([*TORCH, requirements.read_text()])
    stamp = folder / STAMP
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    shutil.rmtree(folder, ignore_errors=True)
    print(f"making the {name} environment at {folder} (once)", file=sys.stderr)
    steps = [
        [sys.executable, "-m", "venv", str(folder)],
        [str(python), "-m", "pip", "install", "-q", *TORCH],
        [str(python), "-m", "pip", "install", "-q", "-r", str(requirements)],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            shutil.rmtree(folder, ignore_errors=True)
            raise PeerUnavailable(
                f"could not make the {name} environment ({' '.join(step[-3:])}): "
                f"{(done.stderr or done.stdout).strip()[-1500:]}"
            )
    stamp.write_text(wanted)
    return python


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
