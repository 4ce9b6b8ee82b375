"""The README's main job, run as a user runs it: three digits tasks added, tracked in MLflow."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_quickstart_grows_three_tasks_and_tracks_them(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), "--epochs", "3"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for version, task in ((2, "digits.class"), (3, "digits.even"), (4, "digits.prime")):
        match = re.search(
            rf"Added {re.escape(task)} as version {version} in [\d.]+s: (\w+) ([\d.]+)", out
        )
        assert match, out
        assert float(match.group(2)) > (0.8 if task == "digits.class" else 0.85)  # chance: 0.1, 0.5
    assert out.count("FINISHED") == 4  # three add-task runs and one remove-task run
    assert "Removed digits.even" in out
    assert (tmp_path / "dmt-quickstart" / "mlflow.db").is_file()
    assert not (tmp_path / "mlruns").exists()
