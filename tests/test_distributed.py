"""Data-parallel add-task under torchrun: 2 CPU processes (gloo) on loopback."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from dmtcore.store.directory import Store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_one_version_with_identical_results(
    store_copy: Path, mlflow_template: Path, tmp_path: Path
) -> None:
    shutil.copy(mlflow_template, store_copy / "mlflow.db")
    before = Store.open(store_copy).manifest()
    logs = tmp_path / "logs"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        "--redirects",
        "3",
        "--log-dir",
        str(logs),
        "-m",
        "dmtcore",
        "add-task",
        "digits.prime",
        "--store",
        str(store_copy),
        "--epochs",
        "2",
        "--device",
        "cpu",
        "--json",
    ]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [rank0] = logs.glob("*/attempt_0/0")
    [rank1] = logs.glob("*/attempt_0/1")
    result = json.loads((rank0 / "stdout.log").read_text())
    assert (rank1 / "stdout.log").read_text() == "", "only rank 0 reports"
    [line] = [
        x for x in (rank1 / "stderr.log").read_text().splitlines() if x.startswith("rank 1/2")
    ]
    assert json.loads(line.split("metrics: ", 1)[1]) == result["metrics"]
    assert result["metrics"]["balanced_accuracy"] > 0.7

    store = Store.open(store_copy)
    assert store.current_version() == before["version"] + 1 == result["version"]
    after = store.manifest()
    assert [t["weights"] for t in after["tasks"][:2]] == [t["weights"] for t in before["tasks"]]
    assert after["operation"]["settings"]["seed"] == 0

    client = MlflowClient(tracking_uri=f"sqlite:///{store_copy / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(before["name"])
    [run] = client.search_runs(experiment.experiment_id)
    assert run.data.params["processes"] == "2"
    assert run.info.status == "FINISHED"

    verified = subprocess.run(
        [sys.executable, "-m", "dmtcore", "verify", "--store", str(store_copy)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.slow
def test_a_region_task_trains_under_two_processes(tmp_path: Path) -> None:
    """Detection labels are lists of per-image box dicts and the head returns FCOS's unreduced
    outputs: both still train data-parallel, and both ranks agree on the mAP."""
    plugin = Path(__file__).parent / "region_toy_plugin.py"
    store = tmp_path / "store"
    dmt = [sys.executable, "-m", "dmtcore"]
    init = [*dmt, "init", "--store", str(store), "--input", "3x32x32"]
    subprocess.run([*init, "--backbone-option", "spatial=true"], check=True, timeout=120)
    logs = tmp_path / "logs"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
        "--redirects", "3", "--log-dir", str(logs),
        "-m", "dmtcore", "add-task", "toyr.boxes", "--store", str(store), "-p", str(plugin),
        "--epochs", "1", "--batch-size", "8", "--device", "cpu", "--no-tracking", "--json",
    ]  # fmt: skip
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "REGION_TOY_TRAIN": "32"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [rank0] = logs.glob("*/attempt_0/0")
    [rank1] = logs.glob("*/attempt_0/1")
    result = json.loads((rank0 / "stdout.log").read_text())
    assert set(result["metrics"]) == {"map_50", "map"}
    [line] = [
        x for x in (rank1 / "stderr.log").read_text().splitlines() if x.startswith("rank 1/2")
    ]
    assert json.loads(line.split("metrics: ", 1)[1]) == result["metrics"]
    assert Store.open(store).current_version() == result["version"] == 2
    verified = subprocess.run(
        [*dmt, "verify", "--store", str(store), "-p", str(plugin)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
