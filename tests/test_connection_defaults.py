"""Each connection kind's learning-rate multiplier follows the optimiser a command uses: the
papers' ×100 for nddr with SGD, a measured ×1 with Adam; an explicit
`--connection-lr-mult` beats a number in the store's options, which beats the kind's default;
the value used and its source are recorded in the version and the MLflow run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from dmtcore.model.multitask import MultiTaskModel, TrainingPlan
from dmtcore.store.checkpoint import load_model
from dmtcore.store.directory import Store
from dmtcore.tasks.names import InputSpec
from dmtcore.tasks.spec import HeadSpec
from dmtcore.train.loop import TrainSettings, make_optimizer, stored_lr_mult_note

from conftest import fingerprint, toy_plugin

FIXTURE = Path(__file__).parent / "fixtures" / "stores_format1"
# (kind, optimizer) -> the multiplier a store created with the defaults trains its connections at
DEFAULTS = {
    ("nddr", "sgd"): 100.0,
    ("nddr", "adam"): 1.0,
    ("nddr-shortcut", "sgd"): 100.0,
    ("nddr-shortcut", "adam"): 1.0,
    ("cross-stitch", "sgd"): 100.0,
    ("cross-stitch", "adam"): 100.0,
    ("ttc", "sgd"): 10.0,
    ("ttc", "adam"): 10.0,
}


def two_task_model(host, kind: str, **options) -> MultiTaskModel:
    """t1 reads t0 and trains its column, connections and head."""
    connection = host.kinds.connection(kind)
    model = MultiTaskModel(
        InputSpec(1, 8, 8),
        host.kinds.backbone("dmt-cnn"),
        {"fc_width": 8},
        connection,
        connection.resolve_options(options),
    )
    model.add_task("t0", "t0", ["t0"], HeadSpec(), 2)
    model.add_task("t1", "t1", ["t0", "t1"], HeadSpec(), 2)
    model.configure_training(TrainingPlan(*[frozenset({"t1"})] * 3))
    return model


def learning_rates(model: MultiTaskModel, settings: TrainSettings, task: str = "t1"):
    """The optimiser's learning rate for the task's connection weights and for its column."""
    optimizer, record = make_optimizer(model, settings)
    connection = {id(p) for p in model.part(task, "connections").parameters()}
    column = {id(p) for p in model.part(task, "column").parameters()}

    def rates(ids: set[int]) -> list[float]:
        found = {g["lr"] for g in optimizer.param_groups if any(id(p) in ids for p in g["params"])}
        return sorted(found)

    return rates(connection), rates(column), record


@pytest.mark.parametrize(("kind", "optimizer"), sorted(DEFAULTS))
def test_each_kind_default_multiplier_follows_the_optimizer(host, kind, optimizer) -> None:
    model = two_task_model(host, kind)
    connection, column, record = learning_rates(model, TrainSettings(lr=1e-3, optimizer=optimizer))
    expected = DEFAULTS[kind, optimizer]
    assert connection == pytest.approx([1e-3 * expected])
    assert column == pytest.approx([1e-3])
    source = "store" if kind == "ttc" else "default"  # ttc's single ×10 is its stored option
    assert record == {"value": expected, "source": source}


def test_explicit_settings_win_in_order(host) -> None:
    """--connection-lr-mult > the store's lr_mult set at init > the kind's default."""
    adam = TrainSettings(lr=1e-3, optimizer="adam")
    sgd = TrainSettings(lr=1e-3, optimizer="sgd")
    stored = two_task_model(host, "nddr", lr_mult=7)
    for settings in (adam, sgd):
        rates, _, record = learning_rates(stored, settings)
        assert rates == pytest.approx([7e-3]) and record == {"value": 7.0, "source": "store"}
    for model in (stored, two_task_model(host, "cross-stitch")):
        rates, _, record = learning_rates(
            model, TrainSettings(lr=1e-3, optimizer="sgd", connection_lr_mult=2.0)
        )
        assert rates == pytest.approx([2e-3]) and record == {"value": 2.0, "source": "option"}
    auto = two_task_model(host, "nddr", lr_mult="auto")  # the default, spelled out
    assert learning_rates(auto, sgd)[2] == {"value": 100.0, "source": "default"}


def test_bad_lr_mult_option_is_refused_before_init_writes(tmp_path: Path, run_cli) -> None:
    store = tmp_path / "s"
    for typed, shown in (("fast", "'fast'"), ("0", "0"), ("-3", "-3"), ("true", "True")):
        result = run_cli(
            "init", "--store", store, "--connection", "nddr",
            "--connection-option", f"lr_mult={typed}", expect=11,
        )  # fmt: skip
        assert result.stderr.strip().splitlines() == [
            "Error: connection kind 'nddr' option 'lr_mult' must be a positive number or "
            f"'auto' (per optimiser: sgd 100, adam 1), got {shown}"
        ]
        assert not store.exists()


def test_the_version_and_mlflow_run_record_the_multiplier_used(
    new_store_dir: Path, run_cli, write_plugin
) -> None:
    plugin = write_plugin("toy", toy_plugin())
    store = new_store_dir
    run_cli("init", "--store", store, "--connection", "nddr", "-p", plugin)
    assert Store.open(store).manifest()["connection"]["options"]["lr_mult"] == "auto"
    args = ("--store", store, "-p", plugin, "--epochs", "1", "--no-register")
    run_cli("add-task", "toy.bright", *args, "--optimizer", "sgd")
    run_cli("remove-task", "toy.bright", *args, "--no-tracking")
    run_cli("add-task", "toy.bright", *args)
    manifest = Store.open(store).manifest()
    assert manifest["operation"]["connection_lr_mult"] == {"value": 1.0, "source": "default"}
    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    runs = client.search_runs(
        client.get_experiment_by_name("store").experiment_id, order_by=["attributes.start_time"]
    )
    recorded = [
        (r.data.params["optimizer"], r.data.params["connection_lr_mult.value"]) for r in runs
    ]
    assert recorded == [("sgd", "100.0"), ("adam", "1.0")]
    assert {r.data.params["connection_lr_mult.source"] for r in runs} == {"default"}


def test_an_old_store_keeps_its_stored_multiplier(host, tmp_path: Path) -> None:
    """Stores written before per-optimiser defaults say lr_mult 100 for nddr: they keep training
    as they did (the number is the store's), a note says how to use the Adam default, and
    opening the store writes nothing."""
    store_path = tmp_path / "nddr"
    shutil.copytree(FIXTURE / "nddr", store_path)
    before = fingerprint(store_path)
    store = Store.open(store_path)
    manifest = store.manifest()
    assert manifest["connection"]["options"]["lr_mult"] == 100.0
    model = load_model(store, manifest, host.kinds)
    model.configure_training(TrainingPlan(connections=frozenset({"digits.even"})))
    adam = TrainSettings(lr=1e-3, optimizer="adam")
    rates, _, record = learning_rates(model, adam, "digits.even")
    assert rates == pytest.approx([0.1]) and record == {"value": 100.0, "source": "store"}
    assert stored_lr_mult_note(model, adam) == (
        "note: this store's nddr connections learn at x100 (its lr_mult option, the value for "
        "another optimiser); under adam nddr now defaults to x1: pass --connection-lr-mult 1 "
        "to use it"
    )
    assert stored_lr_mult_note(model, TrainSettings(optimizer="sgd")) is None
    assert stored_lr_mult_note(model, TrainSettings(connection_lr_mult=1.0)) is None
    assert fingerprint(store_path) == before
