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


def test_detection_table6_quick_prints_every_row(tmp_path: Path) -> None:
    """Cross-stitch Table 6 on scenes: every method's row, the paper's figures beside ours in
    %, the hard-sharing baseline with region heads, and the incremental row's detections left
    bit-identical."""
    import json

    out = run_example("detection_table6.py", "--quick", "--json", "t6.json", cwd=tmp_path)
    lines = out.splitlines()
    assert next(line for line in lines if line.startswith("method")).split() == [
        "method", "det", "mAP@.5", "det", "mAP", "attr", "mAP", "time"
    ]  # fmt: skip
    paper = {
        line.split("  paper")[0].rstrip(): line.split()[-2:]
        for line in lines
        if "  paper  " in line
    }
    assert paper == {
        "single-task": ["44.9", "60.9"],
        "hard sharing": ["42.7", "54.1"],
        "cross-stitch/layer": ["45.2", "63.0"],
    }
    assert "detection's boxes and scores after attributes was added: bit-identical" in out
    assert "order by attr mAP, ours:" in out and "order by det mAP@.5, all our rows:" in out
    results = json.loads((tmp_path / "t6.json").read_text())["results"]
    assert list(results) == [
        "single-task", "hard sharing", "cross-stitch/layer", "cross-stitch/chan.", "ttc",
        "ttc incremental",
    ]  # fmt: skip
    for method, row in results.items():
        map_50, coco, attributes = row["values"]
        assert 0 <= coco <= map_50 <= 100 and 0 <= attributes <= 100, (method, row)
        assert attributes > 20, (
            method,
            row,
        )  # in %, not a fraction; each attribute ~half the boxes
        assert row["seconds"] > 0 and row["unchanged"], (method, row)


def _refresh_readme():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "refresh_readme", ROOT / "examples" / "refresh_readme.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_refresh_readme_rewrites_only_between_its_markers() -> None:
    refresh = _refresh_readme()
    text = (
        "intro\n<!-- generated:quickstart -->\nold figures\n<!-- /generated:quickstart -->\nrest\n"
    )
    assert refresh.replace_block(text, "quickstart", "new figures") == (
        "intro\n<!-- generated:quickstart -->\nnew figures\n<!-- /generated:quickstart -->\nrest\n"
    )
    with pytest.raises(SystemExit, match="generated:walkthrough"):
        refresh.replace_block(text, "walkthrough", "x")


def test_refresh_readme_shows_a_run_with_its_middle_epochs_elided() -> None:
    refresh = _refresh_readme()
    stderr = "".join(
        f"epoch {i}: loss 0.1; val t accuracy 0.9 (0.{i}s; {5 - i} to go)\n" for i in range(1, 6)
    )
    command = refresh.Command(["add-task", "t"], "train t", "Added t as version 2\n", stderr, 3.0)
    block = refresh.console_block([(command, None)])
    lines = block.splitlines()
    assert lines[1].startswith("$ dmt add-task t") and lines[1].endswith("# train t")
    assert lines[2].startswith("epoch 1:") and lines[3] == "..." and lines[4].startswith("epoch 5:")
    assert lines[5] == "Added t as version 2" and lines[-1] == "```"
