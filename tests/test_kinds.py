"""Every connection kind keeps the core promises; joint training; what the gates learn."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from dmtcore.operations import add_task, init_store, remove_task, train_tasks
from dmtcore.store.checkpoint import load_model
from dmtcore.store.directory import Store
from dmtcore.tasks.names import InputSpec
from dmtcore.train.loop import TrainSettings

KINDS = ["ttc", "nddr", "nddr-shortcut", "cross-stitch", "none"]
ONE_EPOCH = TrainSettings(epochs=1, batch_size=64)
TWO_EPOCHS = TrainSettings(epochs=2, batch_size=64)


def quiet(message: str) -> None:
    pass


def outputs(path: Path, host) -> dict[str, torch.Tensor]:
    store = Store.open(path)
    model = load_model(store, store.manifest(), host.kinds)
    images = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        return model(images)


@pytest.fixture(scope="module", params=KINDS)
def kind_store(request, host, tmp_path_factory) -> tuple[str, Path]:
    path = tmp_path_factory.mktemp(request.param) / "store"
    init_store(path, host, InputSpec(1, 8, 8), connection=request.param)
    for task in ("digits.class", "digits.even"):
        add_task(path, task, host, TWO_EPOCHS, notify=quiet)
    return request.param, path


def test_add_task_keeps_old_outputs_for_every_kind(kind_store, host, tmp_path: Path) -> None:
    kind, original = kind_store
    path = tmp_path / "store"
    shutil.copytree(original, path)
    before = outputs(path, host)
    add_task(path, "digits.prime", host, ONE_EPOCH, notify=quiet)
    after = outputs(path, host)
    for task in before:
        assert torch.equal(before[task], after[task]), (kind, task)
    entry = Store.open(path).manifest()["tasks"][-1]
    expected = (
        ["digits.prime"] if kind == "none" else ["digits.class", "digits.even", "digits.prime"]
    )
    assert entry["sources"] == expected
    # one row per stage boundary of dmt-cnn, plus FC-360 into the head where ttc fuses it
    assert len(entry["relations"]) == (6 if kind == "ttc" else 5)


def test_remove_task_reconnects_for_every_kind(kind_store, host, tmp_path: Path) -> None:
    kind, original = kind_store
    path = tmp_path / "store"
    shutil.copytree(original, path)
    report = remove_task(path, "digits.class", host, TWO_EPOCHS).summary["report"]["digits.even"]
    assert report["reconnected"] is (kind != "none")
    assert report["after"] >= report["cut"] and report["after"] > 0.75  # chance is 0.5
    manifest = Store.open(path).manifest()
    assert manifest["tasks"][0]["sources"] == ["digits.even"]
    assert all(set(row) == {"digits.even"} for row in manifest["tasks"][0]["relations"])
    outputs(path, host)  # the reconnected store loads and runs


def test_joint_training_connects_the_group_mutually(tmp_path: Path, host) -> None:
    path = tmp_path / "store"
    result = train_tasks(
        path,
        ["digits.class", "digits.even"],
        host,
        TrainSettings(epochs=2, batch_size=64),
        notify=quiet,
    )
    assert result.metrics["digits.class"]["accuracy"] > 0.8
    assert result.metrics["digits.even"]["balanced_accuracy"] > 0.85
    manifest = Store.open(path).manifest()
    assert [t["sources"] for t in manifest["tasks"]] == [["digits.class", "digits.even"]] * 2
    assert manifest["operation"]["name"] == "train"
    before = outputs(path, host)
    add_task(path, "digits.prime", host, ONE_EPOCH, notify=quiet)
    after = outputs(path, host)
    assert all(torch.equal(before[t], after[t]) for t in before)
    assert Store.open(path).manifest()["tasks"][2]["sources"] == [
        "digits.class",
        "digits.even",
        "digits.prime",
    ]
    report = remove_task(path, "digits.even", host, ONE_EPOCH).summary["report"]
    assert report["digits.class"]["reconnected"] and report["digits.prime"]["reconnected"]


def test_train_refuses_a_different_kind_for_an_existing_store(store_copy: Path, run_cli) -> None:
    result = run_cli(
        "train",
        "digits.prime",
        "digits.large",
        "--store",
        store_copy,
        "--connection",
        "nddr",
        "--no-tracking",
        expect=11,
    )
    assert "uses connection kind 'ttc', not 'nddr'" in result.stderr


def test_connections_command_shows_matrices_and_plots(
    store_copy: Path, run_cli, tmp_path: Path
) -> None:
    data = json.loads(
        run_cli("connections", "--store", store_copy, "--json", "--plot", tmp_path / "r.png").stdout
    )
    assert data["tasks"] == ["digits.class", "digits.even"] and len(data["stages"]) == 6
    first = data["stages"][0]["matrix"]
    assert first[0] == [1.0, None]  # digits.class reads only itself
    assert first[1][1] == 1.0 and 0.0 < first[1][0] < 1.0  # digits.even's gate on digits.class
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
    only = json.loads(
        run_cli("connections", "--store", store_copy, "--stage", "5", "--json").stdout
    )
    assert [s["stage"] for s in only["stages"]] == [5]
    assert only["stages"][0]["label"] == "stage 5 → 6"
    assert (
        "stage 9 does not exist; valid: 1 to 6"
        in run_cli("connections", "--store", store_copy, "--stage", "9", expect=11).stderr
    )


@pytest.mark.slow
def test_gates_into_a_composite_favour_its_parents(tmp_path: Path, host) -> None:
    """shapes.red-circle is kind AND colour: its gates should open to those, not to position."""
    path = tmp_path / "store"
    init_store(path, host, InputSpec(3, 12, 12), connection="ttc")
    train_tasks(
        path,
        ["shapes.kind", "shapes.colour", "shapes.position"],
        host,
        TrainSettings(epochs=2),
        notify=quiet,
    )
    add_task(path, "shapes.red-circle", host, TrainSettings(epochs=4, lr=3e-3), notify=quiet)
    relations = Store.open(path).manifest()["tasks"][-1]["relations"]
    mean = {
        s: sum(row[s] for row in relations) / len(relations)
        for s in ("shapes.kind", "shapes.colour", "shapes.position")
    }
    assert mean["shapes.kind"] > mean["shapes.position"]
    assert (mean["shapes.kind"] + mean["shapes.colour"]) / 2 > mean["shapes.position"]


def test_sgd_with_the_papers_multipliers_trains_nddr(tmp_path: Path, host) -> None:
    """The papers' ×100 NDDR learning rate was tuned for SGD: with it, NDDR learns well."""
    path = tmp_path / "store"
    init_store(path, host, InputSpec(1, 8, 8), connection="nddr")
    result = add_task(
        path, "digits.class", host, TrainSettings(epochs=2, optimizer="sgd"), notify=quiet
    )
    assert result.metrics["digits.class"]["accuracy"] > 0.8
    assert Store.open(path).manifest()["operation"]["settings"]["optimizer"] == "sgd"
