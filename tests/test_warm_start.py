"""add-task --init-from: the new column starts from a stored task's trained column.

The starting weights are caught where training begins (a wrapper around `fit`), so the tests
see exactly what the optimiser starts from; old tasks must come out bit-identical."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import fingerprint

FAST = ["--epochs", "1", "--batch-size", "64", "--no-tracking"]


def _manifest(store: Path) -> dict[str, Any]:
    version = int((store / "CURRENT").read_text())
    return json.loads((store / "versions" / f"v{version:06d}.json").read_text())


@pytest.fixture
def starts(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, torch.Tensor]]:
    """Every column's state (weights and BatchNorm statistics) when training starts."""
    import dmtcore.operations as operations

    seen: dict[str, dict[str, torch.Tensor]] = {}
    real_fit = operations.fit

    def fit(model: Any, *args: Any, **kwargs: Any) -> Any:
        for name, slot in model.tasks.items():
            seen[name] = {
                k: v.detach().clone() for k, v in model.columns[slot.slot].state_dict().items()
            }
        return real_fit(model, *args, **kwargs)

    monkeypatch.setattr(operations, "fit", fit)
    return seen


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_init_from_task_starts_from_its_column(store_copy: Path, run_cli, starts) -> None:
    before = _manifest(store_copy)
    result = run_cli(
        "add-task", "digits.large", "--store", store_copy, "--init-from", "digits.class", *FAST
    )
    assert "the new column starts from the trained column of digits.class" in result.stderr
    assert _same(starts["digits.large"], starts["digits.class"])
    assert not _same(starts["digits.large"], starts["digits.even"])
    assert any(k.endswith("running_mean") for k in starts["digits.large"])  # BN statistics too
    after = _manifest(store_copy)
    assert after["operation"]["init_from"] == {
        "requested": "digits.class",
        "column": "digits.class",
    }
    old = {t["name"]: t for t in before["tasks"]}
    for task in after["tasks"]:
        if task["name"] in old:  # frozen: the very same weight files
            assert task == old[task["name"]]


def test_auto_takes_the_latest_column_and_none_starts_fresh(
    store_copy: Path, run_cli, starts
) -> None:
    result = run_cli("add-task", "digits.large", "--store", store_copy, *FAST)
    assert "digits.even (auto" in result.stderr
    assert _same(starts["digits.large"], starts["digits.even"])
    assert _manifest(store_copy)["operation"]["init_from"] == {
        "requested": "auto",
        "column": "digits.even",
    }
    none = run_cli("add-task", "digits.prime", "--store", store_copy, "--init-from", "none", *FAST)
    assert "the new column starts from fresh weights" in none.stderr
    fresh = starts["digits.prime"]
    assert not any(_same(fresh, starts[t]) for t in ("digits.class", "digits.even", "digits.large"))
    assert _manifest(store_copy)["operation"]["init_from"] == {"requested": "none", "column": None}


def test_unknown_init_task_exits_3_and_changes_nothing(store_copy: Path, run_cli) -> None:
    before = fingerprint(store_copy)
    result = run_cli(
        "add-task", "digits.large", "--store", store_copy, "--init-from", "digits.clas",
        *FAST, expect=3,
    )  # fmt: skip
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: unknown task 'digits.clas'")
    assert "digits.class" in lines[-1] and "Traceback" not in result.stderr
    assert fingerprint(store_copy) == before


def test_init_task_on_a_new_store_exits_3_and_leaves_nothing(tmp_path: Path, run_cli) -> None:
    store = tmp_path / "store"
    result = run_cli(
        "add-task", "digits.even", "--store", store, "--init-from", "digits.class", *FAST, expect=3
    )
    assert "has no tasks yet" in result.stderr.strip().splitlines()[-1]
    assert not store.exists()
