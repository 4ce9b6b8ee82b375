"""The feature cache: frozen columns computed once give the results of computing them every
step; it spills or turns itself off with a message, and never caches data that changes."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from dmtcore.model.multitask import TrainingPlan
from dmtcore.operations import add_task
from dmtcore.store.checkpoint import load_model
from dmtcore.store.directory import Store
from dmtcore.train.loop import TrainSettings

from conftest import toy_plugin

SETTINGS = dict(epochs=3, batch_size=64, seed=3)


def images(n: int = 64) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def grown_model(store: Path, host):
    """The digits store's model with a new task reading both frozen tasks, as in add-task."""
    model = load_model(Store.open(store), Store.open(store).manifest(), host.kinds)
    torch.manual_seed(0)
    model.add_task(
        "digits.prime", "t9", ["digits.class", "digits.even", "digits.prime"], *head(host)
    )
    model.configure_training(TrainingPlan(*[frozenset({"digits.prime"})] * 3))
    return model


def head(host):
    spec = host.kinds.task("digits.prime")
    return spec.head, spec.num_outputs


def test_given_features_give_the_same_outputs_as_computing_them(store_copy: Path, host) -> None:
    model = grown_model(store_copy, host)
    model.eval()
    assert model.frozen_sources(["digits.prime"]) == ["digits.class", "digits.even"]
    x = images()
    with torch.no_grad():
        keep = {"digits.class": [], "digits.even": []}
        computed = model(x, ["digits.prime"], keep=keep)["digits.prime"]
        assert [len(v) for v in keep.values()] == [6, 6]  # conv1–5, and FC-360 into the head
        given = model(x, ["digits.prime"], given=keep)["digits.prime"]
        assert torch.equal(given, computed)
        rounded = {t: [f.half().float() for f in fs] for t, fs in keep.items()}
        approx = model(x, ["digits.prime"], given=rounded)["digits.prime"]
    torch.testing.assert_close(approx, computed, rtol=1e-2, atol=1e-2)


def test_stacked_sources_train_exactly_as_listed_ones(store_copy: Path, host) -> None:
    """The cache hands its sources over stacked (sources × batch × shape), and ttc contracts
    that stack instead of stacking a list: the same logits and gradients, bit for bit, while
    training, and the per-source sum where BatchNorm is recalibrated (train mode, no gradients);
    its validation contracts too, within float rounding of the per-source sum."""
    from dmtcore.model.connections import StackedSources

    model = grown_model(store_copy, host)
    x = images()
    sources = model.frozen_sources(["digits.prime"])
    with torch.no_grad():
        keep = {name: [] for name in sources}
        model.eval()
        model(x, ["digits.prime"], keep=keep)
    stacked = StackedSources(
        sources, [torch.stack(stage) for stage in zip(*keep.values(), strict=True)]
    )
    assert list(stacked) == sources
    assert torch.equal(stacked["digits.even"][2], keep["digits.even"][2])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    results = []
    for given in (keep, stacked):
        model.load_state_dict(state)  # the same BatchNorm statistics for both
        model.train_mode()
        with torch.no_grad():  # as BatchNorm recalibration runs it
            recalibrating = model(x, ["digits.prime"], given)["digits.prime"]
        model.load_state_dict(state)
        torch.manual_seed(0)
        model.zero_grad(set_to_none=True)
        logits = model(x, ["digits.prime"], given)["digits.prime"]
        logits.square().sum().backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        model.eval()
        with torch.no_grad():
            evaluated = model(x, ["digits.prime"], given)["digits.prime"]
        results.append((logits.detach(), grads, evaluated, recalibrating))
    (listed, listed_grads, listed_eval, listed_recal), (fast, fast_grads, fast_eval, fast_recal) = (
        results
    )
    assert torch.equal(fast, listed) and torch.equal(fast_recal, listed_recal)
    assert len(fast_grads) == len(listed_grads) > 0
    assert all(torch.equal(a, b) for a, b in zip(fast_grads, listed_grads, strict=True))
    torch.testing.assert_close(fast_eval, listed_eval, rtol=1e-5, atol=1e-6)


