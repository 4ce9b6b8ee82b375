"""Pixel-level tasks through the CLI, on the generated 16×16 squares of dense_toy_plugin.py:
old dense outputs stay bit-identical when tasks are added (every connection kind), training
beats chance, a dense group trains jointly, remove-task, eval, status and verify show dense
metrics, and bad dense data or a store without spatial features fails in one line, changing
nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import fingerprint

PLUGIN = Path(__file__).with_name("dense_toy_plugin.py")
TINY = ["--epochs", "1", "--batch-size", "16", "--no-tracking", "-p", PLUGIN]
SPATIAL = ["--input", "3x16x16", "--backbone-option", "spatial=true"]


@pytest.fixture(autouse=True)
def tiny_splits(monkeypatch) -> None:
    """32 training images (two batches) unless a test asks for more."""
    monkeypatch.setenv("DENSE_TOY_TRAIN", "32")
    monkeypatch.delenv("DENSE_TOY_PROBLEM", raising=False)


def error_line(stderr: str) -> str:
    """The one error line the CLI printed, without its prefix (warnings may come before it)."""
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith("Error: ") and "Traceback" not in stderr, stderr
    assert sum(line.startswith("Error: ") for line in lines) == 1, stderr
    return lines[-1].removeprefix("Error: ")


def images(path: Path, n: int = 4) -> Path:
    """A few of the plugin's images as an N×3×16×16 .npy file for predict."""
    from dense_toy_plugin import make

    np.save(path, make(3, n)["images"].numpy())
    return path


def invoke(*args, env: dict[str, str] | None = None):
    """`dmt ARGS` in-process, for module-scoped fixtures (run_cli is per test)."""
    from click.testing import CliRunner

    from dmtcore.cli import cli

    result = CliRunner(env=env).invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, (args, result.stderr, result.exception)
    return result


def predicted(run_cli, store: Path, inputs: Path) -> dict:
    return json.loads(run_cli("predict", inputs, "--store", store, "--json").stdout)["tasks"]


# -- old outputs stay bit-identical ----------------------------------------------------------

KINDS = [
    ("ttc", [], ["toyd.normals", "toyd.left"]),
    ("nddr", [], ["toyd.normals"]),
    ("nddr-shortcut", [], ["toyd.normals"]),
    ("cross-stitch", [], ["toyd.normals"]),
    ("none", [], ["toyd.normals"]),
    (
        "ttc",
        ["--backbone", "resnet18", "--backbone-option", "dilated=true"],
        ["toyd.normals"],
    ),
]


@pytest.mark.parametrize(
    ("kind", "backbone", "added"),
    KINDS,
    ids=[k if not b else f"{k}-resnet18-dilated" for k, b, _ in KINDS],
)
def test_adding_tasks_keeps_old_dense_outputs_bit_identical(
    run_cli, tmp_path: Path, kind, backbone, added
) -> None:
    store = tmp_path / "store"
    backbone = backbone or ["--backbone-option", "spatial=true"]
    run_cli("init", "--store", store, "--input", "3x16x16", *backbone, "--connection", kind)
    run_cli("add-task", "toyd.seg", "--store", store, *TINY)
    inputs = images(tmp_path / "x.npy")
    before = predicted(run_cli, store, inputs)
    assert np.asarray(before["toyd.seg"]["probabilities"]).shape == (4, 2, 16, 16)
    for task in added:
        run_cli("add-task", task, "--store", store, *TINY)
        after = predicted(run_cli, store, inputs)
        for old in before:
            assert after[old] == before[old], (kind, task, old)
        before = after
    assert np.asarray(before["toyd.normals"]["prediction"]).shape == (4, 3, 16, 16)


# -- training, joint training, eval, status, verify, remove-task ------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict, dict]:
    """toyd.seg and toyd.normals trained jointly (2 epochs of 256 images), then toyd.depth
    added: the store, `dmt train --json` and `dmt add-task --json`."""

    def run(*args) -> dict:
        return json.loads(invoke(*args, env={"DENSE_TOY_TRAIN": "256"}).stdout)

    store = tmp_path_factory.mktemp("dense") / "store"
    run("init", "--store", store, *SPATIAL, "--json")
    common = ["--store", store, "--batch-size", "16", "--no-tracking", "-p", PLUGIN, "--json"]
    joint = run("train", "toyd.seg", "toyd.normals", "--epochs", "2", *common)
    depth = run("add-task", "toyd.depth", "--epochs", "1", *common)
    return store, joint, depth


