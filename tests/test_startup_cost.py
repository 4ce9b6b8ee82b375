"""A small task pays only for what it uses: no compiler, no scikit-learn, MLflow or matplotlib
in an untracked add-task on generated data, and the same weights as torch's own optimisers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

NOT_NEEDED = ("torch._dynamo", "sklearn", "mlflow", "matplotlib")

# Runs the CLI as `dmt` does and prints, at exit, which of NOT_NEEDED were imported.
WRAPPER = f"""
import atexit, sys
atexit.register(lambda: print("LOADED", sorted(m for m in {NOT_NEEDED!r} if m in sys.modules)))
from dmtcore.cli import cli
for task in ("shapes.kind", "shapes.colour"):
    cli(["add-task", task, "--store", sys.argv[1], "--epochs", "1", "--batch-size", "64",
         "--no-tracking"], standalone_mode=False)
"""


def test_untracked_add_task_imports_no_compiler_sklearn_mlflow_or_matplotlib(
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", WRAPPER, str(store)], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert (store / "versions" / "v000003.json").is_file()  # both tasks added, one on a model
    assert "LOADED []" in out.stdout, out.stdout[-500:]


def _blobs(store: Path) -> set[str]:
    return {p.name for p in (store / "blobs").iterdir()}


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_weights_are_byte_identical_to_torchs_own_optimisers(
    store_copy: Path, tmp_path: Path, host, monkeypatch: pytest.MonkeyPatch, optimizer: str
) -> None:
    import shutil

    import torch

    from dmtcore import training
    from dmtcore.operations import add_task
    from dmtcore.training import TrainSettings

    settings = TrainSettings(epochs=1, batch_size=64, optimizer=optimizer)
    reference = tmp_path / "reference"
    shutil.copytree(store_copy, reference)
    before = _blobs(reference)
    add_task(store_copy, "digits.large", host, settings, notify=lambda m: None)
    torchs = {
        "adam": lambda groups: torch.optim.Adam(groups),
        "sgd": lambda groups: torch.optim.SGD(groups, momentum=0.9),
    }
    monkeypatch.setattr(training, "OPTIMIZERS", torchs)
    add_task(reference, "digits.large", host, settings, notify=lambda m: None)
    assert _blobs(store_copy) == _blobs(reference)  # blob names are their contents' sha256
    assert _blobs(reference) > before  # the new column was written
