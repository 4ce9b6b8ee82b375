"""Region-level tasks (issue 26): detection and box attributes grown one task at a time.

mAP is checked against a case computed by hand; bad box labels fail in one line naming the
task, the value and what is valid, changing nothing; `scenes.detection` then `scenes.attributes`
join a store of image- and pixel-level tasks (and a fresh one), leaving every old output
bit-identical, boxes and scores included; eval shows mAP, predict prints boxes, `predict --out`
draws them, MLflow logs mAP, and the registered model, loaded as MLflow loads it, returns them.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import fingerprint

PLUGIN = Path(__file__).with_name("region_toy_plugin.py")
TINY = ["--epochs", "1", "--batch-size", "16", "--no-tracking"]


def error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith("Error: ") and "Traceback" not in stderr, stderr
    assert sum(line.startswith("Error: ") for line in lines) == 1, stderr
    return lines[-1].removeprefix("Error: ")


# -- the metrics, by hand -------------------------------------------------------------------


def test_detection_map_matches_a_case_computed_by_hand() -> None:
    """One class, two images with one object each. Ranked detections: a hit (IoU 1), a miss,
    a hit of IoU 0.77. At IoU 0.5 precision is 1 up to recall 0.5, then 2/3 up to recall 1: at
    COCO's 101 recall points AP = (51 + 50·2/3)/101. At 0.8 and above the second hit misses:
    AP = 51/101. COCO's mAP averages the 10 thresholds 0.5..0.95: 6 of the first, 4 of the
    second."""
    from dmtcore.tasks.region_metrics import detection_map

    truth = [
        {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([0])},
        {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([0])},
    ]
    found = [
        {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([0])},
        {
            "boxes": torch.tensor([[20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 7.7]]),
            "scores": torch.tensor([0.8, 0.7]),
            "labels": torch.tensor([0, 0]),
        },
    ]  # fmt: skip
    at_50 = (51 + 50 * 2 / 3) / 101
    strict = 51 / 101
    values = detection_map(found, truth)
    assert values["map_50"] == pytest.approx(at_50, abs=1e-4)
    assert values["map"] == pytest.approx((6 * at_50 + 4 * strict) / 10, abs=1e-4)
    assert math.isnan(
        detection_map(
            found, [{**t, "boxes": t["boxes"][:0], "labels": t["labels"][:0]} for t in truth]
        )["map_50"]
    )


def test_attribute_map_matches_a_case_computed_by_hand() -> None:
    """Per attribute, precision averaged at each positive box in score order; the attribute
    with no positive box is left out of the mean."""
    from dmtcore.tasks.region_metrics import attribute_map

    scores = torch.tensor([[0.9, 0.5, 0.1], [0.8, 0.5, 0.2], [0.3, 0.5, 0.3]])
    truth = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    first = (1 / 1 + 2 / 3) / 2  # ranks: positive, negative, positive
    third = (1 / 2 + 2 / 3) / 2  # ranks: negative, positive, positive
    assert attribute_map(scores, truth) == pytest.approx((first + third) / 2, abs=1e-6)


def test_the_attribute_loss_is_the_mean_over_foreground_boxes_and_attributes() -> None:
    """The paper's loss: summed over attributes, scaled by 1/A, over the ground-truth boxes."""
    from dmtcore.tasks.region_metrics import attribute_bce

    class Given:
        def __init__(self, logits):
            self.given = logits

        def logits(self, boxes):
            assert [len(b) for b in boxes] == [2, 0, 1]
            return self.given

    logits = torch.tensor([[2.0, -1.0, 0.0], [0.5, 0.5, -3.0], [1.0, 1.0, 1.0]])
    truth = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    targets = [
        {"boxes": torch.zeros(2, 4), "attributes": truth[:2]},
        {"boxes": torch.zeros(0, 4), "attributes": truth[:0]},
        {"boxes": torch.zeros(1, 4), "attributes": truth[2:]},
    ]
    per_box = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, truth, reduction="none"
    ).sum(1)
    expected = (per_box / 3).mean()  # summed over 3 attributes, scaled by 1/3, mean over boxes
    assert float(attribute_bce(Given(logits), targets)) == pytest.approx(float(expected))


