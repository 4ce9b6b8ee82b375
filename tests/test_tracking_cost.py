"""What a tracked run no longer pays for (issue 16): the relation heatmap without matplotlib,
and MLflow's scan of every installed package when a version is published."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from dmtcore.tasks.visualize import VIRIDIS_HIGH, VIRIDIS_LOW

DRAW = """
import sys
from pathlib import Path
from dmtcore.model.connection_weights import heatmap_png, relation_matrices, select_stage
from dmtcore.store.directory import Store

manifest = Store.open(Path(sys.argv[1])).manifest()
heatmap_png(manifest, select_stage(relation_matrices(manifest), None), Path(sys.argv[2]))
print("matplotlib" in sys.modules)
"""


def test_the_runs_relation_heatmap_is_drawn_without_matplotlib(
    store_copy: Path, tmp_path: Path
) -> None:
    """Every panel's links on the shared viridis scale (the weakest link dark purple, the
    strongest yellow), own cells grey, and matplotlib never imported."""
    from PIL import Image

    from dmtcore.model.connection_weights import colour_limits, relation_matrices, select_stage
    from dmtcore.store.directory import Store

    path = tmp_path / "relations.png"
    result = subprocess.run(
        [sys.executable, "-c", DRAW, str(store_copy), str(path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False"], "drawing the heatmap imported matplotlib"
    stages = select_stage(relation_matrices(Store.open(store_copy).manifest()), None)
    low, high = colour_limits(stages)
    assert low < high, "the digits store's gates differ between stages"
    pixels = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3).astype(int)

    def count(colour: tuple[int, ...]) -> int:
        return int((np.abs(pixels - np.array(colour)) <= 2).all(1).sum())

    cell = 40 * 40  # of a 64-pixel cell, what its label leaves
    assert count((217, 217, 217)) > 2 * len(stages) * cell, "the own cells are grey"
    assert count(VIRIDIS_LOW) > cell and count(VIRIDIS_HIGH) > cell, "links span the scale"


def test_publishing_does_not_scan_every_installed_package(
    tracked_store, run_cli, monkeypatch
) -> None:
    """dmt pins the installed versions itself, so MLflow's check of them against the installed
    packages (a scan of every distribution's files) is skipped, and put back afterwards; the
    logged requirements still pin them."""
    import importlib.metadata

    import importlib_metadata
    import mlflow.utils.environment
    import mlflow.utils.requirements_utils
    from mlflow.tracking import MlflowClient

    scans = []
    scan = importlib_metadata.packages_distributions
    monkeypatch.setattr(
        importlib_metadata, "packages_distributions", lambda: scans.append(1) or scan()
    )
    monkeypatch.setattr(mlflow.utils.requirements_utils, "_MODULES_TO_PACKAGES", None)
    check = mlflow.utils.environment.warn_dependency_requirement_mismatches
    store, uri = tracked_store
    # Published in this process (a command that trains publishes from its tracking process,
    # where this test's counter could not see a scan): the same publishing code.
    run_cli("add-task", "digits.prime", "--store", store, "--epochs", "1", "--no-register")
    run_cli("register", "--store", store)
    assert scans == []
    assert mlflow.utils.environment.warn_dependency_requirement_mismatches is check
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = client.get_model_version_by_alias("store", "current")
    assert version.tags["dmt.task_added"] == "digits.prime"
    local = Path(client.download_artifacts(version.run_id, "model", str(store / "tmp")))
    pins = (local / "requirements.txt").read_text().split()
    assert f"torch=={importlib.metadata.version('torch')}" in pins
    assert json.loads((local / "serving_input_example.json").read_text())["inputs"]
