"""add-task --init-from: the new column starts from a stored task's trained column.

The starting weights are caught where training begins (a wrapper around `fit`), so the tests
see exactly what the optimiser starts from; old tasks must come out bit-identical."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

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
    import dmtcore.operations.adding as adding

    seen: dict[str, dict[str, torch.Tensor]] = {}
    real_fit = adding.fit

    def fit(model: Any, *args: Any, **kwargs: Any) -> Any:
        for name, slot in model.tasks.items():
            seen[name] = {
                k: v.detach().clone() for k, v in model.columns[slot.slot].state_dict().items()
            }
        return real_fit(model, *args, **kwargs)

    monkeypatch.setattr(adding, "fit", fit)
    return seen


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_init_from_task_starts_from_its_column(store_copy: Path, run_cli, starts) -> None:
    before = _manifest(store_copy)
    result = run_cli(
        "add-task", "digits.large", "--store", store_copy, "--init-from", "digits.class", *FAST
    )
    assert "digits.large's column starts from the trained column of digits.class" in result.stderr
    assert _same(starts["digits.large"], starts["digits.class"])
    assert not _same(starts["digits.large"], starts["digits.even"])
    assert any(k.endswith("running_mean") for k in starts["digits.large"])  # BN statistics too
    after = _manifest(store_copy)
    assert after["operation"]["init_from"] == {
        "requested": "digits.class",
        "columns": {"digits.large": "digits.class"},
        "reasons": {"digits.large": "requested"},
    }
    old = {t["name"]: t for t in before["tasks"]}
    for task in after["tasks"]:
        if task["name"] in old:  # frozen: the very same weight files
            assert task == old[task["name"]]


def test_auto_starts_from_the_column_the_probe_scores_best(
    store_copy: Path, run_cli, starts
) -> None:
    result = run_cli("add-task", "digits.large", "--store", store_copy, *FAST)
    record = _manifest(store_copy)["operation"]["init_from"]
    scores = record["probe"]["digits.large"]
    assert list(scores) == ["digits.class", "digits.even"]
    assert all(0.0 <= value <= 1.0 for value in scores.values())
    chosen = record["columns"]["digits.large"]
    assert scores[chosen] == max(scores.values())
    assert f"starts from the trained column of {chosen} (auto: its features" in result.stderr
    assert _same(starts["digits.large"], starts[chosen])


def test_none_starts_fresh_and_the_run_params_say_so(store_copy: Path, starts) -> None:
    from dmtcore.hooks.host import create_plugin_host
    from dmtcore.hooks.specs import hookimpl
    from dmtcore.operations import add_task
    from dmtcore.train.loop import TrainSettings

    class Params:
        seen: ClassVar[dict[str, Any]] = {}

        @hookimpl
        def dmt_run_started(self, run: Any) -> None:
            Params.seen.update(run.params)  # what the MLflow tracker logs as the run's params

    messages: list[str] = []
    host = create_plugin_host()
    host.register(Params(), "params-recorder")
    settings = TrainSettings(epochs=1, batch_size=64)
    add_task(store_copy, "digits.prime", host, settings, notify=messages.append, init_from="none")
    assert "digits.prime's column starts from fresh weights (requested)" in map(str, messages)
    assert not any(
        _same(starts["digits.prime"], starts[t]) for t in ("digits.class", "digits.even")
    )
    assert (Params.seen["init_from"], Params.seen["init_from_requested"]) == ("none", "none")
    assert _manifest(store_copy)["operation"]["init_from"]["columns"] == {"digits.prime": None}


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


def test_auto_starts_fresh_under_a_kind_it_does_not_help(tmp_path: Path, run_cli, starts) -> None:
    store = tmp_path / "store"
    run_cli("train", "digits.class", "--store", store, "--connection", "cross-stitch", *FAST)
    result = run_cli("add-task", "digits.even", "--store", store, *FAST)
    assert "digits.even's column starts from fresh weights (auto: " in result.stderr
    assert not _same(starts["digits.even"], starts["digits.class"])
    assert _manifest(store)["operation"]["init_from"]["columns"] == {"digits.even": None}
