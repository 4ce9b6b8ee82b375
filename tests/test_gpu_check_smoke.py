"""benchmarks/gpu_check.py runs end to end on the CPU (--smoke), and without CUDA it refuses to
start unless --device cpu is given."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def run(
    tmp_path: Path, *options: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *options],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env={**os.environ, **(env or {})},
    )  # fmt: skip


@pytest.mark.slow
def test_gpu_check_smoke_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    result = run(tmp_path, "--device", "cpu", "--smoke", "--json", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(out.read_text())
    assert data["old_outputs_identical"] is True
    assert data["checks"]["old_outputs_identical"]["fp32"] is True
    ratio = data["throughput_ratio"]
    assert isinstance(ratio, float) and math.isfinite(ratio) and ratio > 0
    assert [r["k"] for r in data["rows"] if r["variant"] == "default"] == [0, 1, 4]
    assert all(r["ratio"] > 0 for r in data["rows"])


def test_gpu_check_without_cuda_exits_2(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    result = run(tmp_path, "--smoke", "--json", str(out), env={"CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 2, result.stdout + result.stderr
    assert "CUDA" in result.stderr and "--device cpu" in result.stderr
    assert not out.exists()
