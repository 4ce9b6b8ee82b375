"""Benchmarks run (quick mode) and print their ratio table; their numbers are not asserted."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parents[1]


def run_benchmark(name: str, tmp_path: Path, *options: str) -> tuple[str, Any]:
    """Run benchmarks/NAME --quick [OPTIONS]; return its stdout and the JSON it wrote."""
    out = tmp_path / "result.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / name), "--quick", "--json", str(out), *options],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout, json.loads(out.read_text())


@pytest.mark.slow
def test_tracking_overhead_quick(tmp_path: Path) -> None:
    stdout, data = run_benchmark("tracking_overhead.py", tmp_path)
    assert "registry" in stdout and "ms per epoch" in stdout
    assert set(data["ratio"]) == {"off", "tracking", "registry"} and data["ratio"]["off"] == 1.0
    assert set(data["ratio_cpu"]) == set(data["ratio"]) and all(
        positive(c) for runs in data["cpu_seconds"].values() for c in runs
    )


@pytest.mark.slow
def test_tracking_overhead_quick_whole_command(tmp_path: Path) -> None:
    """The whole command in fresh processes: CPU seconds of the child processes, tracked vs
    --no-tracking, and what importing mlflow costs."""
    stdout, data = run_benchmark("tracking_overhead.py", tmp_path, "--command")
    command = data["command"]
    assert "whole command" in stdout and set(command["ratio_cpu"]) == {"no-tracking", "tracked"}
    assert command["median_cpu"]["tracked"] > command["mlflow_import_cpu"] > 0


@pytest.mark.slow
def test_predict_memory_quick(tmp_path: Path) -> None:
    _, rows = run_benchmark("predict_memory.py", tmp_path)
    assert [r["images"] for r in rows] == [200, 2000] and all(r["peak_rss_mib"] > 0 for r in rows)


def positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_growth_cost_quick(tmp_path: Path) -> None:
    stdout, data = run_benchmark("growth_cost.py", tmp_path)
    rows = data["rows"]
    expected = [(k, path) for k in (1, 2) for path in ("naive", "off", "cold", "cache")]
    assert [(r["k"], r["path"]) for r in rows] == expected and "theory" in stdout
    for row in rows:
        for key in ("whole", "whole_cpu", "later_epochs", "later_epochs_cpu", "epoch1"):
            assert positive(row[key]), (key, row)
    assert all(r["cache_mb"] > 0 for r in rows if r["path"] in ("cold", "cache"))
    # the store was grown through add-task: at k = 2 the first column's features are read
    assert "1 computed now, 1 read from the features kept in the store (" in stdout


@pytest.mark.slow
def test_growth_memory_quick(tmp_path: Path) -> None:
    _, data = run_benchmark("growth_memory.py", tmp_path)
    rows = data["rows"]
    assert [r["mode"] for r in rows] == ["single", "off", "cache"]
    assert all(positive(r["peak_ratio"]) and positive(r["delta_mib"]) for r in rows)
    assert rows[2]["cache_mib"] > 0 and rows[2]["cache_location"] == "memory"


@pytest.mark.slow
def test_framework_overhead_quick(tmp_path: Path) -> None:
    _, data = run_benchmark("framework_overhead.py", tmp_path)
    (row,) = data["rows"]
    assert row["task"] == "digits.class"
    assert all(positive(row[k]) for k in ("epoch_ratio", "epoch_ratio_cpu", "whole_ratio"))


@pytest.mark.slow
def test_incremental_transfer_quick(tmp_path: Path) -> None:
    _, data = run_benchmark("incremental_transfer.py", tmp_path)
    assert [r["init_from"] for r in data["rows"]] == ["none", "auto"]  # fresh, warm start
    for row in data["rows"]:
        assert (row["task"], row["kind"]) == ("digits.even", "ttc") and row["alone_steps"] > 0
        assert row["ratio"] is None or positive(row["ratio"])
        assert data["curves"][f"digits.even/ttc/{row['init_from']}/0"]["added"]


@pytest.mark.slow
def test_inference_quick(tmp_path: Path) -> None:
    _, data = run_benchmark("inference.py", tmp_path)
    assert [r["k"] for r in data["rows"]] == [1, 2]
    for row in data["rows"]:
        assert all(positive(row[k]) for k in ("shared_images_per_s", "separate_images_per_s"))
        assert positive(row["ratio"])


@pytest.mark.slow
def test_cli_latency_quick(tmp_path: Path) -> None:
    _, data = run_benchmark("cli_latency.py", tmp_path)
    rows = {r["command"]: r for r in data["rows"]}
    assert len(rows) == 5 and all(positive(r["median_s"]) for r in rows.values())
    assert rows["dmt predict (1 image)"]["imports_torch"] is True


@pytest.mark.slow
def test_speed_options_quick(tmp_path: Path) -> None:
    stdout, data = run_benchmark("speed_options.py", tmp_path)
    variants = ["channels-last", "compile-cold", "compile-warm"]
    assert [r["variant"] for r in data["rows"]] == variants and "catches up" in stdout
    assert all(positive(r["whole"]) and positive(r["later_epochs"]) for r in data["rows"])
    assert all(len(data["runs"][v]) == 1 for v in ["default", *variants])


@pytest.mark.slow
def test_peer_libmtl_dmt_side_quick(tmp_path: Path) -> None:
    """The dmt side alone: --no-peer makes no LibMTL venv and downloads nothing."""
    stdout, data = run_benchmark("peer_libmtl.py", tmp_path, "--no-peer")
    assert data["peer_skipped"] == "--no-peer" and "LibMTL side skipped" in stdout
    assert list(data["groups"]) == ["digits"] and data["methods"] == ["equal", "pcgrad"]
    digits = data["groups"]["digits"]
    tasks = ["digits.class", "digits.even", "digits.large", "digits.prime"]
    assert sorted(digits["baseline"]) == tasks  # each task alone: the Δm reference
    assert all(0 < digits["baseline"][t]["metrics"]["accuracy"] <= 1 for t in tasks)
    rows = digits["rows"]
    assert [(r["method"], r["libmtl_method"]) for r in rows] == [
        ("equal", "EW"),
        ("pcgrad", "PCGrad"),
    ]
    for row in rows:  # a finite Δm and a CPU time per method on dmt's side, none on LibMTL's
        assert math.isfinite(row["dmt_delta_m"]) and positive(row["dmt_cpu_s"])
        assert row["libmtl_delta_m"] is None and row["ratio_cpu"] is None
        assert all(0 < row["dmt_primary"][t] <= 1 for t in tasks)
        (run,) = digits["raw"][f"{row['method']}/dmt"]
        assert run["joint_mode"] == "one-pass" and run["delta_m"] == row["dmt_delta_m"]
    assert "equal / EW" in stdout and "pcgrad / PCGrad" in stdout and "Δm" in stdout


def test_benchmark_cuda_without_gpu_fails_clearly(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("checks the message on a machine without a GPU")
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "inference.py"), "--quick", "--device", "cuda"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode != 0 and "no CUDA GPU" in result.stderr


@pytest.mark.slow
def test_growth_cost_dense_quick(tmp_path: Path) -> None:
    """Pixel-level stores (scenes, spatial dmt-cnn, 3x16x16 in quick mode): the cache path says
    how big its cache is and where it went, in the table's line and in the JSON, and the size
    is what the stage outputs add up to: 128 + 64 images × k × (40·8·8 + 60·4·4 + 80·2·2 +
    100·2·2) values × 2 bytes."""
    stdout, data = run_benchmark("growth_cost.py", tmp_path, "--datasets", "scenes")
    rows = data["rows"]
    assert [(r["dataset"], r["task"]) for r in rows] == [("scenes", "scenes.normals")] * 8
    assert all(positive(r["whole"]) and positive(r["later_epochs"]) for r in rows)
    cached = {r["k"]: r for r in rows if r["path"] == "cache"}
    assert {k: r["cache_bytes"] for k, r in cached.items()} == {1: 1628160, 2: 3256320}
    assert all(r["cache_location"] == "memory" for r in cached.values())
    assert "scenes 3x16x16 (dmt-cnn spatial=true)" in stdout
    assert "scenes k=2 cache: 3256320 bytes (3.1 MiB) of float16 in memory," in stdout
    said = "add-task said: feature cache: 2 frozen columns for all epochs: 1 computed now, 1 read"
    assert said in stdout and "MB read); it holds 3.1 MB of float16" in stdout


@pytest.mark.slow
def test_registry_storage_quick(tmp_path: Path) -> None:
    stdout, data = run_benchmark("registry_storage.py", tmp_path)
    assert "÷ off" in stdout
    ratios = {(r["tasks"], r["variant"]): r["ratio"] for r in data["rows"]}
    for tasks in {t for t, _ in ratios}:
        assert ratios[(tasks, "off")] == 1.0
        assert ratios[(tasks, "links")] < ratios[(tasks, "copies")]  # hard links share weights
    for row in data["rows"]:  # counted once per name, the shared weights count again
        if row["variant"] == "links":
            assert row["ratio_every_name"] > row["ratio_whole"]


@pytest.mark.slow
def test_cli_latency_add_task_phases(tmp_path: Path) -> None:
    stdout, data = run_benchmark("cli_latency.py", tmp_path, "--add-task")
    assert "= start-up (until the first epoch)" in stdout and "optimiser" in stdout
    assert data["rows"] and data["runs"]
