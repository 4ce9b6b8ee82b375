"""The core promises: old outputs bit-identical after add-task, remove-task reconnects and
reports, a store round-trips exactly, training is deterministic and learns."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from dmtcore.operations import add_task, remove_task
from dmtcore.store.checkpoint import load_model
from dmtcore.store.directory import Store
from dmtcore.train.loop import TrainSettings

FAST = TrainSettings(epochs=2, batch_size=64)


def quiet(message: str) -> None:
    pass


def val_images(host, n: int = 200) -> torch.Tensor:
    from dmtcore.tasks.data import adapt_images
    from dmtcore.tasks.names import InputSpec
    from dmtcore.tasks.spec import DataRequest

    data = host.kinds.task("digits.class").datasets(DataRequest(Path("."), None))
    return adapt_images(data.val.tensors[0][:n], InputSpec(1, 8, 8))


def outputs(path: Path, host, version: int | None = None) -> dict[str, torch.Tensor]:
    store = Store.open(path)
    model = load_model(store, store.manifest(version), host.kinds)
    with torch.inference_mode():
        return model(val_images(host))


def test_add_task_keeps_old_outputs_bit_identical(store_copy: Path, host) -> None:
    before = outputs(store_copy, host)
    blobs_before = {p.name for p in (store_copy / "blobs").iterdir()}
    add_task(store_copy, "digits.prime", host, FAST, notify=quiet)
    after = outputs(store_copy, host)
    assert set(after) == {"digits.class", "digits.even", "digits.prime"}
    for task in ("digits.class", "digits.even"):
        assert torch.equal(before[task], after[task]), task
    manifests = [Store.open(store_copy).manifest(v) for v in (3, 4)]
    for old, new in zip(manifests[0]["tasks"], manifests[1]["tasks"], strict=False):
        assert old["weights"] == new["weights"], "frozen parts must reuse their blobs"
    new_blobs = {p.name for p in (store_copy / "blobs").iterdir()} - blobs_before
    assert len(new_blobs) == 3  # the new task's column, connections and head only


def test_new_task_reads_every_old_column_and_learns(store_copy: Path, host) -> None:
    result = add_task(store_copy, "digits.large", host, FAST, notify=quiet)
    manifest = Store.open(store_copy).manifest()
    entry = manifest["tasks"][-1]
    assert entry["sources"] == ["digits.class", "digits.even", "digits.large"]
    assert entry["plugin"] == "digits"
    assert result.metrics["digits.large"]["balanced_accuracy"] > 0.85  # chance is 0.5


def test_trained_digits_tasks_are_well_above_chance(digits_store: Path) -> None:
    tasks = {t["name"]: t["metrics"] for t in Store.open(digits_store).manifest()["tasks"]}
    assert tasks["digits.class"]["accuracy"] > 0.8  # chance is 0.1
    assert tasks["digits.even"]["balanced_accuracy"] > 0.85  # chance is 0.5


def test_remove_task_reconnects_and_reports(store_copy: Path, host) -> None:
    add_task(store_copy, "digits.prime", host, FAST, notify=quiet)
    before = outputs(store_copy, host)
    result = remove_task(store_copy, "digits.even", host, FAST)
    report = result.summary["report"]
    assert set(report) == {"digits.class", "digits.prime"}
    assert report["digits.class"]["reconnected"] is False
    assert report["digits.class"]["before"] == report["digits.class"]["after"]
    assert report["digits.prime"]["reconnected"] is True
    assert report["digits.prime"]["after"] >= report["digits.prime"]["cut"] - 0.02
    assert report["digits.prime"]["after"] > 0.85
    manifest = Store.open(store_copy).manifest()
    assert [t["name"] for t in manifest["tasks"]] == ["digits.class", "digits.prime"]
    assert manifest["tasks"][1]["sources"] == ["digits.class", "digits.prime"]
    after = outputs(store_copy, host)
    assert "digits.even" not in after
    assert torch.equal(before["digits.class"], after["digits.class"])  # it never read digits.even


def test_store_round_trips_exactly(store_copy: Path, host, tmp_path: Path) -> None:
    first = outputs(store_copy, host)
    moved = tmp_path / "moved"
    shutil.move(store_copy, moved)  # a store is self-contained: paths inside are relative
    second = outputs(moved, host)
    for task in first:
        assert torch.equal(first[task], second[task])


def test_loading_needs_no_task_plugin(digits_store: Path) -> None:
    from dmtcore.hooks.host import create_plugin_host

    bare = create_plugin_host(["no:digits", "no:shapes"], autoload=False)
    assert "digits.class" not in bare.kinds.tasks
    store = Store.open(digits_store)
    model = load_model(store, store.manifest(), bare.kinds)
    assert list(model.tasks) == ["digits.class", "digits.even"]


def test_same_seed_gives_identical_weights(tmp_path: Path, host) -> None:
    shas = []
    for run in ("a", "b"):
        add_task(
            tmp_path / run,
            "digits.even",
            host,
            TrainSettings(epochs=1, batch_size=64, seed=3),
            notify=quiet,
        )
        shas.append(
            json.loads((tmp_path / run / "versions" / "v000002.json").read_text())["tasks"][0][
                "weights"
            ]
        )
    assert shas[0] == shas[1]


def test_history_and_rollback(store_copy: Path, host, run_cli) -> None:
    before = outputs(store_copy, host)
    add_task(store_copy, "digits.prime", host, FAST, notify=quiet)
    run_cli("rollback", "3", "--store", store_copy)
    store = Store.open(store_copy)
    assert store.current_version() == 5
    assert [t["name"] for t in store.manifest()["tasks"]] == ["digits.class", "digits.even"]
    after = outputs(store_copy, host)
    for task in before:
        assert torch.equal(before[task], after[task])
    history = json.loads(run_cli("history", "--store", store_copy, "--json").stdout)
    assert [e["operation"]["name"] for e in history] == [
        "rollback",
        "add-task",
        "add-task",
        "add-task",
        "init",
    ]


def test_leftovers_of_a_crashed_writer_are_removed(store_copy: Path, host) -> None:
    store = Store.open(store_copy)
    kept = {p.name for p in (store_copy / "blobs").iterdir()}
    (store_copy / "tmp" / "v000004.json.123.part").write_text("half")
    (store_copy / "versions" / "v000004.json").write_text("{never committed}")
    orphan = store_copy / "blobs" / ("ab" * 32 + ".safetensors")
    orphan.write_bytes(b"orphan")
    assert store.current_version() == 3 and store.versions() == [1, 2, 3]
    add_task(store_copy, "digits.prime", host, FAST, notify=quiet)
    assert store.current_version() == 4
    assert not orphan.exists() and not list((store_copy / "tmp").iterdir())
    assert json.loads((store_copy / "versions" / "v000004.json").read_text())["operation"][
        "tasks"
    ] == ["digits.prime"]
    assert kept <= {p.name for p in (store_copy / "blobs").iterdir()}


def test_verify_reports_every_problem(store_copy: Path, run_cli) -> None:
    sound = json.loads(run_cli("verify", "--store", store_copy, "--all", "--json").stdout)
    assert sound["ok"] and sound["versions"] == [1, 2, 3]
    manifest = json.loads((store_copy / "versions" / "v000003.json").read_text())
    class_blob = (
        store_copy / "blobs" / f"{manifest['tasks'][0]['weights']['head']['sha256']}.safetensors"
    )
    even_blob = (
        store_copy / "blobs" / f"{manifest['tasks'][1]['weights']['column']['sha256']}.safetensors"
    )
    data = bytearray(class_blob.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit
    class_blob.write_bytes(bytes(data))
    even_blob.unlink()
    (store_copy / "versions" / "v000001.json").write_text('{"format": 1, "name": ')  # truncated
    result = run_cli("verify", "--store", store_copy, "--json", expect=5)
    problems = json.loads(result.stdout)["problems"]
    files = {Path(p["file"]).name for p in problems}
    assert files == {class_blob.name, even_blob.name, "v000001.json"}
    messages = " ".join(p["message"] for p in problems)
    assert (
        "sha256 does not match" in messages
        and "is missing" in messages
        and "is damaged" in messages
    )
    assert "3 problem(s) found" in result.stderr


def test_verify_catches_a_manifest_that_does_not_fit_its_weights(store_copy: Path, run_cli) -> None:
    path = store_copy / "versions" / "v000003.json"
    manifest = json.loads(path.read_text())
    task = manifest["tasks"][0]  # a well-formed 11-way task whose head has 10 outputs
    task["output"]["size"], task["class_names"] = 11, [*task["class_names"], "ten"]
    path.write_text(json.dumps(manifest))
    result = run_cli("verify", "--store", store_copy, expect=5)
    assert "v000003.json" in result.stdout and "does not fit the manifest" in result.stdout
