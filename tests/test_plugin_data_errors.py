"""Plugin data that goes wrong after the first batch: a dataset that raises mid-epoch, a label
out of range or an image of another size in a later batch, a validation split that raises or
has bad labels later. Each is one line naming the task and the plugin, exit 7, nothing
committed, and a tracked run marked FAILED."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import fingerprint, toy_plugin

ONE_EPOCH = ["--epochs", "1", "--batch-size", "64"]
TASK = "toy.bright"

# (problem, extra options, what the message says after the task and plugin). Later-data
# problems start after 192 reads in a process: the first-batch check (64 reads) passes and
# batch 3 of the next pass is the first bad one.
LATER_PROBLEMS = [
    ("raises-later", [], "train split: reading batch 3 failed: RuntimeError: sample"),
    ("label-later", [], "train split: labels in batch 3 range 5..6, but the task has 2 outputs"),
    (
        "size-later",
        [],
        "train split: reading batch 3 failed: RuntimeError: stack expects each tensor to be equal size",
    ),
    ("val-raises", [], "val split: reading batch 3 failed: RuntimeError: sample"),
    ("val-label-later", [], "val split: labels in batch 3 range 5..6, but the task has 2 outputs"),
    (
        "raises-later",
        ["--workers", "2"],
        "is unreadable (in a data worker process)",
    ),
    ("factory-raises", [], "its dataset factory failed: RuntimeError: the disk is on fire"),
]


def error_line(stderr: str) -> str:
    """The error the CLI printed last, without its prefix: one line, no traceback (notes such
    as 'feature cache off' may come before it)."""
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith("Error: ") and "Traceback" not in stderr, stderr
    assert sum(line.startswith("Error: ") for line in lines) == 1, stderr
    return lines[-1].removeprefix("Error: ")


@pytest.mark.parametrize(
    ("problem", "options", "message"),
    LATER_PROBLEMS,
    ids=[f"{p}{'-workers' if o else ''}" for p, o, _ in LATER_PROBLEMS],
)
def test_later_bad_data_is_a_data_error_and_commits_nothing(
    store_copy: Path, run_cli, write_plugin, problem, options, message
) -> None:
    name = f"later_{problem.replace('-', '_')}"
    plugin = write_plugin(name, toy_plugin(problem))
    before = fingerprint(store_copy)
    result = run_cli(
        "add-task", TASK, "-p", plugin, "--store", store_copy, "--no-tracking",
        *ONE_EPOCH, *options, expect=7,
    )  # fmt: skip
    line = error_line(result.stderr)
    assert line.startswith(f"task {TASK!r} (plugin {name!r})"), line
    assert message in line, line
    assert "second line" not in line
    assert fingerprint(store_copy) == before


def test_later_bad_data_marks_the_tracked_run_failed(
    store_copy: Path, run_cli, write_plugin, mlflow_template: Path
) -> None:
    shutil.copy(mlflow_template, store_copy / "mlflow.db")
    plugin = write_plugin("later_tracked", toy_plugin("val-raises"))
    before = {k: v for k, v in fingerprint(store_copy).items() if k != "mlflow.db"}
    result = run_cli("add-task", TASK, "-p", plugin, "--store", store_copy, *ONE_EPOCH, expect=7)
    assert "(plugin 'later_tracked'), val split: reading batch 3 failed" in error_line(
        result.stderr
    )
    assert {k: v for k, v in fingerprint(store_copy).items() if k != "mlflow.db"} == before

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store_copy / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("store").experiment_id])
    assert run.info.status == "FAILED"
    assert "DataError: task 'toy.bright' (plugin 'later_tracked')" in run.data.tags["dmt.error"]


def test_diverging_training_is_still_exit_8(store_copy: Path, run_cli, write_plugin) -> None:
    """NaN pixels are now a data error (exit 7) wherever they appear; a loss that diverges on
    finite data keeps its own exit code."""
    plugin = write_plugin("plain", toy_plugin())
    before = fingerprint(store_copy)
    result = run_cli(
        "add-task", TASK, "-p", plugin, "--store", store_copy, "--no-tracking",
        *ONE_EPOCH, "--lr", "1e30", expect=8,
    )  # fmt: skip
    assert "the training loss became nan in epoch 1" in error_line(result.stderr)
    assert fingerprint(store_copy) == before


class Samples:
    """64 samples of a task of the given output kind; from sample 32 on (batch 3 in batches
    of 16, in order) `problem` spoils them."""

    def __init__(self, output: str, problem: str) -> None:
        self.output, self.problem = output, problem

    def __len__(self) -> int:
        return 64

    def __getitem__(self, index: int):
        import torch

        image = torch.rand(1, 8, 8)
        label = {
            "binary": index % 2,
            "multilabel": torch.tensor([1.0, 0.0, 1.0]),
            "regression": torch.tensor([0.5]),
        }[self.output]
        if index < 32:
            return image, label
        if self.problem == "raises":
            raise OSError(f"cannot read sample {index}")
        if self.problem == "size":
            return torch.rand(1, 16, 16), label
        if self.problem == "nan-pixels":
            return torch.full((1, 8, 8), float("nan")), label
        if self.problem == "inf-label":
            return image, float("inf")
        if self.problem == "label-2":
            return image, torch.tensor([0.0, 2.0, 1.0])
        return image, torch.tensor([float("nan")])


BATCH_PROBLEMS = [
    ("binary", "raises", "reading batch 3 failed: OSError: cannot read sample 32"),
    ("binary", "size", "batch 3 has images of shape (1, 16, 16), the first batch (1, 8, 8)"),
    ("binary", "nan-pixels", "batch 3 has NaN or infinite pixel values"),
    ("binary", "inf-label", "binary labels must be one class index per image"),
    ("multilabel", "label-2", "multilabel targets must be 0 or 1; batch 3 has others"),
    ("regression", "nan-label", "batch 3 has NaN or infinite labels"),
]


@pytest.mark.parametrize(("output", "problem", "message"), BATCH_PROBLEMS)
def test_every_batch_is_checked(output: str, problem: str, message: str) -> None:
    """What training, validation and evaluation read: checked batch by batch."""
    import torch

    from dmtcore.errors import DataError
    from dmtcore.tasks.data import Batches
    from dmtcore.tasks.names import InputSpec
    from dmtcore.tasks.spec import TaskSpec

    outputs = {"binary": None, "multilabel": 3, "regression": 1}[output]
    spec = TaskSpec("toy.unit", "unit", (1, 8, 8), output, lambda r: None, num_outputs=outputs)
    batches = Batches(
        spec, Samples(output, problem), InputSpec(1, 8, 8), 16, False, torch.device("cpu"),
        split="val", plugin="unitplug",
    )  # fmt: skip
    batches.validate()
    with pytest.raises(DataError) as caught:
        list(batches)
    assert str(caught.value).startswith("task 'toy.unit' (plugin 'unitplug'), val split: ")
    assert message in str(caught.value)


def test_feature_cache_reads_are_checked() -> None:
    """The feature cache's fill pass reads samples by index (`Batches.fetch`)."""
    import torch

    from dmtcore.errors import DataError
    from dmtcore.tasks.data import Batches
    from dmtcore.tasks.names import InputSpec
    from dmtcore.tasks.spec import TaskSpec

    spec = TaskSpec("toy.unit", "unit", (1, 8, 8), "binary", lambda r: None)
    batches = Batches(
        spec, Samples("binary", "raises"), InputSpec(1, 8, 8), 16, False, torch.device("cpu"),
        plugin="unitplug",
    )  # fmt: skip
    assert batches.fetch(torch.arange(0, 32)).shape == (32, 1, 8, 8)
    with pytest.raises(DataError, match=r"train split: reading samples 32\.\.63 failed: OSError"):
        batches.fetch(torch.arange(32, 64))
