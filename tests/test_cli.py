"""The CLI end to end on real digits, with runs tracked in the store's embedded MLflow."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

FAST = ["--epochs", "2", "--batch-size", "64"]


def digit_images(n: int = 20) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images[:n] / 16.0).astype(np.float32), digits.target[:n]


def test_add_status_eval_predict_history_remove(
    new_store_dir: Path, run_cli, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = new_store_dir
    run_cli("init", "--store", store, "--input", "1x8x8")
    first = json.loads(
        run_cli("add-task", "digits.class", "--store", store, *FAST, "--json").stdout
    )
    assert first["version"] == 2 and first["metrics"]["accuracy"] > 0.8
    run_cli("add-task", "digits.even", "--store", store, *FAST)

    status = json.loads(run_cli("status", "--store", store, "--json").stdout)
    assert [t["name"] for t in status["tasks"]] == ["digits.class", "digits.even"]
    assert status["tasks"][1]["sources"] == ["digits.class", "digits.even"]
    assert "digits.even" in run_cli("status", "--store", store).stdout

    evaluated = json.loads(run_cli("eval", "--store", store, "--json").stdout)["metrics"]
    assert evaluated["digits.class"]["accuracy"] == status["tasks"][0]["metric"]

    images, digits = digit_images()
    np.save(tmp_path / "batch.npy", images[:, None])
    Image.fromarray((images[0] * 255).astype(np.uint8)).save(tmp_path / "first.png")
    predicted = json.loads(
        run_cli(
            "predict", tmp_path / "batch.npy", tmp_path / "first.png", "--store", store, "--json"
        ).stdout
    )
    classes = predicted["tasks"]["digits.class"]["prediction"]
    assert len(classes) == 21 and predicted["inputs"][-1].endswith("first.png")
    assert classes[-1] == classes[0]  # the PNG is the first array, quantised to 8 bits
    assert sum(c == str(d) for c, d in zip(classes, digits, strict=False)) >= 16  # of 20
    even = predicted["tasks"]["digits.even"]["prediction"]
    assert (
        sum(e == ("yes" if d % 2 == 0 else "no") for e, d in zip(even, digits, strict=False)) >= 16
    )
    assert np.allclose(
        np.sum(predicted["tasks"]["digits.class"]["probabilities"], 1), 1.0, atol=1e-5
    )
    only = json.loads(
        run_cli(
            "predict", tmp_path / "batch.npy", "--store", store, "--task", "digits.even", "--json"
        ).stdout
    )
    assert list(only["tasks"]) == ["digits.even"]

    removed = json.loads(
        run_cli("remove-task", "digits.class", "--store", store, *FAST, "--json").stdout
    )
    assert removed["report"]["digits.even"]["reconnected"] is True
    assert removed["report"]["digits.even"]["after"] > 0.85
    versions = json.loads(run_cli("history", "--store", store, "--json").stdout)
    assert [h["version"] for h in versions] == [4, 3, 2, 1]

    runs = tracked_runs(store)
    assert sorted(r.data.tags["dmt.operation"] for r in runs) == [
        "add-task",
        "add-task",
        "remove-task",
    ]
    assert all(r.info.status == "FINISHED" for r in runs)
    remove = next(r for r in runs if r.data.tags["dmt.operation"] == "remove-task")
    kept = removed["report"]["digits.even"]["kept"]
    assert remove.data.tags["dmt.kept"] == f"digits.even: {kept}"
    add_even = next(r for r in runs if r.data.tags["dmt.tasks"] == "digits.even")
    assert add_even.data.metrics["digits.even.balanced_accuracy"] > 0.85
    assert add_even.data.params["epochs"] == "2"
    assert "alpha.digits.even.stage1.digits.class" in add_even.data.metrics
    history = client_for(store).get_metric_history(
        add_even.info.run_id, "alpha.digits.even.stage1.digits.class"
    )
    assert [m.step for m in history] == [1, 2]  # a gate's time series, one point per epoch
    assert add_even.data.params["connection.head_fusion"] == "True"  # dmt-cnn + ttc: DMT Table 6
    assert "alpha.digits.even.head.digits.class" in add_even.data.metrics  # FC-360 into the head
    artifacts = {
        a.path for a in client_for(store).list_artifacts(add_even.info.run_id, "relations")
    }
    assert artifacts == {"relations/relations.json", "relations/relations.png"}
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()


def client_for(store: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")


def tracked_runs(store: Path):
    client = client_for(store)
    experiment = client.get_experiment_by_name(store.name)
    return client.search_runs([experiment.experiment_id])


def test_add_task_on_missing_store_initialises_and_says_so(tmp_path: Path, run_cli) -> None:
    store = tmp_path / "fresh"
    result = run_cli("add-task", "digits.even", "--store", store, "--epochs", "1", "--no-tracking")
    assert "initialised a new store" in result.stderr and "1x8x8" in result.stderr
    assert "Added digits.even as version 2" in result.stdout


def test_store_from_environment(tmp_path: Path, run_cli, monkeypatch) -> None:
    monkeypatch.setenv("DMT_STORE", str(tmp_path / "env-store"))
    run_cli("init")
    assert json.loads(run_cli("status", "--json").stdout)["version"] == 1


def test_tasks_and_plugins_listings(run_cli, digits_store: Path) -> None:
    tasks = json.loads(run_cli("tasks", "--store", digits_store, "--json").stdout)
    by_name = {t["name"]: t for t in tasks}
    assert by_name["digits.class"]["in_store"] and not by_name["digits.prime"]["in_store"]
    assert by_name["shapes.red-circle"]["plugin"] == "shapes"
    plugins = {p["name"]: p for p in json.loads(run_cli("plugins", "--json").stdout)}
    assert plugins["digits"]["origin"] == "entry point" and plugins["digits"]["version"]
    assert plugins["ttc"]["origin"] == "builtin"
    assert "dmt_register_tasks" in plugins["digits"]["hooks"]


def test_shapes_tasks_train_at_the_store_size(tmp_path: Path, run_cli) -> None:
    store = tmp_path / "shapes"
    run_cli("init", "--store", store, "--input", "3x16x16")
    out = json.loads(
        run_cli(
            "add-task",
            "shapes.colour",
            "--store",
            store,
            "--epochs",
            "1",
            "--no-tracking",
            "--json",
        ).stdout
    )
    assert out["metrics"]["accuracy"] > 0.6  # chance is 1/3


def test_help_and_status_do_not_import_torch_or_mlflow(digits_store: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from dmtcore.cli import cli\n"
        "for args in (['--help'], ['status', '--store', sys.argv[1]], ['history', '--store', sys.argv[1]]):\n"
        "    try:\n"
        "        cli(args, standalone_mode=False)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = [m for m in ('torch', 'mlflow', 'torchvision') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    env = {**os.environ}
    out = subprocess.run(
        [sys.executable, "-c", code, str(digits_store)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr


def test_a_moved_store_keeps_its_artifacts_inside(
    new_store_dir: Path, run_cli, tmp_path: Path
) -> None:
    import shutil

    run_cli("add-task", "digits.class", "--store", new_store_dir, *FAST, "--no-register")
    moved = tmp_path / "moved"
    shutil.move(new_store_dir, moved)
    run_cli("add-task", "digits.even", "--store", moved, *FAST, "--no-register")
    assert not new_store_dir.exists()  # nothing written at the old place
    client = client_for(moved)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    newest = max(runs, key=lambda r: r.info.start_time)
    assert newest.info.artifact_uri.startswith(f"{moved.resolve()}/")  # a plain path, inside


def test_store_is_accepted_before_the_command_too(store_copy: Path, run_cli) -> None:
    before = run_cli("--store", store_copy, "status", "--json")
    after = run_cli("status", "--store", store_copy, "--json")
    assert json.loads(before.stdout) == json.loads(after.stdout)
    twice = run_cli("--store", store_copy, "status", "--store", "elsewhere", expect=2)
    assert "--store is given twice" in twice.stderr


def test_the_package_has_a_name_of_its_own_on_the_index() -> None:
    """'dmt' on the package index is an unrelated project: plugins depend on 'dmt-vision'."""
    import importlib.metadata

    distribution = importlib.metadata.distribution("dmt-vision")
    scripts = {e.name: e.value for e in distribution.entry_points if e.group == "console_scripts"}
    assert scripts == {"dmt": "dmtcore.cli:main"}
    assert {e.name for e in distribution.entry_points if e.group == "dmt"} >= {"digits", "shapes"}