# -- bad box labels ---------------------------------------------------------------------------

BAD_LABELS = [
    ("x2-before-x1", "toyr.boxes", ["box 0 is [", "with x2 <= x1", "valid: x1 < x2 and y1 < y2, inside the 32×32 image"]),
    ("outside", "toyr.boxes", ["outside the image", "valid: corners inside the 32×32 image (0 ≤ x ≤ 32, 0 ≤ y ≤ 32"]),
    ("nan", "toyr.boxes", ["box 0 is [", "nan", "valid: finite corners"]),
    ("int-boxes", "toyr.boxes", ["boxes have dtype torch.int64", "valid: float (torch.float32)"]),
    ("boxes-shape", "toyr.boxes", ["boxes must be n×4", "got shape ("]),
    ("float-classes", "toyr.boxes", ["class ids have dtype torch.float32", "valid: an integer dtype (torch.int64)"]),
    ("class-out-of-range", "toyr.boxes", ["class id 3", "valid: 0..2"]),
    ("wrong-keys", "toyr.boxes", ["a detection label must be a dict {'boxes'", "got keys ['boxes', 'classes']"]),
    ("attribute-value", "toyr.traits", ["attribute value 0.5", "valid: 0 or 1"]),
    ("attribute-count", "toyr.traits", ["attributes must be one 0/1 vector of 2 per box", "got shape ("]),
    ("tensor-labels", "toyr.boxes", ["detection labels must be one dict per image", "got a tensor of shape (16, 4)"]),
]  # fmt: skip


@pytest.fixture(scope="module")
def flat_and_spatial(tmp_path_factory) -> dict[str, Path]:
    """Two empty stores at 3×32×32: the spatial dmt-cnn, and the default flat one."""
    from click.testing import CliRunner

    from dmtcore.cli import cli

    root = tmp_path_factory.mktemp("region-stores")
    stores = {"spatial": root / "spatial", "flat": root / "flat"}
    for name, store in stores.items():
        options = ["--backbone-option", "spatial=true"] if name == "spatial" else []
        result = CliRunner().invoke(
            cli, ["init", "--store", str(store), "--input", "3x32x32", *options]
        )
        assert result.exit_code == 0, result.stderr
    return stores


@pytest.mark.parametrize(("problem", "task", "says"), BAD_LABELS, ids=[p for p, _, _ in BAD_LABELS])
def test_bad_box_labels_are_one_line_and_change_nothing(
    flat_and_spatial, run_cli, tmp_path: Path, monkeypatch, problem, task, says
) -> None:
    store = tmp_path / "store"
    shutil.copytree(flat_and_spatial["spatial"], store)
    before = fingerprint(store)
    monkeypatch.setenv("REGION_TOY_PROBLEM", problem)
    monkeypatch.setenv("REGION_TOY_TRAIN", "16")  # one batch: the bad label is in the first
    result = run_cli("add-task", task, "--store", store, *TINY, "-p", PLUGIN, expect=7)
    line = error_line(result.stderr)
    assert line.startswith(f"task {task!r} (plugin 'region_toy_plugin'), train split"), line
    for part in says:
        assert part in line, line
    assert fingerprint(store) == before


def test_a_region_task_on_a_store_without_spatial_features(flat_and_spatial, run_cli) -> None:
    store = flat_and_spatial["flat"]
    before = fingerprint(store)
    result = run_cli("add-task", "toyr.boxes", "--store", store, *TINY, "-p", PLUGIN, expect=11)
    line = error_line(result.stderr)
    assert "a region head needs spatial features" in line, line
    assert "--backbone dmt-cnn --backbone-option spatial=true" in line, line
    assert fingerprint(store) == before