def one_class_miou() -> float:
    """The validation mIoU of predicting background everywhere: background's IoU is its share
    of labelled pixels, the square's is 0."""
    from dense_toy_plugin import make

    labels = make(2, 64)["seg"]
    labelled = labels[labels >= 0]
    return float((labelled == 0).float().mean()) / 2


def test_joint_dense_training_beats_chance(trained, run_cli) -> None:
    store, joint, depth = trained
    assert joint["tasks"] == ["toyd.seg", "toyd.normals"]
    seg, normals = joint["metrics"]["toyd.seg"], joint["metrics"]["toyd.normals"]
    assert seg["miou"] > one_class_miou() + 0.1, seg  # ~0.37 for one class
    assert normals["mean_angle"] < 45.0, normals  # ~90° for random directions
    assert normals["within_30"] > 0.5, normals
    assert depth["metrics"]["abs_rel"] < 1.0, depth  # predicting 0 (the initial output) gives 1
    status = json.loads(run_cli("status", "--store", store, "--json").stdout)
    sources = {t["name"]: t["sources"] for t in status["tasks"]}
    assert sources["toyd.seg"] == sources["toyd.normals"] == ["toyd.seg", "toyd.normals"]


def test_eval_status_and_verify_show_dense_metrics(trained, run_cli) -> None:
    store, joint, depth = trained
    recorded = {**joint["metrics"], "toyd.depth": depth["metrics"]}
    evaluated = json.loads(run_cli("eval", "--store", store, "-p", PLUGIN, "--json").stdout)
    assert evaluated["metrics"].keys() == recorded.keys()
    for task, metrics in recorded.items():  # the same val split
        assert evaluated["metrics"][task] == pytest.approx(metrics, rel=1e-5), task
    table = run_cli("eval", "--store", store, "-p", PLUGIN).stdout
    for metric in ("miou", "pixel_accuracy", "mean_angle", "median_angle", "abs_rel", "delta1"):
        assert metric in table, table

    status = json.loads(run_cli("status", "--store", store, "--json").stdout)
    rows = {t["name"]: t for t in status["tasks"]}
    assert {n: (r["output"]["kind"], r["primary_metric"]) for n, r in rows.items()} == {
        "toyd.seg": ("segmentation", "miou"),
        "toyd.normals": ("normals", "mean_angle"),
        "toyd.depth": ("depth", "abs_rel"),
    }
    assert rows["toyd.normals"]["metric"] == pytest.approx(recorded["toyd.normals"]["mean_angle"])
    human = run_cli("status", "--store", store).stdout
    assert "segmentation/2" in human and "normals/3" in human and "mean_angle" in human, human

    verified = run_cli("verify", "--store", store)
    assert verified.exit_code == 0


def test_remove_task_on_a_dense_store(trained, run_cli, tmp_path: Path) -> None:
    original, joint, added = trained
    store = tmp_path / "store"
    shutil.copytree(original, store)
    options = ["--epochs", "1", "--batch-size", "16", "--no-tracking", "-p", PLUGIN, "--json"]
    removed = json.loads(run_cli("remove-task", "toyd.normals", "--store", store, *options).stdout)
    report = removed["report"]
    assert {t: (r["metric"], r["reconnected"]) for t, r in report.items()} == {
        "toyd.seg": ("miou", True),
        "toyd.depth": ("abs_rel", True),
    }
    seg, depth = report["toyd.seg"], report["toyd.depth"]
    assert seg["before"] == pytest.approx(joint["metrics"]["toyd.seg"]["miou"], rel=1e-5)
    assert depth["before"] == pytest.approx(added["metrics"]["abs_rel"], rel=1e-5)
    if seg["kept"] == "cut":
        assert (seg["after"], depth["after"]) == (seg["cut"], depth["cut"])
    else:  # a reconnection epoch is kept only if it beats the cut, each metric its own way
        gain = (seg["after"] - seg["cut"]) / seg["cut"] + (depth["cut"] - depth["after"]) / depth[
            "cut"
        ]
        assert gain > 0, report

    outputs = predicted(run_cli, store, images(tmp_path / "x.npy", 2))
    assert set(outputs) == {"toyd.seg", "toyd.depth"}
    assert np.asarray(outputs["toyd.seg"]["probabilities"]).shape == (2, 2, 16, 16)
    assert np.asarray(outputs["toyd.depth"]["prediction"]).shape == (2, 16, 16)
    evaluated = json.loads(run_cli("eval", "--store", store, "-p", PLUGIN, "--json").stdout)
    assert evaluated["metrics"]["toyd.depth"]["abs_rel"] == pytest.approx(depth["after"], rel=1e-5)
    run_cli("verify", "--store", store)


