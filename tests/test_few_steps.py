"""Few optimiser steps (issue 17): a warning that says so, and BatchNorm statistics re-estimated
on the training data so that an easy task does not sit at chance with a low training loss."""

from __future__ import annotations

import json
from pathlib import Path

import torch

THREE_ROWS = '''
"""An easy 3-way task on 140 training images: which band of an 8x8 noise image is bright."""
import torch
from torch.utils.data import TensorDataset

from dmtcore import TaskData, TaskSpec, hookimpl


def make(seed, n):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    images = torch.rand(n, 1, 8, 8, generator=g) * 0.3
    for k in range(3):
        images[labels == k, :, 3 * k : 3 * k + 2, :] += 0.7
    return images.clamp(0, 1), labels


def datasets(request):
    return TaskData(TensorDataset(*make(1, 140)), TensorDataset(*make(2, 150)))


@hookimpl
def dmt_register_tasks(registry):
    registry.add_task(
        TaskSpec(name="three.rows", description="bright band", input_shape=(1, 8, 8),
                 output="multiclass", num_outputs=3, datasets=datasets)
    )
'''
TASK = "three.rows"


def _warning(stderr: str) -> str:
    [line] = [line for line in stderr.splitlines() if "optimiser step" in line]
    return line


def _train(run_cli, plugin: Path, store: Path, *options: str):
    result = run_cli(
        "add-task", TASK, "-p", plugin, "--store", store, "--no-tracking", "--json",
        "--epochs", "3", "--batch-size", "64", "--seed", "0", *options,
    )  # fmt: skip
    return result, json.loads(result.stdout)


def test_few_steps_warn_and_recalibrated_batchnorm_is_not_at_chance(
    tmp_path: Path, run_cli, write_plugin
) -> None:
    """140 images in batches of 64: 2 steps per epoch. Without recalibration the running
    statistics still mostly hold their initial values and validation sits at chance (1/3)
    although the training loss is low; re-estimated on the training data, the task is solved."""
    plugin = write_plugin("three_rows", THREE_ROWS)
    fixed, fixed_json = _train(run_cli, plugin, tmp_path / "fixed")
    assert fixed_json["metrics"]["accuracy"] > 0.9, fixed_json
    plain, plain_json = _train(run_cli, plugin, tmp_path / "plain", "--no-bn-recalibration")

    for result in (plain, fixed):
        warning = _warning(result.stderr)
        assert warning.startswith(f"warning: task {TASK!r} gets only 2 optimiser steps per epoch")
        assert (
            "6 in all (140 training images, batch size 64, last partial batch dropped)" in warning
        )
        assert "--batch-size (14 gives 10 steps per epoch)" in warning
        assert "more --epochs" in warning
    assert "--no-bn-recalibration" in _warning(plain.stderr)
    assert abs(plain_json["metrics"]["accuracy"] - 1 / 3) < 0.02, plain_json

    manifest = json.loads((tmp_path / "fixed" / "versions" / "v000002.json").read_text())
    assert manifest["operation"]["settings"]["bn_recalibration"] is None  # auto: few steps
    assert manifest["operation"]["bn_recalibrated"] is True


def test_enough_steps_do_not_warn(tmp_path: Path, run_cli, write_plugin) -> None:
    plugin = write_plugin("three_rows_small_batches", THREE_ROWS)
    result = run_cli(
        "add-task", TASK, "-p", plugin, "--store", tmp_path / "store", "--no-tracking",
        "--epochs", "2", "--batch-size", "14",
    )  # fmt: skip
    assert "optimiser step" not in result.stderr


def test_recalibrated_statistics_are_the_training_data_statistics_and_old_tasks_stay(
    store_copy: Path, run_cli, write_plugin, host
) -> None:
    """Added to the digits store (frozen columns read through the feature cache): the new
    column's first BatchNorm holds the mean and variance of its input over the training split
    (one batch of all 140 images), and every old task's weights are the very same blobs."""
    from dmtcore.store.checkpoint import load_model
    from dmtcore.store.directory import Store

    plugin = write_plugin("three_rows_on_digits", THREE_ROWS)
    store = Store.open(store_copy)
    before = store.manifest()
    result = run_cli(
        "add-task", TASK, "-p", plugin, "--store", store_copy, "--no-tracking",
        "--epochs", "1", "--batch-size", "256",
    )  # fmt: skip
    assert "feature cache:" in result.stderr
    after = store.manifest()
    old = {t["name"]: t["weights"] for t in before["tasks"]}
    assert {t["name"]: t["weights"] for t in after["tasks"] if t["name"] in old} == old

    model = load_model(store, after, host.kinds)
    first_stage = model.part(TASK, "column").stages[0]
    [position] = [
        i for i, m in enumerate(first_stage) if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
    ]
    norm = first_stage[position]
    namespace: dict = {}
    exec(compile(THREE_ROWS, "three_rows", "exec"), namespace)
    images, _ = namespace["make"](1, 140)
    with torch.no_grad():
        inputs = first_stage[:position](images)
    torch.testing.assert_close(norm.running_mean, inputs.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(norm.running_var, inputs.var((0, 2, 3)), rtol=1e-4, atol=1e-5)
