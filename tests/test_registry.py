"""The MLflow Model Registry: every operation a registered, loadable, restorable version."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import BOTH_BACKENDS

FAST = ["--epochs", "1", "--batch-size", "64"]


def client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def images(n: int = 16) -> np.ndarray:
    return np.random.default_rng(0).random((n, 1, 8, 8), dtype=np.float32)


def dmt_predict(run_cli, store: Path, tmp_path: Path) -> dict:
    np.save(tmp_path / "batch.npy", images())
    return json.loads(
        run_cli("predict", tmp_path / "batch.npy", "--store", store, "--json").stdout
    )["tasks"]


@BOTH_BACKENDS
def test_add_task_registers_a_version_with_tags_and_alias(tracked_store, run_cli) -> None:
    store, uri = tracked_store
    run_cli("add-task", "digits.prime", "--store", store, *FAST)
    registry = client(uri)
    latest = registry.get_model_version_by_alias("store", "current")
    assert int(latest.version) == 2  # an int from SQLite, a str over REST
    assert (
        latest.tags["dmt.operation"] == "add-task"
        and latest.tags["dmt.task_added"] == "digits.prime"
    )
    assert latest.tags["dmt.tasks"] == "digits.class,digits.even,digits.prime"
    assert latest.tags["dmt.parent_version"] == "1" and latest.tags["dmt.store_version"] == "4"
    assert (
        "added digits.prime" in latest.description
        and "digits.prime balanced_accuracy" in latest.description
    )
    run_cli("add-task", "digits.large", "--store", store, *FAST, "--no-register")
    assert int(registry.get_model_version_by_alias("store", "current").version) == 2


@BOTH_BACKENDS
def test_registered_model_predicts_like_dmt_predict(
    tracked_store, run_cli, tmp_path: Path, monkeypatch
) -> None:
    import mlflow.pyfunc

    store, uri = tracked_store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model = mlflow.pyfunc.load_model("models:/store@current")
    frame = model.predict(images())
    expected = dmt_predict(run_cli, store, tmp_path)
    for task, result in expected.items():
        assert list(frame[task]) == result["prediction"]
        assert np.array_equal(
            np.array(list(frame[f"{task}.probabilities"])), np.array(result["probabilities"])
        )
    only = model.predict(images(), params={"tasks": "digits.even"})
    assert list(only.columns) == ["digits.even", "digits.even.probabilities"]


def test_registered_model_takes_image_files_and_base64(
    tracked_store, run_cli, tmp_path: Path, monkeypatch
) -> None:
    import base64

    import mlflow.pyfunc
    import pandas as pd
    from PIL import Image

    store, uri = tracked_store
    paths = []
    for index, image in enumerate(images(4)):
        paths.append(tmp_path / f"{index}.png")
        Image.fromarray((image[0] * 255).astype(np.uint8)).save(paths[-1])
    expected = json.loads(run_cli("predict", *paths, "--store", store, "--json").stdout)["tasks"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # The registered model takes tensors; the same version's images model takes encoded images.
    images_model = client(uri).get_model_version_by_alias("store", "current").tags
    model = mlflow.pyfunc.load_model(images_model["dmt.images_model"])
    encoded = [base64.b64encode(p.read_bytes()).decode() for p in paths]
    for column in ([str(p) for p in paths], encoded, [p.read_bytes() for p in paths]):
        frame = model.predict(pd.DataFrame({"image": column}))
        for task, result in expected.items():
            assert list(frame[task]) == result["prediction"]
            assert np.array_equal(
                np.array(list(frame[f"{task}.probabilities"])), np.array(result["probabilities"])
            )
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException, match="neither an existing file nor base64"):
        model.predict(pd.DataFrame({"image": ["not an image!"]}))


@BOTH_BACKENDS
def test_pull_rebuilds_an_identical_store_whose_lineage_goes_on(
    tracked_store, run_cli, tmp_path: Path
) -> None:
    store, uri = tracked_store
    pulled = tmp_path / "pulled"
    run_cli("pull", "models:/store@current", "--store", pulled, "--tracking-uri", uri)
    assert dmt_predict(run_cli, pulled, tmp_path) == dmt_predict(run_cli, store, tmp_path)
    status = json.loads(run_cli("status", "--store", pulled, "--json").stdout)
    assert status["version"] == 3 and [t["name"] for t in status["tasks"]] == [
        "digits.class",
        "digits.even",
    ]
    run_cli("add-task", "digits.prime", "--store", pulled, *FAST, "--tracking-uri", uri)
    latest = client(uri).get_model_version_by_alias("store", "current")
    assert (
        int(latest.version) == 2 and latest.tags["dmt.parent_version"] == "1"
    )  # the lineage goes on


@BOTH_BACKENDS
def test_promote_sets_an_alias(tracked_store, run_cli) -> None:
    store, uri = tracked_store
    run_cli("promote", "1", "--alias", "production", "--store", store)
    assert int(client(uri).get_model_version_by_alias("store", "production").version) == 1
    assert (
        "has no version 7"
        in run_cli("promote", "7", "--alias", "x", "--store", store, expect=3).stderr
    )


def test_pull_faults_leave_nothing_behind(tracked_store, run_cli, tmp_path: Path) -> None:
    import mlflow.pyfunc

    _, uri = tracked_store
    target = tmp_path / "target"
    missing = run_cli("pull", "models:/store/9", "--store", target, "--tracking-uri", uri, expect=3)
    assert "'models:/store/9' was not found" in missing.stderr and not target.exists()

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input

    registry = client(uri)
    run = registry.create_run(registry.get_experiment_by_name("store").experiment_id)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        import mlflow

        with mlflow.start_run(run_id=run.info.run_id):
            mlflow.pyfunc.log_model(name="m", python_model=Echo(), registered_model_name="other")
    foreign = run_cli("pull", "models:/other/1", "--store", target, "--tracking-uri", uri, expect=5)
    assert "is not a dmt model" in foreign.stderr and not target.exists()
    assert (
        "--tracking-uri" in run_cli("pull", "models:/store/1", "--store", target, expect=11).stderr
    )


def test_two_different_stores_cannot_share_a_model_name(
    tracked_store, run_cli, tmp_path: Path
) -> None:
    _, uri = tracked_store
    other = tmp_path / "other"
    run_cli("init", "--store", other, "--input", "1x16x16", "--model-name", "store")
    before = sorted(p.name for p in other.iterdir())
    result = run_cli(
        "add-task", "digits.even", "--store", other, *FAST, "--tracking-uri", uri, expect=4
    )
    assert "registered model 'store' holds a store with another input spec" in result.stderr
    assert sorted(p.name for p in other.iterdir()) == before
    assert [int(v.version) for v in client(uri).search_model_versions("name='store'")] == [1]


def test_failed_run_registers_nothing(tracked_store, run_cli, write_plugin) -> None:
    store, uri = tracked_store
    plugin = write_plugin(
        "boom",
        "from dmtcore import hookimpl\n\n@hookimpl\ndef dmt_epoch_end(run, report):\n    raise KeyboardInterrupt\n",
    )
    run_cli("add-task", "digits.prime", "-p", plugin, "--store", store, *FAST, expect=130)
    assert [int(v.version) for v in client(uri).search_model_versions("name='store'")] == [1]
