"""Crash safety: dmt killed with SIGKILL at 25 points of add-task, remove-task and train, and
stopped with SIGTERM. Afterwards the store opens at its previous version (or, killed after the
commit, at the new one), every checksum verifies, the predictions are unchanged, and the next
command succeeds and removes what the killed one left behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dmtcore.operations import add_task, remove_task, train_tasks
from dmtcore.store.checkpoint import load_model
from dmtcore.store.directory import Store
from dmtcore.store.verify import verify_store
from dmtcore.train.loop import TrainSettings

QUICK = ["--epochs", "1", "--batch-size", "256", "--no-tracking"]
COMMANDS = {
    "add-task": ["add-task", "digits.prime"],
    "remove-task": ["remove-task", "digits.class"],
    "train": ["train", "digits.large", "digits.loop"],
}
KILL_POINTS = [
    *(("add-task", p) for p in (
        "locked", "data-loaded", "step:1", "step:5", "validated", "fitted", "file-half-written:1",
        "file-before-rename:2", "blob-written:3", "file-before-rename:4", "manifest-written", "committed",
    )),
    *(("remove-task", p) for p in ("locked", "cut", "step:2", "fitted", "blob-written:1", "manifest-written", "committed")),
    *(("train", p) for p in ("data-loaded", "step:3", "validated", "file-half-written:2", "manifest-written", "committed")),
]  # fmt: skip


def outputs(path: Path, host) -> dict[str, torch.Tensor]:
    store = Store.open(path)
    model = load_model(store, store.manifest(), host.kinds)
    with torch.inference_mode():
        return model(torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(0)))


def rerun(command: str, path: Path, host) -> None:
    settings = TrainSettings(epochs=1, batch_size=256)
    if command == "add-task":
        add_task(path, "digits.prime", host, settings, notify=lambda m: None)
    elif command == "remove-task":
        remove_task(path, "digits.class", host, settings, notify=lambda m: None)
    else:
        train_tasks(path, ["digits.large", "digits.loop"], host, settings, notify=lambda m: None)


def referenced_blobs(store: Store) -> set[str]:
    return {
        f"{ref['sha256']}.safetensors"
        for version in store.versions()
        for task in store.manifest(version)["tasks"]
        for ref in task["weights"].values()
    }


def test_there_are_at_least_20_kill_points() -> None:
    assert len(KILL_POINTS) >= 20


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "point"), KILL_POINTS, ids=[f"{c}-{p}" for c, p in KILL_POINTS]
)
def test_sigkill_loses_nothing(command: str, point: str, store_copy: Path, host) -> None:
    before_version = Store.open(store_copy).current_version()
    before = outputs(store_copy, host)
    env = {**os.environ, "DMT_CRASH_AT": point}
    args = [sys.executable, "-m", "dmtcore", *COMMANDS[command], "--store", str(store_copy), *QUICK]
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]

    store = Store.open(store_copy)
    committed = point == "committed"
    assert store.current_version() == before_version + (1 if committed else 0)
    versions, problems = verify_store(store_copy, host.kinds, every_version=True)
    assert problems == []
    if not committed:
        after = outputs(store_copy, host)
        assert after.keys() == before.keys()
        assert all(torch.equal(before[t], after[t]) for t in before)
        rerun(command, store_copy, host)
        assert store.current_version() == before_version + 1
    else:
        rerun("add-task", store_copy, host) if command != "add-task" else remove_task(
            store_copy,
            "digits.prime",
            host,
            TrainSettings(epochs=1, batch_size=256),
            notify=lambda m: None,
        )
    assert list((store_copy / "tmp").iterdir()) == []
    assert {p.name for p in (store_copy / "blobs").iterdir()} == referenced_blobs(store)
    assert max(versions) <= store.current_version()


@pytest.mark.slow
def test_sigterm_stops_cleanly_and_marks_the_run_killed(
    store_copy: Path, mlflow_template: Path
) -> None:
    shutil.copy(mlflow_template, store_copy / "mlflow.db")
    before = sorted(p.name for p in (store_copy / "blobs").iterdir())
    version = Store.open(store_copy).current_version()
    args = [sys.executable, "-m", "dmtcore", "add-task", "digits.prime", "--store", str(store_copy),
            "--epochs", "200", "--no-register"]  # fmt: skip
    process = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until it trains
        if process.stderr.readline().startswith("epoch 1:"):
            break
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Interrupted: nothing was committed" in err
    assert Store.open(store_copy).current_version() == version
    assert sorted(p.name for p in (store_copy / "blobs").iterdir()) == before

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store_copy / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("store").experiment_id])
    assert [r.info.status for r in runs] == ["KILLED"]