def test_predict_out_writes_viewable_maps_and_the_raw_arrays(
    trained, run_cli, tmp_path: Path
) -> None:
    """`--out` writes per image and dense task a PNG at the store's size and the very arrays
    that `--json` gives, and predictions.json naming them; the table names each map's size."""
    from PIL import Image

    store = trained[0]
    inputs = images(tmp_path / "x.npy", 2)
    arrays = predicted(run_cli, store, inputs)
    out = tmp_path / "preds"
    written = json.loads(
        run_cli("predict", inputs, "--store", store, "--out", out, "--json").stdout
    )
    assert json.loads((out / "predictions.json").read_text())["rows"] == written["rows"]
    for index, row in enumerate(written["rows"]):
        for task in ("toyd.seg", "toyd.normals", "toyd.depth"):
            png = out / row[task]
            with Image.open(png) as image:
                assert (image.mode, image.size) == ("RGB", (16, 16)), png
            raw = np.load(png.with_suffix(".npy"), allow_pickle=False)
            assert np.array_equal(raw, np.asarray(arrays[task]["prediction"][index])), task
    table = run_cli("predict", inputs, "--store", store).stdout
    assert "map 16×16" in table and "map 3×16×16" in table, table


# -- what cannot work fails in one line, changing nothing ------------------------------------


def test_a_dense_task_on_a_store_without_spatial_features(run_cli, tmp_path: Path) -> None:
    store = tmp_path / "store"
    run_cli("init", "--store", store, "--input", "3x16x16")
    run_cli("add-task", "toyd.left", "--store", store, *TINY)
    before = fingerprint(store)
    for command in (["add-task", "toyd.seg"], ["train", "toyd.depth", "toyd.normals"]):
        result = run_cli(*command, "--store", store, *TINY, expect=11)
        line = error_line(result.stderr)
        assert "a dense head needs spatial features" in line, line
        assert "--backbone dmt-cnn --backbone-option spatial=true" in line, line
        assert "--backbone resnet18 --backbone-option dilated=true" in line, line
        assert fingerprint(store) == before


@pytest.fixture(scope="module")
def spatial_store(tmp_path_factory) -> Path:
    """A spatial dmt-cnn store with the image-level toyd.left (copy it to mutate)."""
    store = tmp_path_factory.mktemp("spatial") / "store"
    invoke("init", "--store", store, *SPATIAL)
    invoke("add-task", "toyd.left", "--store", store, *TINY)
    return store


BAD_DATA = [
    ("mask-size", "toyd.seg", ["label maps of 8×8 for images of 16×16", "image's height and width"]),
    ("mask-float", "toyd.seg", ["dtype torch.float32", "valid: an integer dtype (torch.long)"]),
    (
        "class-out-of-range",
        "toyd.seg",
        ["segmentation class id 5", "valid: 0..1, or -1 for unlabelled pixels"],
    ),
    ("depth-nan", "toyd.depth", ["NaN or infinite depth values", "mark pixels without ground truth with 0"]),
    ("depth-negative", "toyd.depth", ["go down to -0.5", "valid: depth >= 0"]),
    ("normals-colour", "toyd.normals", ["surface normal of length 1.3", "valid: unit vectors"]),
    ("normals-channels", "toyd.normals", ["must be 3×H×W per image", "got a batch of (16, 2, 16, 16)"]),
]  # fmt: skip


