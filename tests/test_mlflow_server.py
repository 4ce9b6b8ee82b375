"""Against real MLflow processes on loopback: a tracking server, and `mlflow models serve`."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.team_server import free_port
from tests.team_server import stop_process as stop

MLFLOW = str(Path(sys.executable).with_name("mlflow"))
FAST = ["--epochs", "1", "--batch-size", "64"]


def wait_until_up(url: str, process: subprocess.Popen, log: Path, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{url} exited early:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url} did not come up in {seconds}s:\n{log.read_text()[-3000:]}")


def start(
    args: list[str], url: str, log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen:
    with open(log, "w") as handle:
        process = subprocess.Popen(
            args, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
    wait_until_up(url, process, log)
    return process


@pytest.fixture
def mlflow_server(tmp_path: Path, mlflow_template: Path) -> Iterator[str]:
    database = tmp_path / "server.db"
    shutil.copy(mlflow_template, database)
    port = free_port()
    args = [
        MLFLOW, "server", "--backend-store-uri", f"sqlite:///{database}",
        "--artifacts-destination", str(tmp_path / "server-artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    process = start(args, f"http://127.0.0.1:{port}/health", tmp_path / "server.log")
    yield f"http://127.0.0.1:{port}"
    stop(process)


def predict_json(run_cli, store: Path, batch: Path) -> dict:
    return json.loads(run_cli("predict", batch, "--store", store, "--json").stdout)["tasks"]


@pytest.mark.slow
def test_tracking_server_end_to_end(mlflow_server: str, run_cli, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    store, pulled = tmp_path / "store", tmp_path / "pulled"
    run_cli("add-task", "digits.class", "--store", store, *FAST, "--tracking-uri", mlflow_server)
    run_cli("add-task", "digits.even", "--store", store, *FAST, "--tracking-uri", mlflow_server)
    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    current = client.get_model_version_by_alias("store", "current")
    assert int(current.version) == 2 and current.tags["dmt.parent_version"] == "1"
    runs = client.search_runs([client.get_experiment_by_name("store").experiment_id])
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]
    assert not (store / "mlflow.db").exists()  # everything went to the server
    run_cli("pull", "models:/store@current", "--store", pulled, "--tracking-uri", mlflow_server)
    np.save(tmp_path / "batch.npy", np.random.default_rng(1).random((8, 1, 8, 8), dtype=np.float32))
    assert predict_json(run_cli, pulled, tmp_path / "batch.npy") == predict_json(
        run_cli, store, tmp_path / "batch.npy"
    )


@pytest.mark.slow
def test_models_serve_answers_like_dmt_predict(
    store_copy: Path, mlflow_template: Path, run_cli, tmp_path: Path
) -> None:
    shutil.copy(mlflow_template, store_copy / "mlflow.db")
    run_cli("register", "--store", store_copy)
    uri = f"sqlite:///{store_copy / 'mlflow.db'}"
    port = free_port()
    args = [
        MLFLOW,
        "models",
        "serve",
        "-m",
        "models:/store@current",
        "--env-manager",
        "local",
        "--host",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    # The scoring server runs `uvicorn` from PATH: the one next to this Python.
    env = {
        "MLFLOW_TRACKING_URI": uri,
        "PATH": f"{Path(MLFLOW).parent}{os.pathsep}{os.environ['PATH']}",
    }
    process = start(args, f"http://127.0.0.1:{port}/ping", tmp_path / "serve.log", env)
    try:
        batch = np.random.default_rng(2).random((6, 1, 8, 8), dtype=np.float32)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": batch.tolist()}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            served = json.loads(response.read())["predictions"]
        unknown = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": batch.tolist(), "params": {"tasks": "x"}}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(unknown, timeout=60)
        assert refused.value.code == 400
        answer = json.loads(refused.value.read())
        assert answer["message"].startswith("unknown task 'x' in this store.")
    finally:
        stop(process)
    # Encoded images go to the same version's images model (its own schema): through the
    # scoring server's request handling, in-process.
    import mlflow.pyfunc
    from mlflow.pyfunc import scoring_server
    from mlflow.tracking import MlflowClient

    png = tmp_path / "first.png"
    Image.fromarray((batch[0, 0] * 255).astype(np.uint8)).save(png)
    encoded = base64.b64encode(png.read_bytes()).decode()
    registry = MlflowClient(tracking_uri=uri, registry_uri=uri)
    images_uri = registry.get_model_version_by_alias("store", "current").tags["dmt.images_model"]
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        images_model = mlflow.pyfunc.load_model(images_uri)
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    answer = scoring_server.invocations(
        json.dumps({"dataframe_split": {"columns": ["image"], "data": [[encoded]]}}),
        "application/json",
        images_model,
        images_model.metadata.get_input_schema(),
    )
    served_png = json.loads(answer.response)["predictions"]
    np.save(tmp_path / "batch.npy", batch)
    expected = predict_json(run_cli, store_copy, tmp_path / "batch.npy")
    from_png = predict_json(run_cli, store_copy, png)
    for task, result in expected.items():
        assert [row[task] for row in served] == result["prediction"]
        assert served_png[0][task] == from_png[task]["prediction"][0]
        assert np.allclose(
            [row[f"{task}.probabilities"] for row in served], result["probabilities"], atol=1e-6
        )
