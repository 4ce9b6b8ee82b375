"""Tracking survives what happens to real users (issue 13, classes 2, 4, 5 and 10): a command
killed while MLflow creates the embedded database, store paths that a SQLite URI cannot hold,
runs left RUNNING by a killed command, and a registered model whose files were edited."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import fingerprint

QUICK = ["--epochs", "1", "--batch-size", "256"]


def runs(database: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{database}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments)


def half_created(template: Path, destination: Path) -> Path:
    """A database as a migration killed part-way leaves it: tables there, no schema version."""
    shutil.copy(template, destination)
    with sqlite3.connect(destination) as connection:
        connection.execute("DROP TABLE alembic_version")
    return destination


def test_a_half_created_database_without_runs_is_replaced(
    store_copy: Path, mlflow_template: Path, run_cli
) -> None:
    half_created(mlflow_template, store_copy / "mlflow.db")

    result = run_cli("add-task", "digits.prime", "--store", store_copy, *QUICK, "--no-register")

    assert "left half-created by an interrupted command" in result.stderr
    aside = list(store_copy.glob("mlflow.db.broken-*"))
    assert len(aside) == 1
    assert [r.info.status for r in runs(store_copy / "mlflow.db")] == ["FINISHED"]


def test_a_broken_database_holding_runs_is_refused_and_kept(
    store_copy: Path, mlflow_template: Path, run_cli
) -> None:
    database = store_copy / "mlflow.db"
    shutil.copy(mlflow_template, database)
    run_cli("register", "--store", store_copy)  # a run and a registered model worth keeping
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE _alembic_tmp_tags (key VARCHAR(250))")
    before = fingerprint(store_copy)

    result = run_cli("add-task", "digits.prime", "--store", store_copy, *QUICK, expect=10)

    assert "an interrupted schema migration left table _alembic_tmp_tags" in result.stderr
    assert "holds runs or models" in result.stderr and "mlflow db upgrade" in result.stderr
    assert fingerprint(store_copy) == before


@pytest.mark.slow
def test_killing_the_first_tracked_command_never_breaks_tracking(store_copy: Path, run_cli) -> None:
    args = [sys.executable, "-m", "dmtcore", "add-task", "digits.prime", "--store",
            str(store_copy), *QUICK, "--no-register"]  # fmt: skip
    process = subprocess.Popen(args, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if (store_copy / "mlflow.db").exists() or list(store_copy.glob("tmp/mlflow-db-*/*.db")):
            break  # MLflow is migrating the new database: kill it in the middle
        time.sleep(0.01)
    time.sleep(0.7)  # MLflow's migrations take 1-2 s here; a kill 0.5-1 s in broke them
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)

    run_cli("add-task", "digits.prime", "--store", store_copy, *QUICK, "--no-register")

    assert "FINISHED" in [r.info.status for r in runs(store_copy / "mlflow.db")]
    assert list((store_copy / "tmp").iterdir()) == []


@pytest.mark.slow
def test_a_killed_commands_run_is_marked_killed_by_its_tracking_process(
    store_copy: Path, mlflow_template: Path
) -> None:
    """SIGKILL mid-training (no cleanup, no `finally`): the tracking process, which outlives
    the command, sees its input end and ends the run as KILLED at once."""
    shutil.copy(mlflow_template, store_copy / "mlflow.db")
    env = {**os.environ, "DMT_CRASH_AT": "step:2"}
    args = [sys.executable, "-m", "dmtcore", "add-task", "digits.prime", "--store",
            str(store_copy), *QUICK, "--no-register"]  # fmt: skip
    killed = subprocess.run(args, env=env, capture_output=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL

    deadline = time.monotonic() + 60
    while (found := runs(store_copy / "mlflow.db")) and found[0].info.status == "RUNNING":
        assert time.monotonic() < deadline, "the killed command's run is still RUNNING"
        time.sleep(0.5)
    assert [r.info.status for r in found] == ["KILLED"]
    assert "ended without reporting" in found[0].data.tags["dmt.error"]
    assert "tracking process" in found[0].data.tags["dmt.error"]


def test_a_run_left_running_is_marked_killed_by_the_next_writer(
    store_copy: Path, mlflow_template: Path, run_cli
) -> None:
    """A run still RUNNING whose command and tracker are both gone (a power cut) is ended
    as KILLED by the store's next writer; the new run finishes."""
    import socket

    from mlflow.tracking import MlflowClient

    shutil.copy(mlflow_template, store_copy / "mlflow.db")
    run_cli("add-task", "digits.prime", "--store", store_copy, *QUICK, "--no-register")
    client = MlflowClient(tracking_uri=f"sqlite:///{store_copy / 'mlflow.db'}")
    experiment = runs(store_copy / "mlflow.db")[0].info.experiment_id
    tags = {"dmt.store": str(store_copy.resolve()), "dmt.operation": "add-task",
            "dmt.host": socket.gethostname()}  # fmt: skip
    client.create_run(experiment, tags=tags)  # RUNNING, as a power cut leaves it

    run_cli("add-task", "digits.loop", "--store", store_copy, *QUICK, "--no-register")

    statuses = sorted(
        (r.info.status, r.data.tags.get("dmt.error", "")) for r in runs(store_copy / "mlflow.db")
    )
    assert [s for s, _ in statuses] == ["FINISHED", "FINISHED", "KILLED"]
    assert "marked by the next writer" in statuses[-1][1]


def test_embedded_tracking_writes_nothing_beside_a_store_with_a_space(
    store_copy: Path, tmp_path: Path, mlflow_template: Path, run_cli
) -> None:
    """A percent-quoted URI would make MLflow create 'my%20store' beside the store."""
    store = tmp_path / "my store"
    shutil.move(store_copy, store)
    shutil.copy(mlflow_template, store / "mlflow.db")
    siblings = sorted(p.name for p in tmp_path.iterdir())

    run_cli("register", "--store", store)

    assert sorted(p.name for p in tmp_path.iterdir()) == siblings
    assert list((store / "mlartifacts").iterdir())


def test_pull_refuses_a_model_that_does_not_rebuild(
    store_copy: Path, tmp_path: Path, mlflow_template: Path, run_cli
) -> None:
    shutil.copy(mlflow_template, store_copy / "mlflow.db")
    run_cli("register", "--store", store_copy)
    (manifest,) = store_copy.glob("mlartifacts/*/artifacts/model/artifacts/store/versions/*.json")
    data = json.loads(manifest.read_text())
    data["tasks"][0]["output"]["size"] = 9  # checksums still match; the head no longer fits
    manifest.write_text(json.dumps(data))
    target = tmp_path / "pulled"

    result = run_cli("pull", "models:/store/1", "--store", target, "--tracking-uri",
                     f"sqlite:///{store_copy / 'mlflow.db'}", expect=5)  # fmt: skip

    assert "'models:/store/1' is damaged, nothing was pulled" in result.stderr
    assert f"models:/store/1 artifacts/store/versions/{manifest.name}" in result.stderr
    assert not re.search(r"/tmp[\w]{8}/", result.stderr)  # names no deleted download folder
    assert not target.exists()