@pytest.mark.parametrize(("problem", "task", "says"), BAD_DATA, ids=[p for p, _, _ in BAD_DATA])
def test_bad_dense_data_is_one_line_and_changes_nothing(
    spatial_store: Path, run_cli, tmp_path: Path, monkeypatch, problem, task, says
) -> None:
    store = tmp_path / "store"
    shutil.copytree(spatial_store, store)
    before = fingerprint(store)
    monkeypatch.setenv("DENSE_TOY_PROBLEM", problem)
    result = run_cli("add-task", task, "--store", store, *TINY, expect=7)
    line = error_line(result.stderr)
    assert line.startswith(f"task {task!r} (plugin 'dense_toy_plugin')"), line
    for part in says:
        assert part in line, line
    assert fingerprint(store) == before


@pytest.mark.parametrize("task", ["toyd.seg", "toyd.depth", "toyd.normals"])
def test_a_validation_split_without_labelled_pixels_is_bad_data(
    spatial_store: Path, run_cli, tmp_path: Path, monkeypatch, task
) -> None:
    store = tmp_path / "store"
    shutil.copytree(spatial_store, store)
    before = fingerprint(store)
    monkeypatch.setenv("DENSE_TOY_PROBLEM", "val-unlabelled")
    result = run_cli("add-task", task, "--store", store, *TINY, expect=None)
    assert result.exit_code == 7, (result.exit_code, result.stderr[-300:])
    line = error_line(result.stderr)
    assert line.startswith(f"task {task!r} (plugin 'dense_toy_plugin')"), line
    assert "val split" in line and "labelled pixel" in line, line
    assert fingerprint(store) == before


def test_a_training_split_without_labelled_pixels_is_bad_data(
    spatial_store: Path, run_cli, tmp_path: Path, monkeypatch
) -> None:
    store = tmp_path / "store"
    shutil.copytree(spatial_store, store)
    before = fingerprint(store)
    monkeypatch.setenv("DENSE_TOY_PROBLEM", "train-unlabelled")
    result = run_cli("add-task", "toyd.seg", "--store", store, *TINY, expect=None)
    assert result.exit_code == 7, (result.exit_code, result.stdout[-300:])
    line = error_line(result.stderr)
    assert "train split" in line and "labelled pixel" in line, line
    assert fingerprint(store) == before


def test_unlabelled_pixels_are_valid_data(spatial_store: Path, run_cli, tmp_path: Path) -> None:
    """The plugin's top rows are -1, 0 and all-zero: not an error, and not counted."""
    store = tmp_path / "store"
    shutil.copytree(spatial_store, store)
    for task in ("toyd.seg", "toyd.depth", "toyd.normals"):
        added = json.loads(run_cli("add-task", task, "--store", store, *TINY, "--json").stdout)
        assert all(np.isfinite(v) for v in added["metrics"].values()), added


# -- an implicit store, tracking ---------------------------------------------------------------


def test_a_store_created_by_a_dense_add_task_is_spatial(run_cli, tmp_path: Path) -> None:
    store = tmp_path / "missing"
    run_cli("add-task", "toyd.normals", "--store", store, *TINY)
    status = json.loads(run_cli("status", "--store", store, "--json").stdout)
    assert status["backbone"]["name"] == "dmt-cnn"
    assert status["backbone"]["options"]["spatial"] is True
    assert status["input_spec"] == [3, 16, 16]


def test_a_tracked_dense_add_task_logs_dense_metrics(
    spatial_store: Path, run_cli, tmp_path: Path, mlflow_template: Path
) -> None:
    from mlflow.tracking import MlflowClient

    store = tmp_path / "store"
    shutil.copytree(spatial_store, store)
    shutil.copy(mlflow_template, store / "mlflow.db")
    run_cli(
        "add-task", "toyd.seg", "--store", store, "--epochs", "1", "--batch-size", "16",
        "-p", PLUGIN, "--no-register",
    )  # fmt: skip
    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    logged = run.data.metrics
    for metric in ("miou", "pixel_accuracy"):
        assert f"toyd.seg.{metric}" in logged and f"toyd.seg.val.{metric}" in logged, logged
    assert 0.0 <= logged["toyd.seg.miou"] <= 1.0
    assert run.info.status == "FINISHED"
    # input / truth / prediction of 4 validation images, each 16×16 cell shown at 96×96
    [preview] = client.list_artifacts(run.info.run_id, "previews")
    assert preview.path == "previews/toyd.seg.png"
    from PIL import Image

    with Image.open(client.download_artifacts(run.info.run_id, preview.path)) as image:
        assert image.size == (3 * 96 + 2 * 2, 4 * 96 + 3 * 2)
