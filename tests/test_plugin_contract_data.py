"""The data contract of docs/plugins.md, enforced on the first batch: a
plugin whose images lack the channel dimension, have channels the task does not declare, hold
0..255 values or integer pixels, or whose classification labels are floats, is refused with
one line naming the task, its plugin, the value found and what is valid (exit 7, store
unchanged) instead of training on data that `dmt predict` would never feed the model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import fingerprint

TASK = "toy.contract"
ONE_EPOCH = ["--epochs", "1", "--batch-size", "64", "--no-tracking"]

PLUGIN = """
import torch
from torch.utils.data import TensorDataset

from dmtcore import TaskData, TaskSpec, hookimpl

PROBLEM = {problem!r}


def split(seed, n):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, 8, 8, generator=g)
    labels = (images.mean((1, 2, 3)) > 0.5).long()
    if PROBLEM == "no-channel":
        images = images[:, 0]
    if PROBLEM == "rgb":
        images = images.expand(-1, 3, -1, -1).contiguous()
    if PROBLEM == "0-255":
        images = images * 255
    if PROBLEM == "uint8":
        images = (images * 255).to(torch.uint8)
    if PROBLEM == "normalised":
        images = (images - 0.5) / 0.25
    if PROBLEM == "float-labels":
        labels = labels.float()
    if PROBLEM == "float-labels-multiclass":
        labels = (images.mean((1, 2, 3)) * 3).floor().clamp(max=2).double()
    return TensorDataset(images, labels)


def datasets(request):
    return TaskData(train=split(1, 256), val=split(2, 64))


@hookimpl
def dmt_register_tasks(registry):
    multiclass = PROBLEM == "float-labels-multiclass"
    registry.add_task(
        TaskSpec(
            name={task!r},
            description="contract",
            input_shape=(1, 8, 8),
            output="multiclass" if multiclass else "binary",
            num_outputs=3 if multiclass else 2,
            datasets=datasets,
        )
    )
"""

# (problem, what the message says after "task 'toy.contract' (plugin NAME), train split: ")
VIOLATIONS = [
    (
        "no-channel",
        "images must be tensors of C×H×W each (a batch of N×C×H×W), got the first batch of "
        "(64, 8, 8) (give each image its channel dimension: image[None])",
    ),
    (
        "rgb",
        "the first batch has images of 3 channels; valid: 1 (the task's input_shape, or the "
        "store's input spec given in request.input_spec)",
    ),
    ("0-255", "pixel values in the first batch range 0.0"),
    ("uint8", "the first batch has images of dtype torch.uint8; images must be floats in [0, 1]"),
    ("normalised", "pixel values in the first batch range -1.9"),
    (
        "float-labels",
        "binary labels must be one class index per image, got shape (64,) dtype torch.float32 "
        "in the first batch; valid: shape (N,) of an integer dtype (torch.long; bool for binary)",
    ),
    (
        "float-labels-multiclass",
        "multiclass labels must be one class index per image, got shape (64,) dtype "
        "torch.float64 in the first batch; valid: shape (N,) of an integer dtype",
    ),
]


def error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith("Error: ") and "Traceback" not in stderr, stderr
    assert sum(line.startswith("Error: ") for line in lines) == 1, stderr
    return lines[-1].removeprefix("Error: ")


@pytest.mark.parametrize(("problem", "message"), VIOLATIONS, ids=[p for p, _ in VIOLATIONS])
def test_data_outside_the_contract_is_refused_before_training(
    store_copy: Path, run_cli, write_plugin, problem: str, message: str
) -> None:
    name = f"contract_{problem.replace('-', '_')}"
    plugin = write_plugin(name, PLUGIN.format(problem=problem, task=TASK))
    before = fingerprint(store_copy)
    result = run_cli("add-task", TASK, "-p", plugin, "--store", store_copy, *ONE_EPOCH, expect=7)
    line = error_line(result.stderr)
    assert line.startswith(f"task {TASK!r} (plugin {name!r}), train split: {message}"), line
    if problem in ("0-255", "normalised"):
        assert line.endswith("; valid: 0..1 (floats in [0, 1], as dmt predict reads image files; "
                             "divide 8-bit pixels by 255, do not normalise)"), line  # fmt: skip
    assert fingerprint(store_copy) == before


def test_data_within_the_contract_trains(store_copy: Path, run_cli, write_plugin) -> None:
    """The same plugin without a violation is accepted: the checks refuse only what they must."""
    plugin = write_plugin("contract_fine", PLUGIN.format(problem=None, task=TASK))
    run_cli("add-task", TASK, "-p", plugin, "--store", store_copy, *ONE_EPOCH)


def test_images_may_have_the_tasks_or_the_stores_channels() -> None:
    """A factory is told the store's input spec and may deliver its channels (the built-in
    imagefolder does in a 1-channel store); any other count is refused."""
    from dmtcore.errors import DataError
    from dmtcore.tasks.data import check_images, valid_channels
    from dmtcore.tasks.names import InputSpec
    from dmtcore.tasks.spec import TaskSpec

    spec = TaskSpec("toy.rgb", "rgb", (3, 8, 8), "binary", lambda r: None)
    channels = valid_channels(spec, InputSpec(1, 16, 16))
    assert channels == (1, 3)
    for count in channels:
        check_images("here", torch.rand(4, count, 8, 8), "the first batch", channels=channels)
    with pytest.raises(DataError, match="has images of 4 channels; valid: 1 or 3"):
        check_images("here", torch.rand(4, 4, 8, 8), "the first batch", channels=channels)


def test_pixels_at_the_bounds_pass() -> None:
    """0 and 1 exactly (digits divides by 16 and reaches 1.0), and rounding just past them."""
    from dmtcore.tasks.data import check_images

    images = torch.tensor([0.0, 1.0, 1.0 + 1e-6, -1e-6]).view(1, 1, 2, 2)
    assert check_images("here", images, "the first batch") == (1, 2, 2)
