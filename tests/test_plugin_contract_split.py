"""The plugin contract's seeds and remove-task's reconnection rule (issue 17, points 1 and 3).

A factory that splits its samples by `request.seed` must be given the seed its task was trained
with on every later call, or eval reads samples the task trained on. Reconnection after a cut
must never leave a task below the cut itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import fingerprint

SPLIT_PLUGIN = '''
"""200 generated samples split into train/val by request.seed; every call is logged."""
import json
import os

import torch
from torch.utils.data import TensorDataset

from dmtcore import TaskData, TaskSpec, hookimpl

POOL = 200


def datasets(request):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(POOL, 1, 8, 8, generator=g) * torch.rand(POOL, 1, 1, 1, generator=g)
    labels = (images.mean((1, 2, 3)) > 0.25).long()
    order = torch.randperm(POOL, generator=torch.Generator().manual_seed(request.seed)).tolist()
    train, val = order[:150], order[150:]
    with open(os.environ["SPLIT_LOG"], "a") as log:
        log.write(json.dumps({"seed": request.seed, "train": train, "val": val}) + "\\n")
    return TaskData(
        TensorDataset(images[train], labels[train]), TensorDataset(images[val], labels[val])
    )


@hookimpl
def dmt_register_tasks(registry):
    registry.add_task(
        TaskSpec(name="toy.split", description="bright noise, split by seed",
                 input_shape=(1, 8, 8), output="binary", datasets=datasets)
    )
'''


@pytest.fixture
def split_store(tmp_path: Path, write_plugin, run_cli, monkeypatch) -> tuple[Path, Path, Path]:
    """A store with toy.split added with --seed 3; returns (store, plugin file, call log)."""
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("SPLIT_LOG", str(log))
    plugin = write_plugin("split", SPLIT_PLUGIN)
    store = tmp_path / "store"
    run_cli(
        "add-task", "toy.split", "--store", store, "-p", plugin,
        "--seed", 3, "--epochs", 1, "--no-tracking",
    )  # fmt: skip
    return store, plugin, log


def _manifest_path(store: Path) -> Path:
    return store / "versions" / f"v{int((store / 'CURRENT').read_text()):06d}.json"


def _current_manifest(store: Path) -> dict:
    return json.loads(_manifest_path(store).read_text())


def _calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_eval_reads_the_validation_split_the_task_was_trained_with(split_store, run_cli):
    store, plugin, log = split_store
    (trained,) = _calls(log)
    assert trained["seed"] == 3
    before = fingerprint(store)
    run_cli("eval", "--store", store, "-p", plugin)  # default --seed 0
    evaluated = _calls(log)[-1]
    assert evaluated["val"] == trained["val"]
    assert not set(evaluated["val"]) & set(trained["train"])
    run_cli("eval", "--store", store, "-p", plugin, "--seed", 11, "--json")
    assert _calls(log)[-1]["val"] == trained["val"]
    assert fingerprint(store) == before


def test_a_store_without_a_recorded_split_seed_opens_and_evaluates_with_seed_0(
    split_store, run_cli
):
    """Stores written before the seed was recorded: as they were evaluated before, seed 0."""
    store, plugin, log = split_store
    manifest_path = _manifest_path(store)
    manifest = json.loads(manifest_path.read_text())
    assert manifest["tasks"][0]["data_seed"] == 3
    del manifest["tasks"][0]["data_seed"]
    manifest_path.write_text(json.dumps(manifest))
    run_cli("verify", "--store", store)
    run_cli("eval", "--store", store, "-p", plugin, "--seed", 5)
    assert _calls(log)[-1]["seed"] == 0


def test_a_damaged_split_seed_is_a_damaged_store(split_store, run_cli):
    store, plugin, _ = split_store
    manifest_path = _manifest_path(store)
    manifest = json.loads(manifest_path.read_text())
    manifest["tasks"][0]["data_seed"] = -1
    manifest_path.write_text(json.dumps(manifest))
    before = fingerprint(store)
    result = run_cli("eval", "--store", store, "-p", plugin, expect=5)
    assert manifest_path.name in result.stderr and "data_seed" in result.stderr
    assert "Traceback" not in result.stderr
    assert fingerprint(store) == before


def test_remove_task_reads_the_remaining_tasks_training_split(split_store, run_cli, write_plugin):
    """remove-task's before/cut/after scores are on each remaining task's own val split."""
    store, plugin, log = split_store
    bright = write_plugin("bright", _toy_bright())
    run_cli(
        "add-task", "toy.bright", "--store", store, "-p", plugin, "-p", bright,
        "--seed", 7, "--epochs", 1, "--no-tracking",
    )  # fmt: skip
    trained = _calls(log)[0]
    run_cli(
        "remove-task", "toy.bright", "--store", store, "-p", plugin, "-p", bright,
        "--epochs", 1, "--no-tracking",
    )  # fmt: skip
    assert _calls(log)[-1] == trained


def _toy_bright() -> str:
    from tests.conftest import toy_plugin

    return toy_plugin()


# -- point 3: reconnection never ends below the cut ------------------------------------------------


def _remove(run_cli, store: Path, *extra: str) -> dict:
    result = run_cli(
        "remove-task", "digits.class", "--store", store, "--epochs", 1, "--no-tracking",
        "--json", *extra,
    )  # fmt: skip
    return json.loads(result.stdout)["report"]["digits.even"]


def test_reconnection_that_never_beats_the_cut_keeps_the_cut(store_copy, run_cli, monkeypatch):
    """Every epoch of retraining validates worse than the cut: the cut weights are committed."""
    from dmtcore.train import loop as training

    real = training.evaluate

    def worse(*args, **kwargs):
        return {name: value - 1.0 for name, value in real(*args, **kwargs).items()}

    monkeypatch.setattr(training, "evaluate", worse)
    row = _remove(run_cli, store_copy)
    monkeypatch.undo()
    assert row["reconnected"] is True
    assert row["kept"] == "cut"
    assert row["after"] == row["cut"]
    evaluated = json.loads(run_cli("eval", "digits.even", "--store", store_copy, "--json").stdout)
    assert evaluated["metrics"]["digits.even"][row["metric"]] == pytest.approx(row["cut"], abs=1e-9)
    operation = _current_manifest(store_copy)["operation"]
    assert operation["best_epoch"] == 0
    assert operation["report"]["digits.even"]["kept"] == "cut"


def test_reconnection_ends_at_or_above_the_cut_and_says_what_it_kept(store_copy, run_cli):
    result = run_cli(
        "remove-task", "digits.class", "--store", store_copy, "--epochs", 1, "--no-tracking"
    )
    header, *rows = [line.split() for line in result.stdout.splitlines()[1:] if line.strip()]
    assert header[-1] == "kept"
    (row,) = [r for r in rows if r[0] == "digits.even"]
    cut, after, kept = float(row[3]), float(row[4]), " ".join(row[6:])
    assert after >= cut
    assert kept in ("cut", "epoch 1")
