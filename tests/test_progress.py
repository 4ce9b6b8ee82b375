"""What a user sees while a command works (issue 18): a line for every stage that takes time,
in the order the work happens, and nothing from other libraries unless `dmt -v` asks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from dmtcore.operations import add_task
from dmtcore.train.feature_cache import FeatureCache
from dmtcore.train.loop import TrainSettings

ANSI_ESCAPE = "\x1b["
# The stages of a tracked add-task onto the digits store, in the order they happen.
STAGES = [
    "loading torch and the task plugins",
    "loading store ",
    "loading the data of digits.prime",
    "tracking: connecting to MLflow",
    "computing the features of 2 frozen columns once",
    "feature cache: 2 frozen columns ",
    "epoch 1:",
    "committing version 4 to store ",
    "tracking: logging the run's metrics",
    "registering version 4 in the MLflow Model Registry",
]


def tracked(store: Path, template: Path) -> Path:
    shutil.copy(template, store / "mlflow.db")
    return store


def first_line_with(lines: list[str], text: str) -> int:
    found = [i for i, line in enumerate(lines) if line.startswith(text)]
    assert found, f"no line starts with {text!r} in:\n" + "\n".join(lines)
    return found[0]


@pytest.mark.slow
def test_a_tracked_add_task_names_each_stage_in_order_and_nothing_else(
    store_copy: Path, mlflow_template: Path
) -> None:
    """As a user runs it (a process of its own, stderr not a terminal): each stage is said as
    it starts, the cache's line comes once its work is done; no MLflow type-hint UserWarning,
    no 'Downloading artifacts' bar (nothing is downloaded), no colour codes."""
    store = tracked(store_copy, mlflow_template)
    command = ["add-task", "digits.prime", "--store", str(store), "--epochs", "1"]
    result = subprocess.run(
        [sys.executable, "-m", "dmtcore", *command],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "DMT_PROGRESS": "always"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "Added digits.prime as version 4" in result.stdout
    err = result.stderr
    assert "UserWarning" not in err and "Warning:" not in err, err
    assert "Downloading artifacts" not in err and "%|" not in err, err
    assert ANSI_ESCAPE not in err, err
    lines = err.splitlines()
    positions = [first_line_with(lines, stage) for stage in STAGES]
    assert positions == sorted(positions), err


def test_the_feature_cache_line_comes_after_its_work(store_copy: Path, host, monkeypatch) -> None:
    """'computed once' was said when the cache was planned, before the frozen columns ran."""
    said: list[str] = []
    fill = FeatureCache.fill

    def recorded_fill(self, model, task, split, batches, **options) -> None:
        said.append(f"filled {task} {split}")
        fill(self, model, task, split, batches, **options)

    monkeypatch.setattr(FeatureCache, "fill", recorded_fill)
    add_task(store_copy, "digits.prime", host, TrainSettings(epochs=1), notify=said.append)
    computing = first_line_with(said, "computing the features of 2 frozen columns once")
    done = first_line_with(said, "feature cache: 2 frozen columns ")
    assert computing < said.index("filled digits.prime train") < done
    assert said.index("filled digits.prime val") < done
    assert said[done].endswith("s)"), said[done]  # how long the pass took


def test_json_prints_one_document_and_only_warnings_on_stderr(
    store_copy: Path, mlflow_template: Path, run_cli
) -> None:
    store = tracked(store_copy, mlflow_template)
    result = run_cli("add-task", "digits.prime", "--store", store, "--epochs", "1", "--json")
    assert json.loads(result.stdout)["version"] == 4
    assert "Downloading artifacts" not in result.stderr and "%|" not in result.stderr
    assert "loading" not in result.stderr and "epoch 1:" not in result.stderr
    assert "tracking:" not in result.stderr and "registering" not in result.stderr
    # the notes about what was done stay: they are not progress
    assert "feature cache: 2 frozen columns " in result.stderr


def test_verbose_lets_other_libraries_speak(
    store_copy: Path, mlflow_template: Path, run_cli
) -> None:
    """MLflow draws a bar while it copies the model's files; dmt keeps it out unless -v."""
    store = tracked(store_copy, mlflow_template)
    quiet = run_cli("register", "--store", store)
    assert "Downloading artifacts" not in quiet.stderr
    # register is idempotent per state: an unpublished state (version 2) logs a model again
    loud = run_cli("-v", "rollback", "2", "--store", store)
    assert "Downloading artifacts" in loud.stderr
    assert "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR" not in os.environ  # put back afterwards


@pytest.mark.parametrize("layout", [(3, 1, 8, 8), (1, 8, 8), (8, 8)])
def test_predict_on_a_float32_array_warns_of_nothing(
    digits_store: Path, run_cli, tmp_path: Path, layout: tuple[int, ...]
) -> None:
    """A memory-mapped float32 .npy is read-only: handed to torch as it is, torch warned that
    it does not support non-writable arrays."""
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).random(layout, dtype=np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the command
        result = run_cli("predict", path, "--store", digits_store, expect=None)
    assert result.exit_code == 0, result.exception
    assert result.stderr == ""


def test_eval_says_what_it_loads_and_nothing_under_json(
    digits_store: Path, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With stages shown (a terminal, or DMT_PROGRESS=always) eval says what it loads; in a
    script, and under --json, it says nothing."""
    assert run_cli("eval", "--store", digits_store).stderr == ""
    monkeypatch.setenv("DMT_PROGRESS", "always")
    said = run_cli("eval", "--store", digits_store).stderr.splitlines()
    assert said[0] == "loading torch and the task plugins"
    assert "loading the data of digits.class" in said
    assert said[-1].startswith("evaluating digits.class, digits.even on the val split")
    quiet = run_cli("eval", "--store", digits_store, "--json")
    assert quiet.stderr == "" and json.loads(quiet.stdout)["split"] == "val"


def test_an_unknown_progress_mode_is_refused_naming_the_valid_ones(
    digits_store: Path, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DMT_PROGRESS", "sometimes")
    result = run_cli("eval", "--store", digits_store, expect=11)
    assert result.stderr.strip() == (
        "Error: DMT_PROGRESS='sometimes' is not valid; valid: auto, always, never"
    )
