"""A segmentation task declares the label value its data marks unlabelled pixels with
(`TaskSpec.ignore_label`, -1 unless declared): labels are checked against it, the loss and the
metrics skip those pixels, the manifest records a value other than -1, and any other value
outside the classes (255 for a task declaring -1) is bad data in one line, never a crash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dmtcore.errors import DataError, InvalidValueError
from dmtcore.store.manifest import manifest_problems
from dmtcore.tasks.data import labels_for
from dmtcore.tasks.metrics import MetricState, pixel_cross_entropy
from dmtcore.tasks.spec import TaskSpec

from conftest import fingerprint

# 3×16×16 noise; class 1 where the red channel is bright; the top row is the declared
# ignore value (255 or -1), or 255 whatever the task declares (`marks`).
PLUGIN = """
import torch
from torch.utils.data import TensorDataset
from dmtcore import TaskData, TaskSpec, hookimpl

def split(seed, n, marks):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, 16, 16, generator=g)
    labels = (images[:, 0] > 0.5).long()
    labels[:, 0] = marks
    return TensorDataset(images, labels)

def factory(marks):
    return lambda request: TaskData(split(1, 32, marks), split(2, 16, marks))

@hookimpl
def dmt_register_tasks(registry):
    registry.add_task(TaskSpec(
        "ign.seg255", "255 marks unlabelled", (3, 16, 16), "segmentation", factory(255),
        num_outputs=2, ignore_label=255,
    ))
    registry.add_task(TaskSpec(
        "ign.seg", "-1 declared, 255 given", (3, 16, 16), "segmentation", factory(255),
        num_outputs=2,
    ))
"""
TINY = ["--epochs", "1", "--batch-size", "16", "--no-tracking"]


def spec(**options) -> TaskSpec:
    return TaskSpec(
        "a.seg", "", (3, 8, 8), "segmentation", lambda r: None, num_outputs=4, **options
    )


def test_the_ignore_value_defaults_to_minus_one_and_cannot_be_a_class() -> None:
    assert spec().ignore_label == -1 and "ignore_label" not in spec().describe()
    assert spec(ignore_label=255).describe()["ignore_label"] == 255
    with pytest.raises(
        InvalidValueError, match=r"ignore_label 3 is a class id \(valid class ids: 0\.\.3\)"
    ):
        spec(ignore_label=3)
    with pytest.raises(InvalidValueError, match="must be an integer"):
        spec(ignore_label=2.5)
    with pytest.raises(InvalidValueError, match="only segmentation tasks declare an ignore_label"):
        TaskSpec("a.depth", "", (3, 8, 8), "depth", lambda r: None, ignore_label=255)


def test_declared_pixels_are_skipped_by_the_loss_and_the_metrics() -> None:
    """255 in a task declaring it counts exactly as -1 does in a task declaring -1."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, generator=g)
    raw = torch.randint(0, 4, (2, 5, 6), generator=g)
    raw[0, 0], raw[1, :, 2] = 255, 255
    with_255 = labels_for(spec(ignore_label=255), raw)
    with_minus_one = labels_for(spec(), torch.where(raw == 255, -1, raw))
    assert torch.equal(with_255, with_minus_one) and int((with_255 == -1).sum()) == 11
    keep = raw != 255
    expected = torch.nn.functional.cross_entropy(logits.permute(0, 2, 3, 1)[keep], raw[keep])
    assert pixel_cross_entropy(logits, with_255).item() == pytest.approx(expected.item())
    state = MetricState("segmentation", ["miou", "pixel_accuracy"], 4)
    state.update(logits, with_255)
    accuracy = (logits.argmax(1)[keep] == raw[keep]).double().mean().item()
    assert state.result()["pixel_accuracy"] == pytest.approx(accuracy)


def test_a_stray_label_reaching_the_metrics_is_bad_data_not_a_reshape_error() -> None:
    logits, labels = torch.zeros(1, 2, 2, 2), torch.tensor([[[0, 1], [255, -1]]])
    state = MetricState("segmentation", ["miou"], 2)
    with pytest.raises(DataError, match=r"segmentation labels hold 255; valid: class ids 0\.\.1"):
        state.update(logits, labels)


def test_a_task_declaring_255_trains_and_evaluates(run_cli, tmp_path: Path, write_plugin) -> None:
    plugin, store = write_plugin("ign", PLUGIN), tmp_path / "store"
    added = run_cli("add-task", "ign.seg255", "--store", store, "-p", plugin, *TINY, "--json")
    assert all(v == v for v in json.loads(added.stdout)["metrics"].values())  # no NaN
    evaluated = json.loads(run_cli("eval", "--store", store, "-p", plugin, "--json").stdout)
    assert 0.0 < evaluated["metrics"]["ign.seg255"]["pixel_accuracy"] <= 1.0
    manifest = json.loads((store / "versions" / "v000002.json").read_text())
    assert manifest["tasks"][0]["ignore_label"] == 255
    run_cli("verify", "--store", store)  # the manifest's schema takes the field
    manifest["tasks"][0]["ignore_label"] = 1
    assert manifest_problems(manifest) == [
        "tasks[0].ignore_label 1 is a class id (0..1); it must be another value"
    ]


def test_a_task_declaring_minus_one_fed_255_names_the_value_and_the_declared_one(
    run_cli, tmp_path: Path, write_plugin
) -> None:
    plugin, store = write_plugin("ign", PLUGIN), tmp_path / "store"
    run_cli("init", "--store", store, "--input", "3x16x16", "--backbone-option", "spatial=true")
    before = fingerprint(store)
    result = run_cli("add-task", "ign.seg", "--store", store, "-p", plugin, *TINY, expect=7)
    line = result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr and "reshape" not in result.stderr
    assert line.startswith("Error: task 'ign.seg' (plugin 'ign'), train split: the first batch")
    assert "segmentation class id 255; valid: 0..1, or -1 for unlabelled pixels" in line
    assert "(the ignore value the task declares" in line
    assert fingerprint(store) == before
