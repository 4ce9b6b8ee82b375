"""Virtual environments for peer libraries that the benchmarks compare dmt with.

A peer library (Avalanche, LibMTL, ...) must never become a dependency of dmt: it would pull its
own dependency tree into the project's environment and could change the torch that dmt's own
numbers run on. Each peer gets its own venv under `benchmarks/.venvs/NAME` (git-ignored), made
on demand from a requirements file in `benchmarks/peers/`, and the benchmark runs the peer's side
as a subprocess with that venv's python, passing data through files (.npy, never pickle) and
reading JSON back.

A requirements file is one requirement per line, as pip reads it. A line ending in the comment
`# no-deps` is installed afterwards with `pip install --no-deps`: for a package whose declared
dependencies are far heavier than what the benchmarked code path imports, the file then lists
those imports' packages itself. The venv records the file's sha256 and is rebuilt when the file
changes, so a peer's environment is always exactly what its file says.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

VENVS = Path(__file__).resolve().parent / ".venvs"
NO_DEPS = "# no-deps"


def peer_venv(name: str, requirements_file: Path) -> Path:
    """The python of venv `benchmarks/.venvs/NAME` holding `requirements_file`, built first if it
    is missing or was built from another version of the file. Prints what it does to stderr
    (creating one installs torch: minutes)."""
    venv = VENVS / name
    python = venv / "bin" / "python"
    stamp = venv / "requirements.sha256"
    text = Path(requirements_file).read_text()
    digest = hashlib.sha256(text.encode()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return python
    print(f"building the {name} peer venv at {venv} from {requirements_file}", file=sys.stderr)
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    with_deps, no_deps = _requirements(text)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    if with_deps:
        subprocess.run([*pip, *with_deps], check=True)
    if no_deps:
        subprocess.run([*pip, "--no-deps", *no_deps], check=True)
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
