"""Head fusion (DMT Table 6, "layer 6 to layer 7"): the last stage's features of a task's
sources fused into its head by a connection of the store's kind. On by default for dmt-cnn +
ttc (the paper's recipe), a connection option (`head_fusion`) for everything else, and off for
every store written before the option existed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load as load_safetensors

from dmtcore.model.multitask import MultiTaskModel, TrainingPlan
from dmtcore.store.checkpoint import load_model
from dmtcore.store.directory import Store
from dmtcore.tasks.names import InputSpec
from dmtcore.tasks.spec import HeadSpec
from dmtcore.train.loop import flat_relation_weights

from conftest import fingerprint

KINDS = ["ttc", "nddr", "nddr-shortcut", "cross-stitch", "none"]
FIXTURE = Path(__file__).parent / "fixtures" / "stores_format1"
ONE_EPOCH = ("--epochs", "1", "--device", "cpu", "--no-tracking")


def images(n: int = 16) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def outputs(path: Path, host) -> dict[str, torch.Tensor]:
    store = Store.open(path)
    model = load_model(store, store.manifest(), host.kinds)
    with torch.inference_mode():
        return model(images(64))


def weight_keys(path: Path) -> dict[tuple[str, str], dict[str, tuple[int, ...]]]:
    """(task, part) -> weight name -> shape, read from the store's blobs."""
    store = Store.open(path)
    return {
        (task["name"], part): {
            k: tuple(v.shape) for k, v in load_safetensors(store.read_blob(ref["sha256"])).items()
        }
        for task in store.manifest()["tasks"]
        for part, ref in task["weights"].items()
    }


def test_connections_shows_the_fc_layer_fused_into_the_head(store_copy: Path, run_cli) -> None:
    """The default dmt-cnn + ttc store reads like DMT Table 6: a sixth boundary, FC → head."""
    manifest = Store.open(store_copy).manifest()
    assert manifest["connection"]["options"]["head_fusion"] is True
    data = json.loads(run_cli("connections", "--store", store_copy, "--json").stdout)
    labels = [s["label"] for s in data["stages"]]
    assert labels == [f"stage {n} → {n + 1}" for n in range(1, 6)] + ["stage 6 → head"]
    last = data["stages"][-1]["matrix"]
    assert last[0] == [1.0, None] and last[1][1] == 1.0 and 0.0 < last[1][0] < 1.0
    only = json.loads(
        run_cli("connections", "--store", store_copy, "--stage", "6", "--json").stdout
    )
    assert [(s["stage"], s["label"]) for s in only["stages"]] == [(6, "stage 6 → head")]
    human = run_cli("connections", "--store", store_copy, "--stage", "6").stdout
    assert "stage 6 → head (row: task, column: source)" in human
    run_cli("verify", "--store", store_copy)


def test_add_task_keeps_old_outputs_bit_identical_with_head_fusion(
    store_copy: Path, host, run_cli
) -> None:
    before = outputs(store_copy, host)
    old = weight_keys(store_copy)
    refs = [t["weights"] for t in Store.open(store_copy).manifest()["tasks"]]
    run_cli("add-task", "digits.prime", "--store", store_copy, *ONE_EPOCH)
    after = outputs(store_copy, host)
    for task in before:
        assert torch.equal(before[task], after[task]), task
    manifest = Store.open(store_copy).manifest()
    assert [t["weights"] for t in manifest["tasks"][:2]] == refs
    keys = weight_keys(store_copy)
    assert {k: v for k, v in keys.items() if k in old} == old
    connections = keys[("digits.prime", "connections")]
    assert connections["head.beta"] == (2,)  # one gate per other task, into the head
    assert len(manifest["tasks"][-1]["relations"]) == 6
    assert manifest["operation"]["feature_cache"]["hits"] > 0  # FC features came from the cache
    model = load_model(Store.open(store_copy), manifest, host.kinds)
    series = flat_relation_weights(model, ["digits.prime"])
    assert {"alpha.digits.prime.head.digits.class", "alpha.digits.prime.stage5.digits.class"} < set(
        series
    )
    assert not any(".stage6." in key for key in series)