def test_head_and_contract_mistakes_are_refused_by_value() -> None:
    from dmtcore import HeadSpec, TaskSpec
    from dmtcore.errors import InvalidValueError

    def spec(**kwargs):
        base = {
            "name": "t.x",
            "description": "",
            "input_shape": (3, 32, 32),
            "datasets": lambda r: None,
        }
        return TaskSpec(**{**base, **kwargs})  # fmt: skip

    assert spec(output="detection", num_outputs=3).head == HeadSpec("fcos", (64, 64))
    assert spec(output="box-attributes", num_outputs=2).head == HeadSpec("roi-mlp", (128,))
    with pytest.raises(InvalidValueError, match=r"'fcos' head's hidden widths .* multiple of 32"):
        HeadSpec("fcos", (48, 48))
    with pytest.raises(InvalidValueError, match="cannot have a 'linear' head; valid: fcos"):
        spec(output="detection", num_outputs=3, head=HeadSpec("linear"))
    with pytest.raises(InvalidValueError, match="only box-attributes tasks name a detection"):
        spec(output="detection", num_outputs=3, boxes_from="t.y")
    with pytest.raises(InvalidValueError, match="metric 'miou' does not fit a detection task"):
        spec(output="detection", num_outputs=3, metrics=["miou"])


# -- growth on scenes -------------------------------------------------------------------------


@pytest.fixture
def small_scenes(monkeypatch: pytest.MonkeyPatch):
    """Splits of 96 and 32 scenes, rendered fresh (the split cache is cleared around)."""
    import dmt_plugins.scenes as scenes

    monkeypatch.setattr(scenes, "SPLIT_SIZES", {"train": 96, "val": 32})
    scenes.generate.cache_clear()
    yield scenes
    scenes.generate.cache_clear()


def scene_images(scenes, path: Path, size: int = 32) -> Path:
    np.save(path, scenes.render_scenes(3, size, size, seed=11)["images"])
    return path


def predicted(run_cli, store: Path, inputs: Path) -> dict:
    return json.loads(run_cli("predict", inputs, "--store", store, "--json").stdout)["tasks"]


def test_scenes_boxes_are_the_objects_visible_pixels(small_scenes) -> None:
    data = small_scenes.render_scenes(20, 32, 32, seed=4)
    objects = small_scenes.object_boxes(
        data["instance"], data["object_class"], data["object_attributes"]
    )
    for image, classes, found in zip(data["instance"], data["object_class"], objects, strict=True):
        shown = [s for s in range(3) if classes[s] >= 0 and (image == s).any()]
        assert len(found["boxes"]) == len(shown)
        for slot, box, label in zip(shown, found["boxes"], found["labels"], strict=True):
            rows, cols = np.nonzero(image == slot)
            assert box.tolist() == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
            assert label == classes[slot] - small_scenes.SPHERE
    attributes = np.concatenate([o["attributes"] for o in objects])
    assert attributes.shape[1] == len(small_scenes.ATTRIBUTE_NAMES)
    assert 0.2 < attributes.mean() < 0.8 and set(np.unique(attributes)) == {0.0, 1.0}


