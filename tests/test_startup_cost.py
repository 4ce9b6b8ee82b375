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

    from dmtcore.operations import add_task
    from dmtcore.train import loop as training
    from dmtcore.train.loop import TrainSettings

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


def test_digits_data_loads_without_importing_sklearn() -> None:
    code = "import sys\nfrom dmt_plugins.digits import _splits\n_splits()\nprint('sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_digits_split_is_scikit_learns_train_test_split() -> None:
    """The split every digits store was trained on, read without scikit-learn, is the one
    scikit-learn's stratified train_test_split gives; also on labels whose class shares tie."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from dmt_plugins import digits

    bundled = load_digits()
    images = (bundled.images / 16.0).astype(np.float32)[:, None]
    expected = train_test_split(
        images,
        bundled.target,
        test_size=digits.VAL_FRACTION,
        random_state=digits.SPLIT_SEED,
        stratify=bundled.target,
    )
    split = digits._splits()
    got = [split["train"][0], split["val"][0], split["train"][1], split["val"][1]]
    for want, have in zip(expected, got, strict=True):
        assert want.dtype == have.dtype and want.tobytes() == have.tobytes()
    rng = np.random.default_rng(0)
    for seed, labels in enumerate([rng.integers(0, k, n) for k, n in ((2, 7), (3, 31), (5, 50))]):
        indices = np.arange(len(labels))
        train, val = train_test_split(indices, test_size=0.3, random_state=seed, stratify=labels)
        mine = digits._stratified_split(labels, 0.3, seed)
        assert np.array_equal(train, mine[0]) and np.array_equal(val, mine[1])
