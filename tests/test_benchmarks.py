"""Benchmarks run (quick mode) and print their ratio table; their numbers are not asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_tracking_overhead_quick(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "tracking_overhead.py"), "--quick", "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "registry" in result.stdout and "ms per epoch" in result.stdout
    data = json.loads(out.read_text())
    assert set(data["ratio"]) == {"off", "tracking", "registry"} and data["ratio"]["off"] == 1.0


@pytest.mark.slow
def test_predict_memory_quick(tmp_path: Path) -> None:
    out = tmp_path / "m.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "predict_memory.py"), "--quick", "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(out.read_text())
    assert [r["images"] for r in rows] == [200, 2000] and all(r["peak_rss_mib"] > 0 for r in rows)