def _train(store: Path, host, tmp_path: Path, name: str, **options) -> tuple:
    copy = tmp_path / name
    shutil.copytree(store, copy)
    messages: list[str] = []
    result = add_task(
        copy, "digits.prime", host, TrainSettings(**SETTINGS, **options), notify=messages.append
    )
    store_ = Store.open(copy)
    model = load_model(store_, store_.manifest(), host.kinds)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    return result, weights, messages


def test_cached_training_equals_uncached_training(digits_store: Path, host, tmp_path) -> None:
    off, off_weights, off_messages = _train(
        digits_store, host, tmp_path, "off", feature_cache="off"
    )
    exact, exact_weights, messages = _train(
        digits_store, host, tmp_path, "fp32", feature_cache="memory", cache_dtype="float32"
    )
    assert off.summary["feature_cache"] == {}
    assert not any("feature cache" in m for m in off_messages)
    cache = exact.summary["feature_cache"]
    assert cache["location"] == "memory" and cache["bytes"] > 0
    # One pass before training fills it: every batch, train and val, is read from it.
    assert cache["hits"] > 0 and cache["misses"] == 0
    assert any(m.startswith("feature cache: 2 frozen columns ") for m in messages)
    for key, value in off_weights.items():
        torch.testing.assert_close(exact_weights[key], value, rtol=1e-4, atol=1e-5, msg=key)
    assert exact.metrics["digits.prime"] == pytest.approx(off.metrics["digits.prime"], abs=1e-3)

    half, _, _ = _train(digits_store, host, tmp_path, "fp16")  # the default: auto, float16
    assert half.summary["feature_cache"]["dtype"] == "float16"
    for metric, value in off.metrics["digits.prime"].items():
        assert half.metrics["digits.prime"][metric] == pytest.approx(value, abs=0.03)


def test_over_the_budget_spills_to_disk_or_turns_off(
    digits_store: Path, host, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    spilled, _, messages = _train(digits_store, host, tmp_path, "spill", cache_budget_mb=0.01)
    assert spilled.summary["feature_cache"]["location"] == "disk"
    [spill] = [m for m in messages if "over the memory budget of 0.01 MB" in m]
    assert spill.endswith(f"spilling it to {temp}, space reserved, freed when dmt exits")
    assert not any(temp.iterdir()), "the spilled features' file never has a name"
    assert spilled.metrics["digits.prime"]["balanced_accuracy"] > 0.8

    refused, _, messages = _train(
        digits_store, host, tmp_path, "refused", feature_cache="memory", cache_budget_mb=0.01
    )
    assert refused.summary["feature_cache"] == {}
    assert any(
        "feature cache off: it needs" in m and "over the budget of 0.01 MB" in m for m in messages
    )


def test_data_that_changes_between_epochs_is_never_cached(
    tmp_path: Path, run_cli, write_plugin
) -> None:
    plugin = write_plugin("augmented", toy_plugin("augmented", task="toy.augmented"))
    base = write_plugin("plain", toy_plugin())
    store = tmp_path / "s"
    common = ["--store", store, "-p", plugin, "-p", base, "--no-tracking", "--epochs", "1"]
    run_cli("add-task", "toy.bright", *common)
    result = run_cli("add-task", "toy.augmented", *common)
    assert "feature cache off: the data of toy.augmented may differ between epochs" in (
        result.stderr
    )
    manifest = Store.open(store).manifest()
    assert manifest["operation"]["feature_cache"] == {}


def test_the_cache_is_tracked_in_mlflow(store_copy: Path, mlflow_template: Path, run_cli) -> None:
    from mlflow.tracking import MlflowClient

    shutil.copy(mlflow_template, store_copy / "mlflow.db")
    run_cli("add-task", "digits.prime", "--store", store_copy, "--epochs", "2", "--no-register")
    client = MlflowClient(tracking_uri=f"sqlite:///{store_copy / 'mlflow.db'}")
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.data.tags["dmt.feature_cache"] == "memory"
    assert run.data.params["feature_cache"] == "auto"
    assert run.data.metrics["feature_cache.bytes"] > 0
    assert run.data.metrics["feature_cache.hits"] > 0
