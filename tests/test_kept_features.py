"""Frozen columns' features kept across operations (issue 16): adding task k + 1 on images seen
before runs only the newest column, gives the very same weights as computing every column, says
what it reused, and never trusts a damaged entry nor writes outside its budget or its store."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from dmtcore.operations import add_task
from dmtcore.store.directory import Store
from dmtcore.store.kept_features import DIRECTORY
from dmtcore.train.loop import TrainSettings

from conftest import fingerprint


def entries(store: Path) -> list[Path]:
    folder = store / DIRECTORY
    return sorted(folder.glob("*.safetensors")) if folder.is_dir() else []


def added(store: Path, host, **options) -> tuple:
    messages: list[str] = []
    settings = TrainSettings(epochs=2, batch_size=64, seed=1, **options)
    result = add_task(store, "digits.prime", host, settings, notify=messages.append)
    line = next(m for m in messages if m.startswith("feature cache: "))
    return result, line, {p.name for p in (store / "blobs").iterdir()}


def copy(store: Path, tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copytree(store, target)
    return target


def test_adding_a_task_reads_the_kept_columns_and_gives_the_same_weights(
    digits_store: Path, host, tmp_path: Path
) -> None:
    """The digits store kept digits.class's features when digits.even was added; adding
    digits.prime runs digits.even's column only, and trains to the very same weight files and
    metrics as a run that computes both columns."""
    assert len(entries(digits_store)) == 2, "digits.class on the train and val images"
    kept, kept_line, kept_blobs = added(copy(digits_store, tmp_path, "kept"), host)
    fresh, fresh_line, fresh_blobs = added(
        copy(digits_store, tmp_path, "fresh"), host, kept_features_mb=0
    )
    assert kept_blobs == fresh_blobs
    assert kept.metrics == fresh.metrics
    assert "1 computed now, 1 read from the features kept in the store (" in kept_line
    assert "2 frozen columns computed once for all epochs; " in fresh_line
    cache = kept.summary["feature_cache"]
    assert cache["kept_read"] == ["digits.class"] and cache["kept_new"] == ["digits.even"]
    assert len(entries(tmp_path / "kept")) == 4, "digits.even's features are kept now too"
    names = [p.name for p in entries(tmp_path / "fresh")]
    assert names == [p.name for p in entries(digits_store)], "0 MB: nothing kept"


def test_a_damaged_entry_is_recomputed_and_replaced(
    digits_store: Path, host, tmp_path: Path
) -> None:
    store = copy(digits_store, tmp_path, "damaged")
    victims = entries(store)
    for victim in victims:
        data = bytearray(victim.read_bytes())
        data[-100] ^= 0xFF  # one flipped byte in the features
        victim.write_bytes(bytes(data))
    messages: list[str] = []
    settings = TrainSettings(epochs=1, batch_size=64, seed=1)
    result = add_task(store, "digits.prime", host, settings, notify=messages.append)
    assert any(
        "kept features of digits.class were unusable (checksum mismatch)" in m for m in messages
    )
    assert result.summary["feature_cache"]["kept_read"] == []
    reference = copy(digits_store, tmp_path, "reference")
    again = add_task(reference, "digits.prime", host, settings, notify=lambda m: None)
    assert result.metrics == again.metrics
    assert [p.name for p in entries(store)] == [p.name for p in entries(reference)]
    for damaged, intact in zip(entries(store), entries(reference), strict=True):
        written, original = load_file(damaged), load_file(intact)
        assert all(torch.equal(written[k], original[k]) for k in original), "written again"


def test_the_budget_bounds_the_directory_and_zero_keeps_nothing(
    digits_store: Path, host, tmp_path: Path
) -> None:
    store = copy(digits_store, tmp_path, "budget")
    largest = max(p.stat().st_size for p in entries(store))
    budget_mb = largest * 1.5 / 2**20  # one column's train and val entries, not two columns'
    added(store, host, kept_features_mb=budget_mb)
    total = sum(p.stat().st_size for p in entries(store))
    assert 0 < total <= budget_mb * 2**20
    tasks = []
    for entry in entries(store):
        with safe_open(entry, framework="pt") as handle:
            tasks.append(handle.metadata()["task"])
    assert tasks == ["digits.even", "digits.even"], "the least recently used went first"

    empty = tmp_path / "empty"
    add_task(empty, "digits.class", host, TrainSettings(epochs=1, kept_features_mb=0), notify=print)
    add_task(empty, "digits.even", host, TrainSettings(epochs=1, kept_features_mb=0), notify=print)
    assert not (empty / DIRECTORY).exists()


def test_a_failed_operation_writes_no_features(digits_store: Path, host, tmp_path: Path) -> None:
    """Features are written after the commit: an operation that fails after its cache pass
    leaves every file of the store as it was."""
    store = copy(digits_store, tmp_path, "failed")
    before = fingerprint(store)
    with pytest.raises(Exception, match="lower the learning rate"):
        add_task(
            store,
            "digits.prime",
            host,
            TrainSettings(epochs=1, lr=1e30, seed=1),  # diverges: a non-finite loss
            notify=lambda m: None,
        )
    assert fingerprint(store) == before


def test_a_linked_features_directory_is_refused(
    digits_store: Path, tmp_path: Path, run_cli
) -> None:
    store = copy(digits_store, tmp_path, "linked")
    elsewhere = tmp_path / "elsewhere"
    (store / DIRECTORY).rename(elsewhere)
    os.symlink(elsewhere, store / DIRECTORY)
    before = fingerprint(elsewhere)
    result = run_cli(
        "add-task", "digits.prime", "--store", store, "--epochs", "1", "--no-tracking", expect=5
    )
    assert "is a symbolic link" in result.stderr and str(store / DIRECTORY) in result.stderr
    assert fingerprint(elsewhere) == before
    assert Store.open(store).current_version() == 3


def test_bad_budgets_are_refused(run_cli, tmp_path: Path) -> None:
    result = run_cli(
        "add-task",
        "digits.even",
        "--store",
        tmp_path / "s",
        "--kept-features-mb",
        "-1",
        expect=None,
    )
    assert result.exit_code != 0
    assert "kept features budget must be a number of megabytes ≥ 0, got -1.0" in result.stderr
    assert not (tmp_path / "s").exists()


def test_add_task_takes_several_names_each_its_own_version_and_run(
    new_store_dir: Path, run_cli
) -> None:
    """`dmt add-task A B` in one process: two versions and two MLflow runs, as two commands
    would give, and the second reads the first's kept features."""
    from mlflow.tracking import MlflowClient

    result = run_cli(
        "add-task", "digits.class", "digits.even", "--store", new_store_dir,
        "--epochs", "1", "--no-register", "--json",
    )  # fmt: skip
    added = json.loads(result.stdout)
    assert [(a["task"], a["version"]) for a in added] == [("digits.class", 2), ("digits.even", 3)]
    client = MlflowClient(tracking_uri=f"sqlite:///{new_store_dir / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert sorted(r.data.params["tasks"] for r in runs) == ["digits.class", "digits.even"]
    third = run_cli(
        "add-task", "digits.prime", "--store", new_store_dir, "--epochs", "1", "--no-tracking"
    )
    assert "1 computed now, 1 read from the features kept in the store (" in third.stderr
    assert third.stdout.startswith("Added digits.prime as version 4 in ")


def test_add_task_with_several_names_checks_them_all_first(tmp_path: Path, run_cli) -> None:
    store = tmp_path / "s"
    unknown = run_cli("add-task", "digits.class", "digits.evn", "--store", store, expect=3)
    assert "digits.evn" in unknown.stderr and "digits.even" in unknown.stderr
    twice = run_cli("add-task", "digits.even", "digits.even", "--store", store, expect=2)
    assert "each task can be added once, got digits.even digits.even" in twice.stderr
    assert not store.exists()