@pytest.mark.slow
def test_detection_then_attributes_join_image_and_pixel_tasks_leaving_old_outputs_identical(
    small_scenes, run_cli, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    run_cli("init", "--store", store, "--input", "3x32x32", "--backbone-option", "spatial=true")
    for task in ("scenes.has-sphere", "scenes.segmentation"):
        run_cli("add-task", task, "--store", store, *TINY)
    inputs = scene_images(small_scenes, tmp_path / "x.npy")
    before = predicted(run_cli, store, inputs)
    added = json.loads(
        run_cli("add-task", "scenes.detection", "--store", store, *TINY, "--json").stdout
    )
    assert set(added["metrics"]) == {"map_50", "map"}, added
    assert 0.0 <= added["metrics"]["map"] <= added["metrics"]["map_50"] <= 1.0
    after = predicted(run_cli, store, inputs)
    assert {t: after[t] for t in before} == before  # image- and pixel-level outputs identical
    detections = after["scenes.detection"]["prediction"]
    assert len(detections) == 3 and all(isinstance(image, list) for image in detections)
    for image in detections:
        for found in image:
            x1, y1, x2, y2 = found["box"]
            assert 0 <= x1 < x2 <= 32 and 0 <= y1 < y2 <= 32, found
            assert found["label"] in small_scenes.DETECTION_CLASSES and found["score"] >= 0.2
    run_cli("add-task", "scenes.attributes", "--store", store, *TINY)
    last = predicted(run_cli, store, inputs)
    assert {t: last[t] for t in after} == after  # boxes and scores bit-identical too
    for image, boxes in zip(last["scenes.attributes"]["prediction"], detections, strict=True):
        assert [b["box"] for b in image] == [d["box"] for d in boxes]
        for box in image:
            assert len(box["probabilities"]) == len(small_scenes.ATTRIBUTE_NAMES)
            assert set(box["attributes"]) <= set(small_scenes.ATTRIBUTE_NAMES)
    table = run_cli("eval", "--store", store).stdout
    assert "map_50" in table and "attribute_map" in table and "miou" in table, table
    assert json.loads(run_cli("status", "--store", store, "--json").stdout)["version"] == 5
    # The registered pyfunc model returns the same boxes (its class, loaded as MLflow would).
    from types import SimpleNamespace

    from dmt_registry.pyfunc_model import DmtModel

    served = DmtModel()
    served.load_context(SimpleNamespace(artifacts={"store": str(store)}))
    frame = served.predict(None, np.load(inputs), {"tasks": "scenes.detection,scenes.attributes"})
    assert frame["scenes.detection"].tolist() == detections
    assert [len(i) for i in frame["scenes.attributes"]] == [len(i) for i in detections]


@pytest.mark.slow
def test_a_fresh_store_grows_detection_then_attributes(
    small_scenes, run_cli, tmp_path: Path, monkeypatch
) -> None:
    """`dmt add-task scenes.detection` creates a spatial store (at the native 3×64×64);
    attributes follow; predict of the attributes alone runs the detection task for its boxes."""
    monkeypatch.setattr(small_scenes, "SPLIT_SIZES", {"train": 48, "val": 16})
    store = tmp_path / "fresh"
    run_cli("add-task", "scenes.detection", "--store", store, *TINY)
    status = json.loads(run_cli("status", "--store", store, "--json").stdout)
    assert status["backbone"]["options"]["spatial"] is True
    assert status["input_spec"] == [3, 64, 64]
    run_cli("add-task", "scenes.attributes", "--store", store, *TINY)
    version = json.loads((store / "versions" / "v000003.json").read_text())
    assert version["format"] == 3 and version["tasks"][1]["boxes_from"] == "scenes.detection"
    inputs = scene_images(small_scenes, tmp_path / "x.npy", 64)
    result = json.loads(
        run_cli("predict", inputs, "--store", store, "--task", "scenes.attributes", "--json").stdout
    )
    assert list(result["tasks"]) == ["scenes.attributes"]
    assert len(result["tasks"]["scenes.attributes"]["prediction"]) == 3


def test_a_tracked_detection_add_task_logs_map(
    flat_and_spatial, run_cli, tmp_path: Path, mlflow_template: Path, monkeypatch
) -> None:
    from mlflow.tracking import MlflowClient

    store = tmp_path / "store"
    shutil.copytree(flat_and_spatial["spatial"], store)
    shutil.copy(mlflow_template, store / "mlflow.db")
    monkeypatch.setenv("REGION_TOY_TRAIN", "32")
    run_cli(
        "add-task", "toyr.boxes", "--store", store, "--epochs", "1", "--batch-size", "16",
        "-p", PLUGIN, "--no-register",
    )  # fmt: skip
    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    logged = run.data.metrics
    for metric in ("map_50", "map"):
        assert f"toyr.boxes.{metric}" in logged and f"toyr.boxes.val.{metric}" in logged, logged
    assert 0.0 <= logged["toyr.boxes.map"] <= logged["toyr.boxes.map_50"] <= 1.0
    assert run.info.status == "FINISHED"


# -- predictions drawn, and served ----------------------------------------------------------


@pytest.fixture(scope="module")
def region_store(flat_and_spatial, mlflow_template, tmp_path_factory) -> dict:
    """The spatial store with toyr.boxes then toyr.traits (32 images, two steps each), its
    current version registered in its embedded registry; built once. Returns the store, its
    tracking URI, the registered model's name and inputs: 3 toy images as .npy and as PNGs."""
    from click.testing import CliRunner
    from PIL import Image
    from region_toy_plugin import make

    from dmtcore.cli import cli

    def invoke(*args) -> str:
        result = CliRunner().invoke(cli, [str(a) for a in args])
        assert result.exit_code == 0, (args, result.stderr, result.exception)
        return result.stdout

    root = tmp_path_factory.mktemp("region-drawn")
    store = root / "store"
    shutil.copytree(flat_and_spatial["spatial"], store)
    shutil.copy(mlflow_template, store / "mlflow.db")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REGION_TOY_TRAIN", "32")  # two steps: a few boxes score above 0.2
        for task in ("toyr.boxes", "toyr.traits"):
            invoke("add-task", task, "--store", store, *TINY, "-p", PLUGIN)
    registered = json.loads(invoke("register", "--store", store, "--json"))
    images = make(5, 3)[0]
    np.save(root / "x.npy", images.numpy())
    pngs = []
    for index, image in enumerate(images):
        pngs.append(root / f"p{index}.png")
        rgb = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(rgb).save(pngs[-1])
    return {
        "store": store,
        "uri": registered["tracking_uri"],
        "model": registered["model"],
        "npy": root / "x.npy",
        "pngs": pngs,
    }


def drawn_labels(row: dict) -> list[str]:
    """What each box of a row of predictions.json says on its picture: class, score (two
    decimals) and the attributes toyr.traits found for it."""
    return [
        " ".join([f"{found['label']} {found['score']:.2f}", *described["attributes"]])
        for found, described in zip(row["toyr.boxes"], row["toyr.traits"], strict=True)
    ]


@pytest.mark.slow  # the module's region store: about 20 s to build alone
def test_predict_out_draws_every_images_boxes_as_predictions_json_gives_them(
    region_store, run_cli, tmp_path: Path
) -> None:
    """`--out` writes per image one picture of toyr.boxes (enlarged 8 times, to 256×256),
    which is exactly the input with predictions.json's boxes drawn on it in their classes'
    colours, labelled 'red 0.41 large'; predictions.json holds what --json gives and names
    the picture for both tasks; the table names it with the box count."""
    from PIL import Image

    from dmtcore.tasks.visualize_boxes import boxes_image

    store, inputs = region_store["store"], region_store["npy"]
    expected = predicted(run_cli, store, inputs)
    out = tmp_path / "preds"
    written = json.loads(
        run_cli("predict", inputs, "--store", store, "--out", out, "--json").stdout
    )
    rows = json.loads((out / "predictions.json").read_text())["rows"]
    assert rows == written["rows"] and len(rows) == 3
    classes = ["red", "green", "blue"]
    images = torch.from_numpy(np.load(inputs))
    assert sum(len(row["toyr.boxes"]) for row in rows) > 0  # something is drawn
    for index, row in enumerate(rows):
        for task in ("toyr.boxes", "toyr.traits"):
            assert row[task] == expected[task]["prediction"][index], task
        picture = f"{index:06d}-x.toyr.boxes.png"
        assert row["pictures"] == {"toyr.boxes": picture, "toyr.traits": picture}
        assert sorted(p.name for p in out.glob(f"{index:06d}-*")) == [picture]
        with Image.open(out / picture) as image:
            assert (image.mode, image.size) == ("RGB", (256, 256))
            drawn = np.asarray(image)
        boxes = torch.tensor([found["box"] for found in row["toyr.boxes"]]).reshape(-1, 4)
        ids = [classes.index(found["label"]) for found in row["toyr.boxes"]]
        again = boxes_image(images[index], boxes, ids, drawn_labels(row), num_classes=3)
        assert np.array_equal(drawn, np.asarray(again))
    table = run_cli("predict", inputs, "--store", store, "--out", tmp_path / "t").stdout
    count = len(rows[0]["toyr.boxes"])
    assert f"{count} box{'es' if count != 1 else ''}: 000000-x.toyr.boxes.png" in table, table


@pytest.mark.slow
def test_predict_out_of_the_attributes_alone_draws_them_on_a_picture_of_their_own(
    region_store, run_cli, tmp_path: Path
) -> None:
    """Without its detection task, toyr.traits' picture is named after it: its boxes in one
    colour, each labelled with its attributes only."""
    from PIL import Image

    from dmtcore.tasks.visualize_boxes import boxes_image

    store, inputs = region_store["store"], region_store["npy"]
    out = tmp_path / "preds"
    run_cli("predict", inputs, "--store", store, "--task", "toyr.traits", "--out", out)
    rows = json.loads((out / "predictions.json").read_text())["rows"]
    images = torch.from_numpy(np.load(inputs))
    assert sum(len(row["toyr.traits"]) for row in rows) > 0  # something is drawn
    for index, row in enumerate(rows):
        assert list(row) == ["input", "toyr.traits", "pictures"]
        assert row["pictures"] == {"toyr.traits": f"{index:06d}-x.toyr.traits.png"}
        boxes = torch.tensor([found["box"] for found in row["toyr.traits"]]).reshape(-1, 4)
        labels = [" ".join(found["attributes"]) or None for found in row["toyr.traits"]]
        again = boxes_image(images[index], boxes, [0] * len(labels), labels, num_classes=1)
        with Image.open(out / row["pictures"]["toyr.traits"]) as image:
            assert np.array_equal(np.asarray(image), np.asarray(again))


@pytest.mark.slow
def test_the_registered_model_loaded_by_mlflow_returns_the_boxes_of_dmt_predict(
    region_store, run_cli, monkeypatch
) -> None:
    """`mlflow.pyfunc.load_model("models:/NAME@current")` (weights without pickle): one row per
    image, each region task's column holding that image's list of box dicts, equal to
    `dmt predict --json`'s, for arrays and (the images model) PNG files; the scoring server's
    JSON keeps them."""
    import io

    import mlflow.pyfunc
    import pandas as pd
    from mlflow.pyfunc.scoring_server import predictions_to_json
    from mlflow.tracking import MlflowClient

    store, uri, name = region_store["store"], region_store["uri"], region_store["model"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model = mlflow.pyfunc.load_model(f"models:/{name}@current")
    expected = predicted(run_cli, store, region_store["npy"])
    frame = model.predict(np.load(region_store["npy"]))
    assert list(frame.columns) == ["toyr.boxes", "toyr.traits"] and len(frame) == 3
    for task in frame.columns:
        assert frame[task].dtype == object
        assert frame[task].tolist() == expected[task]["prediction"], task
    assert sum(map(len, frame["toyr.boxes"])) > 0
    served = io.StringIO()
    predictions_to_json(frame, served)
    assert json.loads(served.getvalue())["predictions"] == [
        {"toyr.boxes": boxes, "toyr.traits": traits}
        for boxes, traits in zip(*(expected[t]["prediction"] for t in frame.columns), strict=True)
    ]
    only = model.predict(np.load(region_store["npy"]), params={"tasks": "toyr.traits"})
    assert only["toyr.traits"].tolist() == expected["toyr.traits"]["prediction"]
    assert list(only.columns) == ["toyr.traits"]

    pngs = region_store["pngs"]
    from_files = json.loads(run_cli("predict", *pngs, "--store", store, "--json").stdout)["tasks"]
    tags = MlflowClient(tracking_uri=uri).get_model_version_by_alias(name, "current").tags
    images_model = mlflow.pyfunc.load_model(tags["dmt.images_model"])
    frame = images_model.predict(pd.DataFrame({"image": [str(p) for p in pngs]}))
    for task in ("toyr.boxes", "toyr.traits"):
        assert frame[task].tolist() == from_files[task]["prediction"], task
