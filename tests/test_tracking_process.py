"""A command that trains logs to MLflow from a helper process (`dmt_registry.tracking_process`):
the training process never imports MLflow, and the run and the registry version are complete
when the call returns, with the helper gone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import json, os, subprocess, sys
import dmtcore

store = dmtcore.open_store(sys.argv[1])
record = store.add_task("digits.prime", epochs=1, batch_size=256)
children = subprocess.run(["pgrep", "-P", str(os.getpid())], capture_output=True, text=True)
print(json.dumps({
    "version": record["version"],
    "mlflow_imported": sorted(m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")),
    "children_left": children.stdout.split(),
}))
"""


def test_a_tracked_add_task_never_imports_mlflow_and_leaves_nothing_running(
    store_copy: Path, mlflow_template: Path
) -> None:
    from mlflow.tracking import MlflowClient

    shutil.copy(mlflow_template, store_copy / "mlflow.db")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(store_copy)],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["mlflow_imported"] == [], "the training process imported MLflow"
    assert seen["children_left"] == [], "the tracking process outlived the call"

    uri = f"sqlite:///{store_copy / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    current = client.get_model_version_by_alias("store", "current")
    assert current.tags["dmt.task_added"] == "digits.prime"
    assert current.tags["dmt.store_version"] == str(seen["version"])
    run = client.get_run(current.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["system.torch"]  # sent by the process that trains
    assert "digits.prime.train_loss" in run.data.metrics
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"manifest", "model"}
