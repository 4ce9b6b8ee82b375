"""The comparison examples run end to end (quick mode) and print what they promise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def run_example(name: str, *args: str, cwd: Path) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.slow
def test_compare_methods_prints_every_method(tmp_path: Path) -> None:
    import json

    out = run_example("compare_methods.py", "--quick", "--json", "r.json", cwd=tmp_path)
    for method in ("ST", "MT", "DMT", "NDDR", "NDDR-short.", "cross-stitch"):
        assert f"\n{method} " in out
    results = json.loads((tmp_path / "r.json").read_text())["results"]
    assert len(results) == 6
    chance = {"digits.class": 0.1, "digits.even": 0.5, "digits.prime": 0.5}
    for row in results:  # one epoch: every method above chance on every task
        assert all(score > chance[task] + 0.1 for task, score in row["scores"].items()), row


@pytest.mark.slow
def test_incremental_transfer_reports_steps_and_plots(tmp_path: Path) -> None:
    out = run_example("incremental_transfer.py", "--quick", "--plot", "inc.png", cwd=tmp_path)
    assert "steps alone" in out and "added to trained columns" in out
    assert (tmp_path / "inc.png").read_bytes()[:4] == b"\x89PNG"