def test_remove_task_drops_the_source_from_the_head_connection(
    store_copy: Path, host, run_cli
) -> None:
    before_keys = weight_keys(store_copy)[("digits.even", "connections")]
    assert before_keys["head.beta"] == (1,)
    run_cli("remove-task", "digits.class", "--store", store_copy, *ONE_EPOCH)
    manifest = Store.open(store_copy).manifest()
    entry = manifest["tasks"][0]
    assert entry["name"] == "digits.even" and entry["sources"] == ["digits.even"]
    assert entry["relations"] == [{"digits.even": 1.0}] * 6
    assert manifest["operation"]["report"]["digits.even"]["reconnected"] is True
    assert weight_keys(store_copy)[("digits.even", "connections")]["head.beta"] == (0,)
    data = json.loads(run_cli("connections", "--store", store_copy, "--json").stdout)
    assert data["stages"][-1] == {"stage": 6, "label": "stage 6 → head", "matrix": [[1.0]]}
    outputs(store_copy, host)  # the reconnected store loads and runs
    run_cli("verify", "--store", store_copy)


def test_the_head_connection_retrains_on_remove_task(store_copy: Path, host) -> None:
    """Reconnection (DMT §4.3) trains every connection of the tasks that read the removed one,
    the one into the head included."""
    model = load_model(Store.open(store_copy), Store.open(store_copy).manifest(), host.kinds)
    model.remove_task("digits.class")
    model.configure_training(TrainingPlan(connections=frozenset({"digits.even"})))
    trained = {id(p) for g in model.param_groups() for p in g.params}
    into_head = model.part("digits.even", "connections").head
    assert into_head is not None and {id(p) for p in into_head.parameters()} <= trained


def test_head_fusion_off_has_exactly_the_old_release_weight_keys(tmp_path: Path, run_cli) -> None:
    """The recipe of the format-1 fixture (README.txt there), with head fusion off, writes the
    very weight names and shapes the old release wrote; on, only the head connection is added."""
    recipe = ("--input", "1x8x8", "--backbone-option", "fc_width=16", "--connection", "ttc")
    stores = {}
    for fusion in ("false", "true"):
        path = stores[fusion] = tmp_path / fusion
        run_cli("init", "--store", path, *recipe, "--connection-option", f"head_fusion={fusion}")
        for task in ("digits.class", "digits.even"):
            run_cli("add-task", task, "--store", path, "--seed", "7", *ONE_EPOCH)
    shutil.copytree(FIXTURE / "ttc", tmp_path / "old")  # the fixture is never opened in place
    old = weight_keys(tmp_path / "old")
    assert weight_keys(stores["false"]) == old
    fused = weight_keys(stores["true"])
    sources = {t["name"]: len(t["sources"]) for t in Store.open(stores["true"]).manifest()["tasks"]}
    for (task, part), names in old.items():
        assert {k: v for k, v in fused[(task, part)].items() if k in names} == names
        extra = {k: v for k, v in fused[(task, part)].items() if k not in names}
        norm = {f"head.norm.{k}": (16,) for k in ("weight", "bias", "running_mean", "running_var")}
        expected = {"head.beta": (sources[task] - 1,), **norm, "head.norm.num_batches_tracked": ()}
        assert extra == (expected if part == "connections" else {}), (task, part)
    assert Store.open(stores["false"]).manifest()["connection"]["options"]["head_fusion"] is False


def test_an_old_store_does_not_fuse_and_predicts_as_recorded(tmp_path: Path, run_cli, host) -> None:
    """A format-1 manifest has no head_fusion: read as off, its last boundary is stage 5 → 6."""
    path = tmp_path / "ttc"
    shutil.copytree(FIXTURE / "ttc", path)
    before = fingerprint(path)
    manifest = Store.open(path).manifest()
    assert "head_fusion" not in manifest["connection"]["options"]
    model = load_model(Store.open(path), manifest, host.kinds)
    assert model.head_fusion is False
    assert all(c.head is None for c in model.connections.values())
    data = json.loads(run_cli("connections", "--store", path, "--json").stdout)
    assert [s["label"] for s in data["stages"]][-1] == "stage 5 → 6"
    recorded = json.loads((FIXTURE / "ttc.predict.json").read_text())["tasks"]
    printed = json.loads(
        run_cli("predict", FIXTURE / "inputs.npy", "--store", path, "--json").stdout
    )["tasks"]
    for task, outputs_then in recorded.items():
        assert printed[task]["prediction"] == outputs_then["prediction"]
        np.testing.assert_allclose(
            printed[task]["probabilities"], outputs_then["probabilities"], rtol=0, atol=1e-6
        )
    assert fingerprint(path) == before


