"""Joint training of tasks that share their images runs every column once per batch (one
pass, the tasks' losses summed); tasks with different images, or --balance, take turns; the
version, the run and the output say which ran; a single add-task trains as it always did."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import dmtcore.operations.adding as adding
from dmtcore.operations import add_task, remove_task, train_tasks
from dmtcore.store.directory import Store
from dmtcore.train.loop import TrainSettings

from conftest import fingerprint, toy_plugin

NEW = ["digits.large", "digits.prime"]


def _operation(store: Path) -> dict[str, Any]:
    return Store.open(store).manifest()["operation"]


def _count_first_stage_calls(monkeypatch: pytest.MonkeyPatch, names: list[str]) -> dict:
    """Training-mode forward calls of each new column's first stage, and its batches per epoch."""
    counts: dict[str, int] = dict.fromkeys(names, 0)
    batches: dict[str, int] = {}
    real_fit = adding.fit

    def counting_fit(model, targets, *args, **kwargs):
        for target in targets:
            batches[target.spec.name] = len(target.train)
        for name in names:
            stage = model.columns[model.tasks[name].slot].stages[0]

            def hook(module, inputs, output, name=name):
                if module.training:
                    counts[name] += 1

            stage.register_forward_hook(hook)
        return real_fit(model, targets, *args, **kwargs)

    monkeypatch.setattr(adding, "fit", counting_fit)
    return {"calls": counts, "batches": batches}


def test_shared_image_tasks_run_each_column_once_per_batch(
    store_copy: Path, host, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _count_first_stage_calls(monkeypatch, NEW)
    messages: list[str] = []
    result = train_tasks(
        store_copy, NEW, host, TrainSettings(epochs=2, seed=1), notify=messages.append
    )
    # 2 epochs: after 1 (22 steps) BatchNorm's running averages can still lag, as for add-task
    # one call per batch and epoch; taking turns, each task's pass would run both columns
    assert seen["calls"] == {n: 2 * b for n, b in seen["batches"].items()}
    operation = _operation(store_copy)
    assert operation["joint_mode"] == "one-pass"
    assert operation["feature_cache"]["hits"] > 0  # frozen digits.class, digits.even cached
    assert any("in one pass per batch" in str(m) for m in messages)
    for name in NEW:
        assert result.metrics[name]["balanced_accuracy"] > 0.7, result.metrics  # chance: 0.5


def test_turns_when_asked_run_each_column_once_per_task(
    store_copy: Path, host, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = _count_first_stage_calls(monkeypatch, NEW)
    train_tasks(
        store_copy, NEW, host, TrainSettings(epochs=1, seed=1, joint_mode="turns"), notify=print
    )
    assert seen["calls"] == {n: 2 * b for n, b in seen["batches"].items()}  # 2 tasks, 1 epoch
    assert _operation(store_copy)["joint_mode"] == "turns"


def test_tasks_with_different_images_take_turns_and_say_why(
    tmp_path: Path, run_cli, write_plugin
) -> None:
    plugin = write_plugin("toy_turns", toy_plugin())
    store = tmp_path / "store"
    common = ["--store", str(store), "--epochs", "1", "--no-tracking", "-p", str(plugin)]
    result = run_cli("train", "digits.even", "toy.bright", *common)
    assert "taking turns, one batch each (their train images differ)" in result.stderr
    assert _operation(store)["joint_mode"] == "turns"

    before = fingerprint(store)
    refused = run_cli(
        "train", "digits.large", "digits.prime", "--joint-mode", "both", *common, expect=None
    )
    assert refused.exit_code == 2
    assert fingerprint(store) == before


def test_forcing_one_pass_on_different_images_is_refused(
    store_copy: Path, run_cli, write_plugin
) -> None:
    plugin = write_plugin("toy_refused", toy_plugin())
    before = fingerprint(store_copy)
    args = ["--store", str(store_copy), "--epochs", "1", "--no-tracking", "-p", str(plugin)]
    result = run_cli(
        "train", "digits.large", "toy.bright", *args, "--joint-mode", "one-pass", expect=None
    )
    assert result.exit_code == 11
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: --joint-mode one-pass needs tasks that share their images, but their train "
        "images differ; use --joint-mode turns or auto"
    )
    assert fingerprint(store_copy) == before


def test_balance_takes_turns(tmp_path: Path, run_cli) -> None:
    store = tmp_path / "store"
    result = run_cli(
        "train", *NEW, "--store", str(store), "--epochs", "1", "--no-tracking", "--balance"
    )
    assert "--balance draws each task's batches by its own classes" in result.stderr
    assert _operation(store)["joint_mode"] == "turns"


def test_a_single_add_task_trains_the_same_whatever_the_joint_mode(tmp_path: Path, host) -> None:
    """One task has no group to share a pass with: the option changes nothing, and the
    record says 'single'. (Its blobs were also checked byte-identical to the code before
    one-pass training existed.)"""
    blobs = {}
    for mode in ("auto", "turns", "one-pass"):
        store = tmp_path / mode
        add_task(store, "digits.even", host, TrainSettings(epochs=1, joint_mode=mode))
        manifest = Store.open(store).manifest()
        assert manifest["operation"]["joint_mode"] == "single"
        blobs[mode] = json.dumps(manifest["tasks"][0]["weights"], sort_keys=True)
    assert len(set(blobs.values())) == 1


def test_remove_task_reconnects_shared_image_tasks_in_one_pass(store_copy: Path, host) -> None:
    add_task(store_copy, "digits.large", host, TrainSettings(epochs=1), notify=print)
    messages: list[str] = []
    remove_task(store_copy, "digits.class", host, TrainSettings(epochs=1), notify=messages.append)
    assert _operation(store_copy)["joint_mode"] == "one-pass"  # digits.even, digits.large
    assert any("digits.even, digits.large in one pass per batch" in str(m) for m in messages)


@pytest.mark.slow
def test_joint_training_benchmark_quick(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "result.json"
    script = Path(__file__).parents[1] / "benchmarks" / "joint_training.py"
    done = subprocess.run(
        [sys.executable, str(script), "--quick", "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    (row,) = json.loads(out.read_text())["rows"]
    assert row["connection"] == "cross-stitch" and row["speedup_cpu"] > 1
    assert "turns ÷ one-pass" in done.stdout


def test_a_one_epoch_one_pass_run_recalibrates_batchnorm_and_learns(
    tmp_path: Path, run_cli
) -> None:
    """One pass updates each column's BatchNorm statistics once per batch, not once per task:
    a one-epoch run is short for them and gets recalibrated (without it, prime scored 0.78)."""
    store = tmp_path / "store"
    out = run_cli(
        "train", *NEW, "--store", store, "--epochs", "1", "--no-tracking", "--json"
    ).stdout
    metrics = json.loads(out)["metrics"]
    assert _operation(store)["joint_mode"] == "one-pass"
    assert all(m["balanced_accuracy"] > 0.9 for m in metrics.values()), metrics
