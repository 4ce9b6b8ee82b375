"""Registry storage (issue 16): with the embedded store, the weights every registered version
logs are hard links to the store's blobs, so the disk grows by one column per add-task, not
by versions × columns × 2 models; and every version stays loadable on its own."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

TASKS = ("digits.class", "digits.even", "digits.prime")
FAST = ["--epochs", "1", "--batch-size", "64"]


def cli(*args: Any) -> Any:
    """Run `dmt ARGS` in-process and insist that it succeeded."""
    from click.testing import CliRunner

    from dmtcore.cli import cli as dmt

    result = CliRunner().invoke(dmt, [str(a) for a in args])
    assert result.exit_code == 0, f"dmt {args}: {result.stderr}{result.exception!r}"
    return result


def images() -> np.ndarray:
    return np.random.default_rng(0).random((16, 1, 8, 8), dtype=np.float32)


def dmt_predict(store: Path, folder: Path) -> dict[str, list[Any]]:
    np.save(folder / "batch.npy", images())
    tasks = json.loads(cli("predict", folder / "batch.npy", "--store", store, "--json").stdout)
    return {task: result["prediction"] for task, result in tasks["tasks"].items()}


def weight_bytes(folder: Path, seen: set[tuple[int, int]]) -> int:
    """Bytes of the weight files under `folder` whose inode is not in `seen` (like `du`)."""
    total = 0
    for path in folder.rglob("*.safetensors"):
        info = os.lstat(path)
        if (info.st_dev, info.st_ino) not in seen:
            seen.add((info.st_dev, info.st_ino))
            total += info.st_size
    return total


@pytest.fixture(scope="module")
def grown(tmp_path_factory: pytest.TempPathFactory, mlflow_template: Path) -> dict[str, Any]:
    """A tracked store grown by three add-tasks, each registered; after each one, its weight
    bytes (store blobs, and what the registry added on top) and its predictions."""
    folder = tmp_path_factory.mktemp("storage")
    store = folder / "store"
    store.mkdir()
    shutil.copy(mlflow_template, store / "mlflow.db")
    steps = []
    for task in TASKS:
        cli("add-task", task, "--store", store, *FAST)
        seen: set[tuple[int, int]] = set()
        blobs = weight_bytes(store / "blobs", seen)
        steps.append(
            {
                "blobs": blobs,
                "registry": weight_bytes(store / "mlartifacts", seen),
                "predictions": dmt_predict(store, folder),
            }
        )
    return {"store": store, "uri": f"sqlite:///{store / 'mlflow.db'}", "steps": steps}


def test_the_disk_grows_by_one_column_per_task_not_per_version(grown) -> None:
    steps = grown["steps"]
    for before, after in itertools.pairwise(steps):
        new_column = after["blobs"] - before["blobs"]
        grew = after["blobs"] + after["registry"] - before["blobs"] - before["registry"]
        assert grew / new_column < 1.05  # with copies: 1 + 2 × (every column so far)
    cli("verify", "--store", grown["store"], "--all")  # hard links in mlartifacts trip nothing


def test_every_version_predicts_like_its_store_did_after_later_versions(grown, monkeypatch) -> None:
    import mlflow.pyfunc
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", grown["uri"])
    registry = MlflowClient(tracking_uri=grown["uri"], registry_uri=grown["uri"])
    for number, step in enumerate(grown["steps"], start=1):
        model = mlflow.pyfunc.load_model(f"models:/store/{number}")
        frame = model.predict(images())
        assert {task: list(frame[task]) for task in step["predictions"]} == step["predictions"]
        images_uri = registry.get_model_version("store", str(number)).tags["dmt.images_model"]
        mlflow.pyfunc.load_model(images_uri)  # the images model's weights are checked on load


def test_a_damaged_store_blob_is_never_linked_and_logging_again_never_writes_into_one(
    mlflow_template: Path, tmp_path: Path
) -> None:
    """MLflow copies into an existing artifact file in place (`shutil.copy2`): `detach` unlinks
    linked files before a model is logged over them, so the store's blob keeps its bytes."""
    from mlflow.tracking import MlflowClient

    from dmt_registry import artifact_links
    from dmtcore.store.directory import Store

    data = b"the store's weights"
    name = f"{hashlib.sha256(data).hexdigest()}.safetensors"
    blob = tmp_path / "store" / "blobs" / name
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"damaged")
    shutil.copy(mlflow_template, tmp_path / "mlflow.db")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("e", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(experiment).info.run_id
    model = artifact_links.local_artifact_dir(client.get_run(run_id).info.artifact_uri) / "model"
    logged = model / "artifacts" / "store" / "blobs" / name

    def log(content: bytes) -> None:
        saved = tmp_path / "saved" / "artifacts" / "store" / "blobs"
        shutil.rmtree(tmp_path / "saved", ignore_errors=True)
        saved.mkdir(parents=True)
        (saved / name).write_bytes(content)
        artifact_links.detach(model)
        client.log_artifacts(run_id, str(tmp_path / "saved"), artifact_path="model")

    def share() -> int:
        return artifact_links.share([model], Store(tmp_path / "store"))

    log(data)
    assert share() == 0 and not logged.samefile(blob)  # its sha256 does not match its name
    blob.write_bytes(data)
    log(data)
    assert share() == len(data) and logged.samefile(blob)
    log(b"other bytes")
    assert logged.read_bytes() == b"other bytes" and blob.read_bytes() == data


def test_the_first_version_loads_and_pulls_after_the_store_lost_its_blobs(
    grown, tmp_path: Path, monkeypatch
) -> None:
    """With hard links, deleting a store blob (by hand, or the store's clean-up of unreferenced
    blobs after a rollback or a crash) removes one name only: the logged model keeps the bytes.
    A symbolic link or a reference to the parent version would dangle here. (The blobs are put
    back afterwards as links to the logged files: the same files as before.)"""
    import mlflow.pyfunc

    store, uri = grown["store"], grown["uri"]
    logged = {p.name: p for p in (store / "mlartifacts").rglob("blobs/*.safetensors")}
    blobs = sorted((store / "blobs").iterdir())
    assert blobs and all(blob.samefile(logged[blob.name]) for blob in blobs)
    for blob in blobs:
        blob.unlink()
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        frame = mlflow.pyfunc.load_model("models:/store/1").predict(images())
        expected = grown["steps"][0]["predictions"]
        assert {task: list(frame[task]) for task in expected} == expected
        pulled = tmp_path / "pulled"
        cli("pull", "models:/store/1", "--store", pulled, "--tracking-uri", uri)
        assert dmt_predict(pulled, tmp_path) == expected
    finally:
        for blob in blobs:
            os.link(logged[blob.name], blob)
