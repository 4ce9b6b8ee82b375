"""Benchmarks run (quick mode) and print their ratio table; their numbers are not asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parents[1]


def run_benchmark(name: str, tmp_path: Path) -> tuple[str, Any]:
    """Run benchmarks/NAME --quick; return its stdout and the JSON it wrote."""
    out = tmp_path / "result.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / name), "--quick", "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout, json.loads(out.read_text())


@pytest.mark.slow
def test_tracking_overhead_quick(tmp_path: Path) -> None:
    stdout, data = run_benchmark("tracking_overhead.py", tmp_path)
    assert "registry" in stdout and "ms per epoch" in stdout
    assert set(data["ratio"]) == {"off", "tracking", "registry"} and data["ratio"]["off"] == 1.0


@pytest.mark.slow
def test_predict_memory_quick(tmp_path: Path) -> None:
    _, rows = run_benchmark("predict_memory.py", tmp_path)
    assert [r["images"] for r in rows] == [200, 2000] and all(r["peak_rss_mib"] > 0 for r in rows)
