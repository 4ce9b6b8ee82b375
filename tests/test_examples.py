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


@pytest.mark.slow
def test_dense_tables_quick_prints_every_row(tmp_path: Path) -> None:
    """NDDR Table 4 on scenes: every method's row, the paper's figures beside ours, metrics in
    the paper's units, and the incremental row's segmentation left bit-identical."""
    import json

    out = run_example("dense_tables.py", "--quick", "--json", "t4.json", cwd=tmp_path)
    lines = out.splitlines()
    assert next(line for line in lines if line.startswith("method")).split() == [
        "method", "mIoU", "PAcc", "mean", "median", "≤11.25°", "≤22.5°", "≤30°", "time"
    ]  # fmt: skip
    paper = {
        line.split("  paper")[0].rstrip(): line.split()[-7:]
        for line in lines
        if "  paper  " in line
    }
    assert list(paper) == ["single-task", "hard sharing", "cross-stitch", "NDDR", "NDDR-shortcut"]
    assert paper["single-task"] == ["33.5", "64.1", "15.6", "12.3", "46.4", "75.5", "86.5"]
    ours = [line for line in lines if "  ours  " in line]
    assert len(ours) == 7 and all(line.split()[-1].endswith("s") for line in ours)
    assert any(line.startswith("ttc incremental  ours") for line in ours)
    assert "segmentation's outputs after normals was added: bit-identical" in out
    results = json.loads((tmp_path / "t4.json").read_text())["results"]
    assert list(results) == [*paper, "ttc", "ttc incremental"]
    for method, row in results.items():
        miou, pacc, mean, median, *within = row["values"]
        assert 2 < miou <= 100 and 5 < pacc <= 100, (method, row)  # in %, not fractions
        assert 5 < mean < 150 and 1 < median < 180, (method, row)  # in degrees, not radians
        assert 0 <= within[0] <= within[1] <= within[2] <= 100, (method, row)
        assert row["seconds"] > 0 and row["unchanged"], (method, row)