@pytest.mark.parametrize(
    "recipe, connection, expected",
    [
        ({}, "ttc", True),
        ({"spatial": True}, "ttc", False),
        ({}, "nddr", False),
        ({}, "cross-stitch", False),
        ({}, "none", False),
    ],
)
def test_head_fusion_defaults_to_the_papers_recipe(
    tmp_path: Path, run_cli, recipe: dict, connection: str, expected: bool
) -> None:
    options = [a for k, v in recipe.items() for a in ("--backbone-option", f"{k}={json.dumps(v)}")]
    run_cli("init", "--store", tmp_path / "s", "--connection", connection, *options)
    manifest = Store.open(tmp_path / "s").manifest()
    assert manifest["connection"]["options"]["head_fusion"] is expected


def test_head_fusion_is_asked_for_with_a_connection_option(tmp_path: Path, run_cli) -> None:
    run_cli(
        "init",
        "--store",
        tmp_path / "s",
        "--connection",
        "nddr",
        "--connection-option",
        "head_fusion=true",
    )
    assert Store.open(tmp_path / "s").manifest()["connection"]["options"]["head_fusion"] is True
    bad = run_cli(
        "init", "--store", tmp_path / "bad", "--connection-option", "head_fusion=maybe", expect=11
    )
    assert "option 'head_fusion' must be true or false, got 'maybe'" in bad.stderr
    assert not (tmp_path / "bad").exists()


def _two_task_model(host, kind: str, spatial: bool) -> MultiTaskModel:
    backbone = host.kinds.backbone("dmt-cnn")
    connection = host.kinds.connection(kind)
    column = backbone.resolve_options({"spatial": True} if spatial else {"fc_width": 12})
    options = connection.resolve_options({"head_fusion": True}, "dmt-cnn", column)
    model = MultiTaskModel(InputSpec(1, 8, 8), backbone, column, connection, options)
    torch.manual_seed(0)
    model.add_task("a", "t0", ["a"], HeadSpec(), 10)
    model.add_task("b", "t1", ["b"] if connection.isolated else ["a", "b"], HeadSpec(), 2)
    return model


@pytest.mark.parametrize("spatial", [False, True], ids=["vectors", "maps"])
@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_fuses_the_last_features_into_the_head(host, kind: str, spatial: bool) -> None:
    """FC vectors (N×C) and spatial maps (N×C×H×W) at the head boundary, for every kind:
    trains, takes cached features, drops a removed source, and reports one row more."""
    model = _two_task_model(host, kind, spatial)
    last = model.part("a", "column").feature_shapes[-1]
    assert len(last) == (3 if spatial else 1)
    into_head = model.part("b", "connections").head
    assert into_head is not None and model.read_shapes("a")[-1] == last
    model.configure_training(TrainingPlan(*[frozenset({"b"})] * 3))
    model.train_mode()
    model(images(), ["b"])["b"].sum().backward()
    trained = [p for g in model.param_groups() for p in g.params]
    assert {id(p) for p in into_head.parameters()} <= {id(p) for p in trained}
    if kind != "none":
        assert all(p.grad is not None for p in into_head.parameters())
        model.eval()
        kept: dict[str, list[torch.Tensor]] = {"a": []}
        with torch.no_grad():
            computed = model(images(), ["b"])["b"]
            model(images(), ["a"], None, kept)
            assert len(kept["a"]) == len(model.part("a", "column").stages)
            assert torch.equal(model(images(), ["b"], given=kept)["b"], computed)
    assert [len(rows) for rows in model.relation_weights().values()] == [
        6 if not spatial else 5
    ] * 2
    model.remove_task("a")
    assert model.relation_weights()["b"][-1] == pytest.approx(
        {"b": into_head.relation_weights()[0]}
    )
    with torch.no_grad():
        assert model.eval()(images())["b"].shape == (16, 2)
